"""The HTTP protocol the gateway runs on: uvicorn's httptools protocol, long-polls served in it.

Why: a long-poll is one request per message. Past the router and with its
answer built once (transports/longpoll.py, polls.py), what a poll still
cost under 5,000 clients at 10 msg/s was uvicorn's per-request work, about
half of the CPU (py-spy, bench/README.md): a ``RequestResponseCycle`` and an
``asyncio.Event`` per request, a task per request, the ASGI call chain, the
keep-alive timer. Nchan answers a poll for a fifth of our cost, and at
5,000 pollers the core was saturated: every answer waited its turn.

Here a ``GET /poll/{channel}`` that the hub can serve at once is served in
the protocol's own parser callback, with no task at all: answered from the
hub's memory (the bytes built once for every poller at that cursor), or
registered as a ``Waiter`` (polls.py) that the hub's fan-out or the timer
wheel answers by writing to this socket. ``Poll`` stands where uvicorn
keeps the request's cycle, so uvicorn's own code (the client leaving,
shutdown, pipelining, a body) works on it unchanged. A poll whose headers
are the very bytes of its connection's last poll is served without
httptools at all (``_repeat_served``); a cross-origin one carries the
headers CORSMiddleware would add (cors.py).

Every other request, and every poll this path cannot answer at once (a
refusal, a channel not joined yet, a cursor older than memory, ``last=N``,
HEAD, HTTP/1.0, a pipelined request, uvicorn's
access log or ``--limit-concurrency`` on, the gateway mounted under a
parent app), goes through uvicorn's ASGI path as before: same answers,
slower.

Use it with uvicorn's ``--http gateway.server.protocol:GatewayHttpProtocol`` (the
Procfile and ``python -m gateway`` do). Without it the gateway serves every
route the same way, through ASGI.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from typing import Any, NamedTuple

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.app import GatewayApp
from gateway.message import Cursor
from gateway.polls import Ended, Waiter
from gateway.server import accelerations
from gateway.server.cors import CorsHeaders
from gateway.server.direct import compact_dict
from gateway.server.keepalive import HEADER_TIMEOUT_S, idle_connections
from gateway.server.publishing import PREFIX as _PUBLISH
from gateway.server.publishing import Publish, PublishRepeat, publish_here, remembered, repeated
from gateway.state import Gateway
from gateway.transports.longpoll import POLL_PATH_PREFIX, PollAnswer, carries_token
from gateway.transports.poll_multi import POLL_MULTI_PATH
from gateway.transports.poll_quick import Ending, quick_poll, quick_poll_multi

_PREFIX = POLL_PATH_PREFIX.encode()
_MULTI = POLL_MULTI_PATH.encode()  # (a prefix of _PREFIX)
# A repeated poll's request line: GET, a visible-ASCII target under /poll, HTTP/1.1.
_POLL_LINE = re.compile(rb"GET (/poll[!-~]*) HTTP/1\.1")
# Headers that change how a request is framed or answered: never taken as a repeat.
_NOT_REPEATED = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})


class Repeat(NamedTuple):
    """A served poll's headers: as they came on the wire, and as httptools read them."""

    block: bytes  # from the request line's end: the headers, then the empty line
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool


class Target(NamedTuple):
    """A request target under /poll that this protocol serves, as read once (``poll_target``)."""

    path: bytes
    query: bytes
    channel: str | None  # None: ``/poll``, several channels in the query


# Targets read, by their request line: thousands of pollers send the same one after each message.
_TARGETS: dict[bytes, Target] = {}
TARGETS_BYTES = 1 << 20  # request lines kept, by their length: past it the record starts anew
MAX_LINE_BYTES = 8192  # a longer request line goes through ASGI (the SPEC's bound on a URL)
_kept_bytes = 0


def poll_target(line: bytes, url: bytes) -> Target | None:
    """``GET url HTTP/1.1`` (``line``) as a poll served here; None: not one this path takes.

    None: not ``/poll/{channel}`` or ``/poll``, or a line past
    ``MAX_LINE_BYTES``, or a name uvicorn would unquote. A line served here
    is remembered by ``keep_target`` once its poll was admitted.
    """
    target = _TARGETS.get(line)
    if target is not None:
        return target
    if len(line) > MAX_LINE_BYTES:
        return None
    path, _, query = url.partition(b"?")  # (origin-form: it starts with /poll)
    if path == _MULTI:
        channel = None
    elif path.startswith(_PREFIX) and len(path) > len(_PREFIX) and path.isascii():
        channel = path[len(_PREFIX) :].decode("ascii")
    else:
        return None  # not /poll or /poll/{channel} (/pollx, /poll/ …)
    if 37 in path or 35 in url:  # ord("%"): a name uvicorn would unquote; "#": a fragment
        return None
    return Target(path, query, channel)


def keep_target(line: bytes, target: Target) -> None:
    """Remember a served poll's line (checked, admitted), unless it carries a token.

    Bounded by bytes (``TARGETS_BYTES``); no secret stays in memory, however
    its name is spelled (``?tok%65n=`` is a token to Starlette).
    """
    global _kept_bytes
    if line in _TARGETS or carries_token(target.query):
        return
    if _kept_bytes + len(line) > TARGETS_BYTES:
        _TARGETS.clear()
        _kept_bytes = 0
    _TARGETS[line] = target
    _kept_bytes += len(line)


class Pipeline(list):  # type: ignore[type-arg]
    """uvicorn's queue of pipelined requests in a list: it only ``appendleft``s,
    ``pop``s (the oldest) and asks whether any wait (accelerations.py checks it)."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; ``GET /poll…`` served with no task when it can be.

    What it answers is what the plain ASGI path answers for the same bytes
    (tests/test_differential.py): an answer written while httptools reads a
    chunk is held until the whole chunk parsed (``held``), so a request the
    parser then refuses (a bad chunk, garbage after a body) is answered 400
    alone, as plain uvicorn does; nothing is served here while the client
    is not reading (``flow.write_paused``), so a pipelining client that
    never reads costs the same bounded buffer as through ASGI.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        """uvicorn's own protocol, unchanged, when this one does not fit (accelerations.py)."""
        if not accelerations.on(accelerations.HTTP_PROTOCOL):
            return HttpToolsProtocol(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        found = _gateway_app(self.app)
        header_timeout_s = found.header_timeout_s if found is not None else HEADER_TIMEOUT_S
        self.idle = idle_connections(self.loop, self.timeout_keep_alive, header_timeout_s)
        self.idle_since: float | None = None  # a response ended, no request since
        self.reading_since: float | None = None  # waiting for a request's headers since
        self.repeat: Repeat | None = None  # this connection's last poll, read by httptools
        self.publish_repeat: PublishRepeat | None = None  # its last publish (publishing.py)
        self.chunk = b""  # the bytes httptools is reading (a poll's, to remember as a repeat)
        self.in_message = False  # httptools is inside a request
        self.held: list[bytes] | None = None  # answers written while httptools reads a chunk
        self.held_bytes = 0  # their size: past HELD_BYTES, the chunk's next polls go through ASGI
        self.close_held = False  # an answer held said ``connection: close``
        # The request whose ASGI task started last, weakly: a connection that went
        # on polling in the protocol must not keep its first request's cycle alive.
        self.running: weakref.ref[Any] | None = None
        self.gateway_app = found
        if self.access_log and self.access_logger.isEnabledFor(logging.INFO):
            self.gateway_app = None  # each request's line is written by uvicorn's cycle
        if self.root_path or self.limit_concurrency is not None:
            self.gateway_app = None
        # Held for the connection's whole life (an SSE stream, a waiting poll): uvicorn's
        # queue of pipelined requests, a deque of 760 bytes empty, serves as a list of 56.
        self.pipeline = Pipeline()  # type: ignore[assignment]
        compact_dict(self)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.reading_since = self.loop.time()  # (keepalive.py: the header timeout)
        self.idle.join(self)

    def handle_websocket_upgrade(self) -> None:
        if self.close_held:
            return  # after an answer that closes the connection (``on_headers_complete``)
        self.idle.leave(self)  # the socket is the WebSocket protocol's from here
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        self.idle_since = None  # (keepalive.py)
        repeat = self.repeat
        if (
            repeat is not None
            and not self.in_message
            and data.endswith(repeat.block)
            and self._repeat_served(data, repeat)
        ):
            return
        if (
            self.publish_repeat is not None
            and not self.in_message
            and self._publish_repeated(data, self.publish_repeat)
        ):
            return
        self.chunk = data
        self.held = []
        self.held_bytes = 0
        try:
            super().data_received(data)
        finally:
            self.chunk = b""
            held, self.held = self.held, None
            if held:
                self._write_held(held)

    def _write_held(self, held: list[bytes]) -> None:
        """The answers served while httptools read a chunk, unless it refused the chunk."""
        transport = self.transport
        if transport.is_closing():
            return  # a 400 went out instead (``send_400_response``), as through ASGI
        transport.write(held[0] if len(held) == 1 else b"".join(held))
        if self.close_held:
            transport.close()

    def send_400_response(self, msg: str) -> None:
        self.held = None  # a request before the refused one in this chunk: not answered
        super().send_400_response(msg)

    def _repeat_served(self, data: bytes, repeat: Repeat) -> bool:
        """A poll with the very headers of this connection's last one, served unparsed.

        A keep-alive poller sends the same headers every time; only its
        request line (the cursor) changes. httptools read those headers
        once (``_remember``), from a chunk that was that whole request and
        nothing else; a chunk that is exactly a GET under /poll, HTTP/1.1,
        then those same bytes, means what they meant, so it is served
        without httptools and its five to fifteen callbacks into Python.
        Anything else (another header, a second request in the same bytes,
        a parser mid-request) goes through httptools as usual.
        """
        line = data[: len(data) - len(repeat.block)]
        target = _TARGETS.get(line)  # (a line served before was checked then)
        if target is None:
            match = _POLL_LINE.fullmatch(line)
            if match is None or (target := poll_target(line, match[1])) is None:
                return False
        if self.timeout_keep_alive_task is not None:  # (an ASGI answer armed uvicorn's timer)
            self._unset_keepalive_if_required()
        self.headers = repeat.headers
        return self._serve_poll(target, line, repeat.headers, repeat.keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.leave(self)
        running = self.running() if self.running is not None else None
        super().connection_lost(exc)
        # uvicorn marks only the newest request gone; one answering behind a
        # pipelined request would then write to a closed transport (a traceback).
        if running is not None and running is not self.cycle and not running.response_complete:
            running.disconnected = True
            running.message_event.set()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self.running = weakref.ref(cycle)
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        self.in_message = False
        cycle: Any = self.cycle
        if type(cycle) is Poll:  # a GET's end: nothing to tell a poll (and no body)
            cycle.more_body = False
            return
        if type(cycle) is Publish and not cycle.response_complete:
            cycle.complete()  # (the body is in: publishing.py)
            return
        super().on_message_complete()

    def on_message_begin(self) -> None:
        """As uvicorn's, but the ASGI scope is made only for a request that goes through ASGI."""
        self.in_message = True
        self.idle_since = None  # a request in the same chunk as the answer before it
        if self.reading_since is None:
            self.reading_since = self.loop.time()
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        self.reading_since = None
        if self.close_held:
            return  # after an answer that closes the connection: never served (as uvicorn)
        if self.url.startswith(_MULTI) and self._poll_served_here():
            return
        if self.url.startswith(_PUBLISH) and self._publish_taken():
            return
        url, headers, expect_100_continue = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()  # the scope, as uvicorn makes it
        self.url, self.expect_100_continue = url, expect_100_continue
        self.headers = self.scope["headers"] = headers
        super().on_headers_complete()

    def header_timeout_handler(self) -> None:
        """No whole request head within the header timeout (keepalive.py): let it go."""
        transport = self.transport
        if transport.is_closing():
            return
        if self.in_message:  # a request begun: say why it is cut
            transport.write(_HEADER_TIMEOUT_ANSWER)
        transport.close()

    def _poll_served_here(self) -> bool:
        """From httptools' callbacks: a GET under /poll, served here if it can be."""
        parser = self.parser
        if (
            parser.get_method() != b"GET"
            or parser.get_http_version() != "1.1"
            or self.expect_100_continue
            or parser.should_upgrade()  # (uvicorn hands it to its WebSocket protocol)
        ):
            return False
        keep_alive = parser.should_keep_alive()
        line = b"GET " + self.url + b" HTTP/1.1"
        target = poll_target(line, self.url)
        if target is None or not self._serve_poll(target, line, self.headers, keep_alive):
            self.repeat = None
            return False
        self._remember(line, keep_alive)
        return True

    def _publish_taken(self) -> bool:
        """From httptools' callbacks: a POST under /publish/, taken here if it can be."""
        parser = self.parser
        app = self.gateway_app
        if (
            parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or self.expect_100_continue
            or parser.should_upgrade()
            or app is None
            or app.gateway is None
            or not self._free()
        ):
            return False
        publish = publish_here(self, app.gateway, parser.should_keep_alive())
        self.publish_repeat = None if publish is None else remembered(self.chunk, publish, self)
        return publish is not None

    def _publish_repeated(self, data: bytes, repeat: PublishRepeat) -> bool:
        """A publish with the very headers of this connection's last one, taken unparsed.

        As ``_repeat_served`` for polls: the headers were read by httptools
        from a chunk that was that whole request; a chunk that is exactly a
        POST under /publish/, HTTP/1.1, those same bytes, then a body of
        their length, means what they meant (publishing.py ``repeated``).
        """
        found = repeated(data, repeat)
        app = self.gateway_app
        if found is None or app is None or app.gateway is None or not self._free():
            return False
        if self.timeout_keep_alive_task is not None:  # (an ASGI answer armed uvicorn's timer)
            self._unset_keepalive_if_required()
        self.url, self.headers = found[0], repeat.headers
        publish = publish_here(self, app.gateway, repeat.keep_alive)
        if publish is None:
            return False  # (refused now: the parser reads it, ASGI answers it)
        publish.body = found[1]
        publish.complete()
        return True

    @property
    def cors(self) -> CorsHeaders | None:
        """What CORSMiddleware adds, when the gateway's app has CORS (cors.py)."""
        app = self.gateway_app
        return app.cors if app is not None else None

    def _free(self) -> bool:
        """Nothing in flight here and the client reads: a request may be served in the protocol."""
        flow = self.flow
        app = self.gateway_app
        return not (
            app is None
            or app.gateway is None
            or self.pipeline
            or flow.read_paused
            or flow.write_paused  # the client reads nothing: through ASGI, which waits for it
            or self.held_bytes > HELD_BYTES  # (as much, written at the chunk's end: the same)
            or self.close_held
            or not (self.cycle is None or self.cycle.response_complete)
        )

    def answered(self, wire: bytes, keep_alive: bool) -> None:
        """An answer served here, on the socket; what uvicorn does when a cycle ends."""
        held = self.held
        if held is not None:  # httptools is reading: written once the chunk parsed
            held.append(wire)
            self.held_bytes += len(wire)
            self.close_held = not keep_alive
        else:
            self.transport.write(wire)
            if not keep_alive:
                self.transport.close()
        # What uvicorn's ``on_response_complete`` does, but the keep-alive
        # timer: one sweep for all (``IdleConnections``).
        if self.pipeline or self.flow.read_paused:
            self.on_response_complete()  # a pipelined request to start: uvicorn's way
        else:
            self.server_state.total_requests += 1
            if keep_alive:
                self.idle_since = self.loop.time()  # (``IdleConnections``)

    def _remember(self, line: bytes, keep_alive: bool) -> None:
        """This poll's headers, when its chunk was this request alone: the next may repeat them."""
        data, headers = self.chunk, self.headers
        if (
            len(data) < len(line) + 4
            or not data.startswith(line)
            or data.find(b"\r\n\r\n") + 4 != len(data)
            or any(name in _NOT_REPEATED for name, _ in headers)
        ):
            self.repeat = None
        elif self.repeat is None or not data.endswith(self.repeat.block):
            self.repeat = Repeat(data[len(line) :], headers, keep_alive)

    def _serve_poll(
        self, target: Target, line: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> bool:
        """``GET target``, HTTP/1.1, served here: True, or nothing done."""
        app = self.gateway_app
        gateway = app.gateway if app is not None else None
        if app is None or gateway is None or not self._free():
            return False
        cors = b""
        if app.cors is not None:  # the headers CORSMiddleware would add (cors.py)
            origin = next((value for name, value in headers if name == b"origin"), None)
            cookie = any(name == b"cookie" for name, _ in headers)
            cors = app.cors.for_origin(origin, cookie)
        previous = self.cycle
        poll = Poll(self, keep_alive, cors)
        self.cycle = poll  # type: ignore[assignment]  # it has what uvicorn uses of a cycle
        if target.channel is None:
            scope = {
                "type": "http",
                "path": "/poll",
                "raw_path": target.path,
                "headers": headers,
                "query_string": target.query,
            }
            served = quick_poll_multi(gateway, scope, poll)
        else:
            served = quick_poll(gateway, target.channel, target.query, headers, poll)
        if served:
            keep_target(line, target)
        else:
            self.cycle = previous
        return served


HELD_BYTES = 65536  # asyncio's write buffer high-water mark: past it a client must read first
_HEADER_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 32\r\nconnection: close\r\n\r\nrequest headers not sent in time"
)


class Poll(Waiter):
    """A poll served in the protocol: what uvicorn's protocol sees as the request's cycle.

    uvicorn reads and sets ``response_complete``, ``disconnected``,
    ``keep_alive``, ``body``, ``more_body`` and calls ``message_event.set()``
    (the client left, a body arrived, the request ended). That event is
    this object: when the client is gone, the waiting poll is released at
    once, as ``direct.on_http_lost`` does for ASGI requests. A poll of one
    channel is its own waiter (polls.py) and that waiter's client, which
    writes the answer; and it is its own connection record while it waits
    (``state.Record``): one object per poll.
    """

    __slots__ = (
        "body",
        "channel",
        "cors",
        "disconnected",
        "ending",
        "gateway",
        "id",
        "keep_alive",
        "logged",
        "more_body",
        "protocol",
        "response_complete",
        "started",
        "transport",
    )
    # Its connection record's fields (``state.Record``), set when it is counted in.
    transport: str
    channel: str
    id: int
    started: float
    logged: bool
    gateway: Gateway

    def __init__(self, protocol: GatewayHttpProtocol, keep_alive: bool, cors: bytes) -> None:
        # (its waiter's fields are set if it waits: ``waiter``; its record's: ``waits``)
        self.protocol = protocol
        self.keep_alive = keep_alive
        self.cors = cors
        self.response_complete = False
        self.disconnected = False
        self.more_body = True
        self.body = b""
        self.ending: Ending | None = None

    def waiter(self, start: Cursor, limit: int) -> Poll:
        """Itself as its channel's waiter (its own client until it ends)."""
        Waiter.__init__(self, start, limit, self)
        return self

    def waits(self, gateway: Gateway, waiter: Ending, label: str) -> None:
        """Parked: counted in as its own connection record, released if the client leaves."""
        self.ending = waiter
        self.gateway = gateway
        self.transport = "poll"
        self.channel = label
        gateway.count_in(self)

    @property
    def message_event(self) -> Poll:
        return self

    def set(self) -> None:
        """uvicorn's signal: acted on only when the client is gone."""
        if self.disconnected and self.ending is not None:
            self.ending.cancel()

    def write(self, answer: object) -> bool:
        """The whole answer on the socket now, as uvicorn's cycle would end; False if it can't."""
        protocol = self.protocol
        transport = protocol.transport
        if self.response_complete or self.disconnected or transport.is_closing():
            return False
        assert isinstance(answer, PollAnswer)
        keep_alive = self.keep_alive
        wire = answer.wire(protocol.server_state.default_headers, keep_alive, self.cors)
        self.response_complete = True
        protocol.answered(wire, keep_alive)
        return True

    def settled(self, waiter: Ended, answer: object | None) -> None:
        self.ending = None
        self.reason = waiter.reason
        self.gateway.closed(self, cycles=False)  # (tests/test_protocol.py)


def _gateway_app(app: Any) -> GatewayApp | None:
    """The gateway, when it is the server's app (under uvicorn's own middleware, if any)."""
    for _ in range(4):
        if isinstance(app, GatewayApp):
            return app
        app = getattr(app, "app", None)
    return None
