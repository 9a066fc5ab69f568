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
shutdown, pipelining, a body) works on it unchanged.

Every other request, and every poll this path cannot answer at once (a
refusal, a channel not joined yet, a cursor older than memory, ``last=N``,
HEAD, CORS with an ``Origin``, HTTP/1.0, a pipelined request, uvicorn's
access log or ``--limit-concurrency`` on, the gateway mounted under a
parent app), goes through uvicorn's ASGI path as before: same answers,
slower.

Use it with uvicorn's ``--http gateway.protocol:GatewayHttpProtocol`` (the
Procfile and ``python -m gateway`` do). Without it the gateway serves every
route the same way, through ASGI.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.app import GatewayApp
from gateway.polls import Ended
from gateway.state import Connection, Gateway
from gateway.transports.longpoll import POLL_PATH_PREFIX, PollAnswer
from gateway.transports.poll_multi import POLL_MULTI_PATH
from gateway.transports.poll_quick import Ending, quick_poll, quick_poll_multi

_PREFIX = POLL_PATH_PREFIX.encode()
_MULTI = POLL_MULTI_PATH.encode()  # (a prefix of _PREFIX)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; ``GET /poll…`` served with no task when it can be."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle = _idle_connections(self.loop, self.timeout_keep_alive)
        self.idle_since: float | None = None  # a poll answered, no request since
        self.gateway_app = _gateway_app(self.app)
        if self.access_log and self.access_logger.isEnabledFor(logging.INFO):
            self.gateway_app = None  # each request's line is written by uvicorn's cycle
        if self.root_path or self.limit_concurrency is not None:
            self.gateway_app = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.idle.join(self)

    def handle_websocket_upgrade(self) -> None:
        self.idle.leave(self)  # the socket is the WebSocket protocol's from here
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        self.idle_since = None  # (``IdleConnections``)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.leave(self)
        super().connection_lost(exc)

    def on_message_complete(self) -> None:
        cycle: Any = self.cycle
        if type(cycle) is Poll:  # a GET's end: nothing to tell a poll (and no body)
            cycle.more_body = False
            return
        super().on_message_complete()

    def on_message_begin(self) -> None:
        """As uvicorn's, but the ASGI scope is made only for a request that goes through ASGI."""
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        if self.url.startswith(_MULTI) and self._poll_served_here():
            return
        url, headers, expect_100_continue = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()  # the scope, as uvicorn makes it
        self.url, self.expect_100_continue = url, expect_100_continue
        self.headers = self.scope["headers"] = headers
        super().on_headers_complete()

    def _poll_served_here(self) -> bool:
        app = self.gateway_app
        parser = self.parser
        if (
            app is None
            or app.gateway is None
            or parser.get_method() != b"GET"
            or parser.get_http_version() != "1.1"
            or self.expect_100_continue
            or self.pipeline
            or not (self.cycle is None or self.cycle.response_complete)
        ):
            return False
        path, _, query = self.url.partition(b"?")  # (origin-form: it starts with /poll)
        several = path == _MULTI
        if not several and not (
            path.startswith(_PREFIX) and len(path) > len(_PREFIX) and path.isascii()
        ):
            return False  # not /poll or /poll/{channel} (/pollx, /poll/ …)
        if b"%" in path or b"#" in self.url:
            return False  # a name uvicorn would unquote; a fragment (no client sends one)
        if app.cors and any(name == b"origin" for name, _ in self.headers):
            return False  # CORS middleware answers with its headers, through ASGI
        scope = {
            "type": "http",
            "path": path.decode("ascii"),
            "raw_path": path,
            "headers": self.headers,
            "query_string": query,
        }
        previous = self.cycle
        poll = Poll(self, parser.should_keep_alive())
        self.cycle = poll  # type: ignore[assignment]  # it has what uvicorn uses of a cycle
        if several:
            served = quick_poll_multi(app.gateway, scope, poll)
        else:
            served = quick_poll(app.gateway, path[len(_PREFIX) :].decode("ascii"), scope, poll)
        if not served:
            self.cycle = previous
        return served


class Poll(Connection):
    """A poll served in the protocol: what uvicorn's protocol sees as the request's cycle.

    uvicorn reads and sets ``response_complete``, ``disconnected``,
    ``keep_alive``, ``body``, ``more_body`` and calls ``message_event.set()``
    (the client left, a body arrived, the request ended). That event is
    this object: when the client is gone, the waiting poll is released at
    once, as ``direct.on_http_lost`` does for ASGI requests. It is also the
    waiter's client (polls.py): it writes the answer. And it is its own
    connection record while it waits (one object less per poll).
    """

    __slots__ = (
        "body",
        "disconnected",
        "keep_alive",
        "more_body",
        "protocol",
        "response_complete",
        "waiter",
    )

    def __init__(self, protocol: GatewayHttpProtocol, keep_alive: bool) -> None:
        # (its ``Connection`` fields are set when it is counted in: ``waits``)
        self.protocol = protocol
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.more_body = True
        self.body = b""
        self.waiter: Ending | None = None

    def waits(self, gateway: Gateway, waiter: Ending, label: str) -> None:
        """Parked: counted in as its own connection record, released if the client leaves."""
        self.waiter = waiter
        self.transport = "poll"
        self.channel = label
        gateway.count_in(self)

    @property
    def message_event(self) -> Poll:
        return self

    def set(self) -> None:
        """uvicorn's signal: acted on only when the client is gone."""
        if self.disconnected and self.waiter is not None:
            self.waiter.cancel()

    def write(self, answer: object) -> bool:
        """The whole answer on the socket now, as uvicorn's cycle would end; False if it can't."""
        protocol = self.protocol
        transport = protocol.transport
        if self.response_complete or self.disconnected or transport.is_closing():
            return False
        assert isinstance(answer, PollAnswer)
        keep_alive = self.keep_alive
        transport.write(answer.wire(protocol.server_state.default_headers, keep_alive))
        self.response_complete = True
        if not keep_alive:
            transport.close()
        # What uvicorn's ``on_response_complete`` does, but the keep-alive
        # timer: one sweep for all (``IdleConnections``).
        if protocol.pipeline or protocol.flow.read_paused:
            protocol.on_response_complete()  # a pipelined request to start: uvicorn's way
        else:
            protocol.server_state.total_requests += 1
            if keep_alive:
                protocol.idle_since = protocol.loop.time()  # (``IdleConnections``)
        return True

    def settled(self, waiter: Ended, answer: object | None) -> None:
        self.waiter = None
        app = self.protocol.gateway_app
        if app is not None and app.gateway is not None:
            self.reason = waiter.reason
            app.gateway.closed(self, cycles=False)  # (tests/test_protocol.py)


class IdleConnections:
    """Keep-alive connections waiting for their next request, closed after uvicorn's timeout.

    uvicorn arms a timer when a response ends and cancels it when the next
    request arrives: for a long-poll, once per message per client, 8-11 % of
    the CPU of 5,000 pollers (py-spy). Here a poll's end stamps its
    connection (``idle_since``), the next request clears the stamp, and one
    sweep a second closes what waited past the timeout (so a connection may
    stay idle up to a second longer than ``--timeout-keep-alive``). The
    sweep reads every connection of this protocol; a request touches no
    shared structure.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._connections: dict[GatewayHttpProtocol, None] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def join(self, protocol: GatewayHttpProtocol) -> None:
        self._connections[protocol] = None
        if self._sweep is None:
            self._sweep = self._loop.call_later(SWEEP_S, self.sweep)

    def leave(self, protocol: GatewayHttpProtocol) -> None:
        self._connections.pop(protocol, None)

    def sweep(self) -> None:
        self._sweep = None
        deadline = self._loop.time() - self._timeout_s
        for protocol in list(self._connections):
            since = protocol.idle_since
            if since is not None and since <= deadline:
                protocol.idle_since = None
                protocol.timeout_keep_alive_handler()  # uvicorn's: close unless closing
        if self._connections:
            self._sweep = self._loop.call_later(SWEEP_S, self.sweep)


SWEEP_S = 1.0
_IDLE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, IdleConnections]] = (
    weakref.WeakKeyDictionary()
)


def _idle_connections(loop: asyncio.AbstractEventLoop, timeout_s: float) -> IdleConnections:
    """One sweep per loop and timeout (a server runs on one loop; tests may run several)."""
    sweeps = _IDLE.setdefault(loop, {})
    idle = sweeps.get(timeout_s)
    if idle is None:
        idle = sweeps[timeout_s] = IdleConnections(loop, timeout_s)
    return idle


def _gateway_app(app: Any) -> GatewayApp | None:
    """The gateway, when it is the server's app (under uvicorn's own middleware, if any)."""
    for _ in range(4):
        if isinstance(app, GatewayApp):
            return app
        app = getattr(app, "app", None)
    return None
