"""``GET /sse/{channel}``: Server-Sent Events, written by our own small ASGI response.

Why not sse-starlette's ``EventSourceResponse`` (which we used first): per
connection it runs a task group of four tasks (stream, ping, exit listener,
disconnect listener) and opens a cancel scope around every send. Measured
with ``bench/`` (see bench/README.md), that was most of our 48 KB of RSS per
idle connection and a fifth of the CPU per delivery. Here a connection is
the ASGI task alone under uvicorn's httptools protocol: no extra task, no
timer; a client that left is told to its subscription by uvicorn's own
event (``direct.on_http_lost``). Under any other server or a parent app's
middleware, one watcher task awaits ASGI's ``http.disconnect``
(departure.py): its cost per idle connection is in bench/README.md.

* Under uvicorn, once the stream is open the hub writes each batch's
  chunk straight to the socket (server/direct.py): no task wakes per
  message. Elsewhere, items are pre-encoded ``bytes`` (``Message.sse``,
  built once per message) written through ASGI, everything queued in one
  chunk, so a burst costs one write.
* The stream opens with a comment (the first bytes say "subscribed", and
  no client dispatches an event for a comment); the heartbeat is a bare
  comment, sent when the channel was quiet for half ``GATEWAY_HEARTBEAT``.
* When the hub closes the subscription (this client lagged, or the server
  is shutting down) the stream writes ``retry:`` and ends: the browser
  reconnects with ``Last-Event-ID`` and resumes, here or on another node.
* Heartbeats and the stall watchdog are the hub's one loop (``Hub._heartbeat_loop``):
  no timer per client per write. A write blocked for ``hub.STALL_S`` (a
  stalled client) is cancelled and the stream dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.auth import NONE, Rights
from gateway.errors import GatewayError, NotServed
from gateway.message import Cursor, sse_event
from gateway.presence_visit import ANONYMOUS, Visit, visit_of
from gateway.server.direct import on_http_lost, sse_sink, write_queued
from gateway.state import Connection, Gateway, gateway_of
from gateway.subscription import CloseReason, Item, Subscription
from gateway.transports.common import (
    check_channel,
    refusal,
    resume_from,
    route_path,
    stall_absorbed,
)
from gateway.transports.departure import while_present

SSE_PATH_PREFIX = "/sse/"
BATCH = 256
WRITE_BYTES = 65536
OPENING = b": subscribed\n\n"
HEARTBEAT = b":\n\n"
RECONNECT_HINT = b"retry: 1000\n\n"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
]

Write = Callable[[bytes], Awaitable[None]]


async def sse_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/sse/{channel}`` as a bare ASGI app: ``GatewayApp`` sends it here past the router.

    Refusals are answered as on every route (``refusal``); a method other
    than GET or HEAD is 405, as the router would say.
    """
    scope["path_params"] = {"channel": route_path(scope)[len(SSE_PATH_PREFIX) :]}
    response = await respond(scope, receive, sse_endpoint)
    await response(scope, receive, send)  # (by the app: no frame of ``respond`` held meanwhile)


async def respond(
    scope: Scope, receive: Receive, endpoint: Callable[[Request], Awaitable[Response]]
) -> Response:
    """A route past the router: 405 but for GET and HEAD, refusals as on every route.

    The caller sends the response: a stream lasts the connection's life,
    and a frame awaiting it here cost 272 bytes per connection.
    """
    if scope["method"] not in ("GET", "HEAD"):
        return PlainTextResponse(
            "Method Not Allowed", status_code=405, headers={"Allow": "GET, HEAD"}
        )
    request = Request(scope, receive)
    try:
        return await endpoint(request)
    except GatewayError as exc:
        return refusal(request, exc)


async def sse_endpoint(request: Request) -> Response:
    gateway = gateway_of(request)
    if not gateway.settings.serves("sse"):
        raise NotServed("the sse transport is turned off on this server")
    channel = check_channel(request.path_params["channel"])
    rights = gateway.guard.authorize_read(request, channel)
    visit = visit_of(request.query_params, rights, gateway.guard.open)
    cursor, last = resume_from(request.query_params, request.headers.get("last-event-id"))
    gateway.check_capacity()
    gateway.hub.check_broker()
    return EventStream(gateway, channel, cursor, last, visit, rights)


class Stream(Response):
    """An event stream's response: the headers, the stream, then its end."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        if scope.get("method") == "HEAD" or await self._stream(scope, receive, send):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # else a stalled client: no last write to block on; uvicorn drops the connection

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Stream until the end; False when the client stalled."""
        raise NotImplementedError


class EventStream(Stream):
    def __init__(
        self,
        gateway: Gateway,
        channel: str,
        cursor: Cursor | None,
        last: int | None,
        visit: Visit = ANONYMOUS,
        rights: Rights = NONE,
    ) -> None:
        self.gateway = gateway
        self.channel = channel
        self.cursor = cursor
        self.last = last
        self.visit = visit  # presence: who, and whether join/leave events are wanted
        self.rights = rights  # its token's: the stream ends at its exp or revocation

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Stream until the subscription ends; False when the client stalled."""
        gateway = self.gateway
        with gateway.connection("sse", self.channel) as conn:
            try:
                async with (
                    gateway.hub.subscribe(self.channel, self.cursor, self.last) as sub,
                    gateway.presence.attending(self.visit, sub),
                ):
                    sub.wants_heartbeat = True
                    sub.writer = asyncio.current_task()
                    await receive()  # the (empty) request body of a GET
                    write = stream_writer(sub, send)
                    # Inline, not through a helper coroutine: each frame held for a
                    # connection's life costs memory per idle client (bench/, e).
                    try:
                        await write(OPENING)
                        with gateway.access.watch(self.rights, sub):
                            if on_http_lost(scope, sub.client_gone) is not None:
                                await _pump(sub, write, scope)
                            else:  # not uvicorn's httptools: ASGI's own word (departure.py)
                                pump = _pump(sub, write, scope)
                                await while_present(receive, sub.client_gone, pump)
                    except asyncio.CancelledError:
                        if not stall_absorbed(sub.close_reason):
                            raise
                    return stream_end(conn, sub.close_reason)
            except GatewayError as exc:  # the broker went away while we joined
                return await broker_gone(conn, exc, send)


def stream_end(conn: Connection, reason: CloseReason | None) -> bool:
    """Say why a stream ended; False when the client stalled (no last write then)."""
    conn.reason = (reason or CloseReason.CLIENT_GONE).value
    return reason is not CloseReason.STALLED


async def broker_gone(conn: Connection, exc: GatewayError, send: Send) -> bool:
    """The broker went away while the stream joined: tell the client to come back."""
    conn.reason = exc.reason
    await send({"type": "http.response.body", "body": RECONNECT_HINT, "more_body": True})
    return True


def last_words(reason: CloseReason | None, note: str | None) -> bytes:
    """A stream's last event: ``expired`` or ``revoked`` with the reason, else ``retry:``.

    The browser's ``EventSource`` reconnects on its own after either: with
    a token expired or revoked it is refused (401/403) and stops there.
    """
    if reason is CloseReason.EXPIRED or reason is CloseReason.REVOKED:
        name = b"expired" if reason is CloseReason.EXPIRED else b"revoked"
        text = (note or reason.value).encode()
        return b"event: " + name + b"\ndata: " + text + b"\n\n"
    return RECONNECT_HINT


def stream_writer(sub: Subscription, send: Send) -> Write:
    """A write that the hub's watchdog can see blocked (``sending_since``)."""

    async def write(chunk: bytes) -> None:
        sub.sending_since = time.monotonic()
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        sub.sending_since = 0.0

    return write


async def _pump(sub: Subscription, write: Write, scope: Scope) -> None:
    """Write what the subscription hands over until it closes (the client's departure too)."""
    sink = sub.sink = sse_sink(scope)
    while True:
        if sink is not None and sub.queue:
            if not await write_queued(sub, sink):
                sub.close(CloseReason.CLIENT_GONE)
            continue
        items = sub.take(BATCH)
        if items:
            await _write_batch(write, items)
            continue
        if sub.closed:
            if sub.close_reason is not CloseReason.CLIENT_GONE:
                await write(last_words(sub.close_reason, sub.note))
            return
        if sub.poked():  # a heartbeat
            await write(HEARTBEAT)
            continue
        await sub.wait()


async def _write_batch(write: Write, items: list[Item]) -> None:
    """Queued items in as few writes as possible, each at most about WRITE_BYTES.

    One huge write would sit whole in the transport's buffer when the client
    is slow: memory per client stays near WRITE_BYTES plus the socket's.
    """
    chunk: list[bytes] = []
    size = 0
    for item in items:
        frame = sse_event(item)
        chunk.append(frame)
        size += len(frame)
        if size >= WRITE_BYTES:
            await write(b"".join(chunk))
            chunk, size = [], 0
    if chunk:
        await write(b"".join(chunk))
