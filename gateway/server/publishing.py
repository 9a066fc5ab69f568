"""``POST /publish/{channel}`` answered inside the gateway's HTTP protocol (protocol.py).

Why: a chat's every line is a publish. Past the router and with concurrent
publishes pipelined to Redis (publish.py, brokers/publish_batch.py), what a
publish still cost under 64 publishing connections was mostly uvicorn's per
request work: about 25 µs of a 55 µs publish went to the ASGI cycle, its
task and two writes (bench/README.md, the "ASGI floor"), where Nchan's
whole publish, Redis included, is 38-45 µs. Here a publish has no task and
no ASGI scope: the body is gathered by httptools' callbacks into a
``Publish`` that stands where uvicorn keeps the request's cycle, the hub is
handed the message with a callback (``Hub.publish_soon``), and the answer
goes out in one write.

One behaviour (tests/test_differential.py): every check made before the
body runs at the end of the headers, by the same function the ASGI route
calls (``publish.admitted``); a request any check refuses, and any request
this path does not take (below), goes through ASGI untouched, so its
refusal is the route's own. What can still fail here is answered with the
route's own ``Response`` objects (``refused``, ``created``), written as
uvicorn writes them. Taken: HTTP/1.1 ``POST``, a target with no
``%`` or fragment, one ``Content-Length`` no larger than the message limit
(nor uvicorn's read buffer) and no ``Transfer-Encoding``, no ``Expect``, no
upgrade, no ``Origin`` unless every origin is allowed, on a connection with
nothing else in flight whose client reads.
"""

from __future__ import annotations

import asyncio
import logging
import re
from http import HTTPStatus
from typing import Any, NamedTuple, Protocol

from gateway.errors import GatewayError
from gateway.message import Message
from gateway.publish import PUBLISH_PATH_PREFIX, admit, body_text, created
from gateway.server.cors import CorsHeaders
from gateway.state import Gateway
from gateway.transports.common import refused

logger = logging.getLogger("uvicorn.error")  # where uvicorn logs an app's exception

PREFIX = PUBLISH_PATH_PREFIX.encode()
# A longer body goes through ASGI: past 64 KiB uvicorn pauses reading until the app reads.
BODY_MOST = 65536
# What uvicorn answers when the app raised before answering (its ``send_500_response``).
_FAILED = (
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n"
    b"\r\nInternal Server Error"
)


class Taking(Protocol):
    """What of the HTTP protocol (protocol.py) a publish taken there uses."""

    url: bytes
    headers: list[tuple[bytes, bytes]]
    cycle: Any
    server_state: Any
    transport: asyncio.Transport

    @property
    def cors(self) -> CorsHeaders | None: ...

    def answered(self, wire: bytes, keep_alive: bool) -> None: ...


def publish_here(protocol: Taking, gateway: Gateway, keep_alive: bool) -> Publish | None:
    """At a request's headers (``protocol.url``, ``protocol.headers``): the publish taken
    here, standing as the protocol's cycle; None: left to ASGI, nothing done."""
    url = protocol.url
    path, _, query = url.partition(b"?")
    if 37 in path or 35 in url or len(path) <= len(PREFIX) or not path.isascii():
        return None  # ("%": a name uvicorn would unquote; "#": a fragment)
    length = origin = authorization = None
    cookie = False
    for name, value in protocol.headers:
        if name == b"content-length":
            if length is not None:
                return None
            length = value
        elif name in _NOT_TAKEN:
            return None
        elif name == b"origin":
            if not gateway.guard.any_origin:
                return None  # its check needs the request's own origin: the route's
            origin = value if origin is None else origin
        elif name == b"authorization" and authorization is None:
            authorization = value
        elif name == b"cookie":
            cookie = True
    if length is None or not length.isdigit() or int(length) > BODY_MOST:
        return None
    try:
        named = path[len(PREFIX) :].decode()
        channel, event = admit(gateway, named, query, origin, authorization, length, None)
    except GatewayError:
        return None  # refused: the route answers it, and counts it
    cors = protocol.cors
    extra = cors.for_origin(origin, cookie) if cors is not None else b""
    publish = Publish(protocol, gateway, channel, event, keep_alive, extra, int(length))
    protocol.cycle = publish
    return publish


class PublishRepeat(NamedTuple):
    """A taken publish's headers, as they came on the wire and as httptools read them."""

    block: bytes  # from the request line's end: the headers, then the empty line
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    length: int  # the body's (its Content-Length)


# A repeated publish's request line: POST, a visible-ASCII target under /publish/, HTTP/1.1.
_PUBLISH_LINE = re.compile(rb"POST (/publish/[!-~]*) HTTP/1\.1")


def remembered(chunk: bytes, publish: Publish, protocol: Taking) -> PublishRepeat | None:
    """The headers of a publish whose chunk was that request alone: line, headers, body."""
    line = b"POST " + protocol.url + b" HTTP/1.1\r\n"
    end = chunk.find(b"\r\n\r\n") + 4
    if not chunk.startswith(line) or end + publish.length != len(chunk):
        return None
    return PublishRepeat(
        chunk[len(line) - 2 : end], protocol.headers, publish.keep_alive, publish.length
    )


def repeated(data: bytes, repeat: PublishRepeat) -> tuple[bytes, bytes] | None:
    """The target and body of a chunk that is one publish with exactly ``repeat``'s headers.

    A publisher on a keep-alive connection sends the same headers every
    time (its body's length too); such a chunk means what the last one
    meant, and its body is the last ``length`` bytes, as httptools would
    frame it. None: anything else (the parser reads it).
    """
    body_at = len(data) - repeat.length
    line_end = body_at - len(repeat.block)
    if line_end <= 0 or not data.startswith(repeat.block, line_end):
        return None
    match = _PUBLISH_LINE.fullmatch(data, 0, line_end)
    return None if match is None else (match[1], data[body_at:])


# Headers that change how a request is read or answered: such a publish goes through ASGI.
_NOT_TAKEN = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


class Publish:
    """A publish taken by the protocol: what uvicorn's protocol sees as the request's cycle.

    uvicorn appends the body to ``body`` as it arrives, reads and sets
    ``response_complete``, ``disconnected``, ``keep_alive``, ``more_body``
    and calls ``message_event.set()`` (a body arrived, the client left):
    nothing to wake, no task waits. The request's end (``complete``) hands
    the message to the hub; its outcome is written when it comes, unless
    the client has gone (the message is published all the same, as
    through ASGI).
    """

    __slots__ = (
        "body",
        "channel",
        "cors",
        "disconnected",
        "event",
        "gateway",
        "keep_alive",
        "length",
        "more_body",
        "protocol",
        "response_complete",
    )

    def __init__(
        self,
        protocol: Taking,
        gateway: Gateway,
        channel: str,
        event: str,
        keep_alive: bool,
        cors: bytes,
        length: int,
    ) -> None:
        self.protocol = protocol
        self.length = length
        self.gateway = gateway
        self.channel = channel
        self.event = event
        self.keep_alive = keep_alive
        self.cors = cors
        self.body = b""
        self.more_body = True
        self.response_complete = False
        self.disconnected = False

    @property
    def message_event(self) -> Publish:
        return self

    def set(self) -> None:
        """uvicorn's signal (a body chunk, the client gone): nothing waits for it."""

    def complete(self) -> None:
        """The whole body is in: publish it (``settled`` answers)."""
        self.more_body = False
        body, self.body = self.body, b""
        try:
            data = body_text(body)
        except GatewayError as exc:
            self.settled(exc)
            return
        self.gateway.hub.publish_soon(self.channel, self.event, data, self.settled)

    def settled(self, outcome: Message | BaseException) -> None:
        """The hub's answer: 201 with the id, the route's refusal, or uvicorn's 500."""
        if isinstance(outcome, Message):
            body, headers = created(outcome.id, self.channel)
            self._write(201, headers, body)
        elif isinstance(outcome, GatewayError):
            response = refused(self.gateway.metrics, outcome)
            self._write(response.status_code, response.raw_headers, bytes(response.body))
        else:
            logger.error("Exception in ASGI application\n", exc_info=outcome)
            self.keep_alive = False
            self._send(status_line(500) + self._server_headers() + _FAILED)

    def _write(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The answer as uvicorn writes an ASGI app's: its headers, then CORS's, then the body."""
        lines = [status_line(status), self._server_headers()]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        lines.append(self.cors)
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines += [b"\r\n", body]
        self._send(b"".join(lines))

    def _server_headers(self) -> bytes:
        """uvicorn's default headers (server, date), joined once per list: it makes a new
        one when the date changes."""
        global _server_for, _server_lines
        default = self.protocol.server_state.default_headers
        if default is not _server_for:
            _server_lines = b"".join(name + b": " + value + b"\r\n" for name, value in default)
            _server_for = default
        return _server_lines

    def _send(self, wire: bytes) -> None:
        protocol = self.protocol
        if self.response_complete or self.disconnected or protocol.transport.is_closing():
            return
        self.response_complete = True
        protocol.answered(wire, self.keep_alive)


def status_line(status: int) -> bytes:
    """``HTTP/1.1 201 Created``, as uvicorn writes it."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (
            status,
            HTTPStatus(status).phrase.encode(),
        )
    return line


_STATUS_LINES: dict[int, bytes] = {}
_server_for: list[tuple[bytes, bytes]] | None = None
_server_lines = b""
