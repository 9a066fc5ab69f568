"""``WS /ws/{channel}``: one text frame per message; publish frames in.

The writer is the connection's own task; the reader runs beside it in a
task group, and the first to finish cancels the other. Under uvicorn, once
the socket is accepted the hub writes each batch's frames straight to it
(server/direct.py) and the writer only drains what queued while the
socket was paused. The reader's acks and errors are queued to the writer
(one writer: no lock); until an ack is written, messages take the queue
too, so a publisher sees its ack before its message. A write blocked too
long is cut by the hub's watchdog, not by a timer per write.
Refusals after the handshake are close frames with a reason: 1008 for a
bad request or a missing right, 1013 for a lagging client or a full
process, 1012 when the server restarts (reconnect elsewhere with your cursor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple, TypeVar

import anyio
import orjson
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gateway.auth import Rights
from gateway.errors import BadRequest, GatewayError, RateLimited, TooLarge
from gateway.message import GAP_WS, Message, check_event
from gateway.presence_visit import Visit, visit_of
from gateway.server.direct import WsSink, write_queued, ws_sink
from gateway.server.ws_lean import GONE, Inbox, forget_handshake, lean_inbox, take
from gateway.state import Connection, Gateway, gateway_of
from gateway.subscription import CloseReason, Gap, Item, Subscription
from gateway.transports.common import (
    Resume,
    check_channel,
    resume_from,
    route_path,
    unless_stalled,
)
from gateway.transports.refresh import Token

logger = logging.getLogger(__name__)

BATCH = 256
MAX_CLOSE_REASON_BYTES = 123  # a control frame carries 125 bytes, 2 of them the code
SEND_TIMEOUT_S = 30.0  # for the close frame: a stalled client may never take it
CLOSE_CODES = {
    CloseReason.SLOW_CONSUMER: 1013,
    CloseReason.SHUTDOWN: 1012,
    CloseReason.STALLED: 1013,
    CloseReason.CLIENT_GONE: 1000,
    CloseReason.EXPIRED: 4001,  # its token expired (access.py)
    CloseReason.REVOKED: 4003,  # its user's access was revoked
}


WS_PATH_PREFIX = "/ws/"
T = TypeVar("T")


def ws_app(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
    """``/ws/{channel}`` as a bare ASGI app: ``GatewayApp`` sends it here past the router.

    It returns the endpoint's coroutine rather than awaiting it: a frame
    held for the socket's life costs 240 bytes per connection.
    """
    scope["path_params"] = {"channel": route_path(scope)[len(WS_PATH_PREFIX) :]}
    return ws_endpoint(WebSocket(scope, receive, send))


async def ws_endpoint(websocket: WebSocket) -> None:
    gateway = gateway_of(websocket)
    admitted = await admit(websocket, gateway, lambda: _asked(websocket, gateway))
    if admitted is None:
        return
    channel, rights, (cursor, last), visit = admitted
    with gateway.connection("websocket", channel) as conn:
        drain = Drain(websocket)
        try:
            async with (
                gateway.hub.subscribe(channel, cursor, last, owner=drain) as sub,
                gateway.presence.attending(visit, sub),
            ):
                # Accepted only once subscribed: an open socket never misses a message.
                await websocket.accept()
                forget_handshake(websocket)
                with gateway.access.watch(rights, sub) as grant:
                    token = Token(rights, grant)
                    if drain.start(sub):  # one task: it reads, the hub and ``drain`` write
                        # (inline: a helper coroutine held for the socket's life costs 280 bytes)
                        sub.writer = asyncio.current_task()
                        try:
                            refusal = await _read(websocket, gateway, sub, token, drain.reply)
                        finally:
                            await drain.stop()
                        await _ended(websocket, sub, conn, refusal)
                    else:
                        await _serve(websocket, gateway, sub, token, conn)
        except GatewayError as exc:
            conn.reason = exc.reason
            await refuse(websocket, exc.close_code, exc.reason)


def _asked(websocket: WebSocket, gateway: Gateway) -> tuple[str, Rights, Resume, Visit]:
    channel = check_channel(websocket.path_params["channel"])
    rights = gateway.guard.authorize_read(websocket, channel)
    visit = visit_of(websocket.query_params, rights, gateway.guard.open)
    return channel, rights, resume_from(websocket.query_params), visit


async def admit(websocket: WebSocket, gateway: Gateway, asked: Callable[[], T]) -> T | None:
    """What the handshake ``asked`` for (read by ``asked``), or None once refused (close 1008 ...).

    A socket is admitted when the transport is served, its Origin allowed,
    its request sound and its rights enough, and the process has room.
    """
    if not gateway.settings.serves("websocket"):
        await websocket.close(code=1008, reason="the websocket transport is turned off")
        return None
    try:
        gateway.guard.check_origin(websocket)
        found = asked()
        gateway.check_capacity()
        gateway.hub.check_broker()
    except GatewayError as exc:
        gateway.metrics.refused.labels(str(exc.status)).inc()
        await refuse(websocket, exc.close_code, exc.reason)
        return None
    return found


async def refuse(websocket: WebSocket, code: int, reason: str) -> None:
    """Accept, then close with a reason: a browser sees the reason only this way."""
    if websocket.application_state is WebSocketState.CONNECTING:
        await websocket.accept()
    await close_socket(websocket, code, reason)


async def close_socket(websocket: WebSocket, code: int, reason: str) -> None:
    try:
        with anyio.move_on_after(SEND_TIMEOUT_S):  # a stalled client may never take it
            await websocket.close(code=code, reason=_close_reason(reason))
    except (RuntimeError, OSError, WebSocketDisconnect):
        pass  # the client went first


def _close_reason(reason: str) -> str:
    """At most 123 bytes of UTF-8, as a close frame allows (the reason may echo user input)."""
    return reason.encode()[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


async def _serve(
    websocket: WebSocket, gateway: Gateway, sub: Subscription, token: Token, conn: Connection
) -> None:
    replies: deque[str] = deque()  # acks and errors, written by the writer: one writer, no lock
    refusals: list[GatewayError] = []
    sub.writer = asyncio.current_task()

    async def serve() -> None:
        async with anyio.create_task_group() as tasks:

            def reply(text: str) -> None:
                sub.replies_owed += 1
                replies.append(text)
                sub.poke()  # wake the writer; WebSocket subscriptions take no heartbeat from it

            async def reader() -> None:
                refusal = await _read(websocket, gateway, sub, token, reply)
                refusals.extend([refusal] if refusal else [])
                tasks.cancel_scope.cancel()

            tasks.start_soon(reader)
            await _write(websocket, sub, replies)
            tasks.cancel_scope.cancel()

    if not await unless_stalled(serve(), lambda: sub.close_reason):
        conn.reason = CloseReason.STALLED.value
        return  # no close frame: it would block like the write did
    if refusals:
        conn.reason = refusals[0].reason
        await close_socket(websocket, refusals[0].close_code, refusals[0].reason)
    elif sub.close_reason is not None and sub.close_reason is not CloseReason.CLIENT_GONE:
        conn.reason = sub.close_reason.value
        await close_socket(websocket, CLOSE_CODES[sub.close_reason], sub.note or conn.reason)


class Drain:
    """One task per WebSocket: the ASGI task reads; writing needs no task of its own.

    Under uvicorn (a sink) the hub writes messages straight to the socket.
    What cannot go straight (a reply to the client's frame, messages queued
    while the socket was paused or behind a reply, the close frame after a
    ``close_reason``) is written by a drain task started when there is
    something to write and ending when nothing is left (``arrived``, the
    subscription's ``Owner`` port). Idle, a WebSocket is one task, as an SSE
    stream is: two tasks and their task group were about 5 KB of the 29 KB
    of Python objects per idle socket (tracemalloc, bench/ws_memory.py).
    """

    __slots__ = ("_sink", "_sub", "_task", "replies", "websocket")

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.replies: list[str] = []  # (rare: a list is 700 bytes smaller than a deque)
        self._sub: Subscription | None = None
        self._sink: WsSink | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, sub: Subscription) -> bool:
        """Take over the writing when the socket has a sink; False: the two-task path."""
        sink = ws_sink(self.websocket.scope)
        if sink is None:
            return False
        sub.sink = self._sink = sink
        self._sub = sub
        self.arrived(sub, 0)
        return True

    def arrived(self, sub: Subscription, count: int) -> None:
        if self._sub is None or (self._task is not None and not self._task.done()):
            return
        if sub.queue or self.replies or sub.closed:
            self._task = asyncio.get_running_loop().create_task(self._drain())

    def reply(self, text: str) -> None:
        assert self._sub is not None
        self._sub.replies_owed += 1
        self.replies.append(text)
        self.arrived(self._sub, 0)

    async def stop(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _drain(self) -> None:
        sub, sink = self._sub, self._sink
        assert sub is not None and sink is not None
        sub.writer = asyncio.current_task()
        try:
            if not await unless_stalled(self._write(sub), lambda: sub.close_reason):
                sink.abort()  # no close frame: it would block like the write did
                return
        finally:
            sub.writer = None
        reason = sub.close_reason
        if reason is not None and reason is not CloseReason.CLIENT_GONE:
            await close_socket(self.websocket, CLOSE_CODES[reason], sub.note or reason.value)

    async def _write(self, sub: Subscription) -> None:
        """Until nothing is left to write (or the subscription closed)."""
        assert sub.sink is not None
        while self.replies or sub.queue:
            while self.replies:
                sent = await send_frame(self.websocket, self.replies.pop(0), sub)
                sub.replies_owed -= 1
                if not sent:
                    return
            if sub.queue and not await write_queued(sub, sub.sink):
                sub.close(CloseReason.CLIENT_GONE)
                return


async def _ended(
    websocket: WebSocket, sub: Subscription, conn: Connection, refusal: GatewayError | None
) -> None:
    """The fast path's connection ended: say why; a refused frame closes it with the reason."""
    if refusal is not None:
        conn.reason = refusal.reason
        await close_socket(websocket, refusal.close_code, refusal.reason)
    elif sub.close_reason is not None and sub.close_reason is not CloseReason.CLIENT_GONE:
        conn.reason = sub.close_reason.value


async def _write(websocket: WebSocket, sub: Subscription, replies: deque[str]) -> None:
    """Frames to the client; a write blocked for ``hub.STALL_S`` is cut by the hub's watchdog."""
    sink = sub.sink = ws_sink(websocket.scope)
    while True:
        while replies:
            sent = await send_frame(websocket, replies.popleft(), sub)
            sub.replies_owed -= 1
            if not sent:
                return
        if sink is not None and sub.queue:
            if not await write_queued(sub, sink):
                sub.close(CloseReason.CLIENT_GONE)
                return
            continue
        items = sub.take(BATCH)
        if not items:
            if sub.closed:
                return
            await sub.wait()
            continue
        for item in items:
            if not await send_frame(websocket, _encode(item), sub):
                return


async def send_frame(websocket: WebSocket, text: str, sub: Subscription | None) -> bool:
    """Send one frame; False (and the subscription closed) when the client is gone.

    ``sub`` is the subscription the hub's watchdog looks at for a blocked write.
    """
    if sub is not None:
        sub.sending_since = time.monotonic()
    try:
        await websocket.send_text(text)
    except (WebSocketDisconnect, RuntimeError, OSError):  # closing under our feet
        if sub is not None:
            sub.close(CloseReason.CLIENT_GONE)
        return False
    finally:
        if sub is not None:
            sub.sending_since = 0.0
    return True


async def _read(
    websocket: WebSocket,
    gateway: Gateway,
    sub: Subscription,
    token: Token,
    reply: Callable[[str], None],
) -> GatewayError | None:
    """Answer the client's frames until it leaves; a frame too large ends it (1009).

    Until its answer is written, messages go through the writer's queue
    (``reply`` counts it owed): the client gets the ack of its publish
    before the message itself.
    """
    limiter = RateLimit(gateway.settings.publish_rate)
    most = gateway.settings.ws_max_frame_bytes
    inbox = lean_inbox(websocket)
    while True:
        if inbox is None:
            received = await receive_frame(websocket, most)
        else:
            while (queued := queued_frame(websocket, inbox, most)) is None:
                await inbox.arrival()
            received = queued
        if isinstance(received, CloseReason):
            sub.close(received)
            return None
        if isinstance(received, GatewayError):
            return received
        sub.replies_owed += 1  # from now: messages queue behind the answer
        answer = await _handle_frame(received.text, gateway, sub.channel, token, limiter)
        sub.replies_owed -= 1
        reply(answer)


class Frame(NamedTuple):
    text: str | None  # None: a binary frame


Received = Frame | CloseReason | GatewayError


async def receive_frame(websocket: WebSocket, most: int) -> Received:
    """The client's next frame; why it left; or a frame past ``most`` bytes (1009)."""
    message: Mapping[str, Any]
    try:
        message = await websocket.receive()
    except (WebSocketDisconnect, RuntimeError):
        message = GONE
    return frame_of(message, most)


def queued_frame(websocket: WebSocket, inbox: Inbox, most: int) -> Received | None:
    """``receive_frame`` when a message is queued in ws-lean's ``inbox``; None when none is.

    A reader that has an inbox (``lean_inbox``) takes from it and otherwise
    awaits ``inbox.arrival()``, a bare future: idle, it holds no coroutine of
    Starlette's or uvicorn's (server/ws_lean.py).
    """
    message = take(websocket, inbox)
    return None if message is None else frame_of(message, most)


def frame_of(message: Mapping[str, Any], most: int) -> Received:
    """An ASGI message from the client, as the readers take it."""
    if message["type"] == "websocket.disconnect":
        # uvicorn closes every socket itself (1012) when it shuts down.
        shutdown = message.get("code") == 1012
        return CloseReason.SHUTDOWN if shutdown else CloseReason.CLIENT_GONE
    text = message.get("text")
    size = len(message.get("bytes") or b"") if text is None else len(text.encode())
    # uvicorn refuses larger frames itself only when started with --ws-max-size
    # (the Procfile and ``python -m gateway`` do); this holds without it.
    if size > most:
        return TooLarge(f"frame larger than {most} bytes")
    return Frame(text)


async def _handle_frame(
    text: str | None, gateway: Gateway, channel: str, token: Token, limiter: RateLimit
) -> str:
    try:
        frame = parse_frame(text)
        if frame.get("type") == "refresh":
            return token.refresh(gateway.guard, frame, [channel])
        event, data = _parse_publish(frame)
        message = await publish_checked(gateway, token.rights, limiter, channel, event, data)
    except GatewayError as exc:
        return orjson.dumps({"type": "error", "reason": exc.reason}).decode()
    return orjson.dumps({"type": "ack", "id": message.id}).decode()


async def publish_checked(
    gateway: Gateway, rights: Rights, limiter: RateLimit, channel: str, event: str, data: str
) -> Message:
    """Publish a frame's message once its right, size and the connection's rate allow it."""
    check_publish(gateway, rights, limiter, channel, data)
    return await gateway.hub.publish(channel, event, data)


def check_publish(
    gateway: Gateway, rights: Rights, limiter: RateLimit, channel: str, data: str
) -> None:
    """Refuse a publish, before anything is stored, unless its right, size and rate allow."""
    gateway.guard.authorize_publish(rights, channel)
    if len(data.encode()) > gateway.settings.max_message_bytes:
        raise TooLarge(f"data larger than {gateway.settings.max_message_bytes} bytes")
    limiter.take()


def _parse_publish(frame: dict[str, Any]) -> tuple[str, str]:
    if frame.get("type") != "publish":
        raise BadRequest('expected {"type": "publish", "data": ...} or {"type": "refresh", ...}')
    return publish_fields(frame)


def parse_frame(text: str | None) -> dict[str, Any]:
    """A client's frame: a JSON object, or a 400 saying why not."""
    if text is None:
        raise BadRequest("binary frames are not understood: send JSON text")
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadRequest("frame is not JSON") from None
    if not isinstance(frame, dict):
        raise BadRequest("a frame is a JSON object with a type")
    return frame


def publish_fields(frame: dict[str, Any]) -> tuple[str, str]:
    """A publish frame's event and data (JSON data travels as its text)."""
    if "data" not in frame:
        raise BadRequest("publish frame without data")
    data = frame["data"]
    if not isinstance(data, str):
        data = orjson.dumps(data).decode()
    event = frame.get("event")
    if event is not None and not isinstance(event, str):
        raise BadRequest("event must be a string")
    return check_event(event), data


class RateLimit:
    """A token bucket: ``rate`` publishes a second, bursts up to one second's worth."""

    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.stamp = time.monotonic()

    def take(self) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            raise RateLimited(f"more than {self.rate:g} publishes a second on this connection")
        self.tokens -= 1.0


def _encode(item: Item) -> str:
    return GAP_WS if isinstance(item, Gap) else item.ws_text
