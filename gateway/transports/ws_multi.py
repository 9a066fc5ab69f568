"""``WS /ws``: several channels on one WebSocket, subscribed and left by frames.

Client frames: ``{"type":"subscribe","channel","since"?,"last"?}``,
``{"type":"unsubscribe","channel"}``, ``{"type":"publish","channel","data","event"?}``.
Server frames: ``{"type":"subscribed","channel","cursor"}`` (the position
the channel starts after: its messages follow this frame),
``{"type":"unsubscribed","channel"}`` (none of its messages follow it),
messages exactly as on ``/ws/{channel}`` (they carry their channel, so the
frames built once per message are shared), ``{"type":"gap","channel"}``,
``{"type":"ack","channel","id"}`` and ``{"type":"error","channel"?,"reason"}``.

* ``?channel=…`` (and ``?last=``, ``?cursor=``, as on ``/sse``) subscribes
  while connecting: a refusal there is a close 1008 with the reason, as on
  ``/ws/{channel}``. After that, a refused subscribe or publish is an error
  frame for its channel and the socket and its other channels go on.
* Every client frame gets exactly one answer, written before any message
  that follows it (``Multiplex.replies_owed``): the ack of a publish comes
  before the message itself, ``subscribed`` before the channel's history.
* Unsubscribing a channel not subscribed answers ``unsubscribed`` all the
  same (the client's wish holds); subscribing one twice is an error.
* Bounds as on ``/ws/{channel}``: ``GATEWAY_WS_MAX_FRAME_BYTES`` (1009),
  ``GATEWAY_PUBLISH_RATE``, ``GATEWAY_MAX_CHANNELS``, rights per channel. A
  lag on any channel closes the socket 1013 ``lagged``: resume every channel.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import anyio
import orjson
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.auth import Rights
from gateway.errors import BadRequest, GatewayError
from gateway.message import Batch, Cursor, Gap, Item, ws_frame
from gateway.multiplex import Multiplex
from gateway.presence_visit import Visit, visit_of
from gateway.server.direct import ChannelSink, write_arrivals, ws_sink
from gateway.server.ws_frames import take_text_frames
from gateway.server.ws_lean import forget_handshake, lean_inbox
from gateway.state import Connection, Gateway, gateway_of
from gateway.subscription import CloseReason
from gateway.transports.channels import ChannelSpec, channel_specs, frame_spec, label
from gateway.transports.common import unless_stalled
from gateway.transports.refresh import Token
from gateway.transports.websocket import (
    BATCH,
    CLOSE_CODES,
    RateLimit,
    admit,
    close_socket,
    parse_frame,
    publish_checked,
    publish_fields,
    queued_frame,
    receive_frame,
    refuse,
    send_frame,
)
from gateway.transports.ws_publishing import PublishFrames, frame_channel

WS_MULTI_PATH = "/ws"


async def ws_multi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/ws`` as a bare ASGI app, past the router like ``/ws/{channel}``."""
    await ws_multi_endpoint(WebSocket(scope, receive, send))


async def ws_multi_endpoint(websocket: WebSocket) -> None:
    gateway = gateway_of(websocket)
    admitted = await admit(websocket, gateway, lambda: _asked(websocket, gateway))
    if admitted is None:
        return
    specs, rights, visit = admitted
    channels = [spec.channel for spec in specs]
    # Channels whose presence events this socket asked for (?presence=1, "presence": true).
    listening = set(channels) if visit.listen else set()
    with gateway.connection("websocket", label(channels)) as conn:
        async with Multiplex(gateway.hub) as mux:
            mux.writer = asyncio.current_task()
            mux.attend = gateway.presence.attender(visit, listening)
            try:
                starts = [await mux.open(s.channel, s.cursor, s.last) for s in specs]
            except GatewayError as exc:
                conn.reason = exc.reason
                await refuse(websocket, exc.close_code, exc.reason)
                return
            # Accepted only once subscribed: an open socket never misses a message.
            await websocket.accept()
            forget_handshake(websocket)
            with gateway.access.watch(rights, mux) as grant:
                session = Session(websocket, gateway, mux, Token(rights, grant))
                session.listening = listening
                for channel, start in zip(channels, starts, strict=True):
                    mux.replies_owed += 1
                    session.subscribed(channel, start)
                await session.serve(conn)


def _asked(websocket: WebSocket, gateway: Gateway) -> tuple[list[ChannelSpec], Rights, Visit]:
    specs = channel_specs(websocket, gateway.settings.max_channels, required=False)
    rights = gateway.guard.authorize_read_all(websocket, [spec.channel for spec in specs])
    return specs, rights, visit_of(websocket.query_params, rights, gateway.guard.open)


def _frame(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


class Session:
    """One socket's reader and writer around its ``Multiplex``."""

    def __init__(
        self, websocket: WebSocket, gateway: Gateway, mux: Multiplex, token: Token
    ) -> None:
        self.websocket = websocket
        self.gateway = gateway
        self.mux = mux
        self.token = token  # its rights, renewed by a refresh frame
        self.replies: deque[str] = deque()  # written by the writer: one writer, no lock
        self.raw = ws_sink(websocket.scope)
        self.limiter = RateLimit(gateway.settings.publish_rate)
        self.listening: set[str] = set()  # channels whose presence events were asked for
        self.frames = PublishFrames(self)  # publish frames answered as they arrive

    def reply(self, text: str) -> None:
        """One answer to a client frame (``replies_owed`` was counted when it came)."""
        self.replies.append(text)
        self.mux.poke()

    def subscribed(self, channel: str, start: Cursor) -> None:
        self.reply(_frame(type="subscribed", channel=channel, cursor=str(start)))
        sub = self.mux.subs[channel]
        if self.raw is not None:
            sub.sink = ChannelSink(self.raw, self.mux, channel, self.encode)

    def encode(self, channel: str, batch: Batch) -> bytes:
        """The batch's frames: the shared ones, unless a gap must name its channel."""
        if not any(isinstance(item, Gap) for item in batch.items):
            return batch.ws_frames
        return b"".join(ws_frame(self.text(channel, item).encode()) for item in batch.items)

    @staticmethod
    def text(channel: str, item: Item) -> str:
        return _frame(type="gap", channel=channel) if isinstance(item, Gap) else item.ws_text

    async def serve(self, conn: Connection) -> None:
        mux = self.mux
        take_text_frames(self.websocket, self.frames.offer)
        refusals: list[GatewayError] = []

        async def serve() -> None:
            async with anyio.create_task_group() as tasks:

                async def reader() -> None:
                    refusal = await self._read()
                    refusals.extend([refusal] if refusal else [])
                    tasks.cancel_scope.cancel()

                tasks.start_soon(reader)
                await self._write()
                tasks.cancel_scope.cancel()

        if not await unless_stalled(serve(), lambda: mux.close_reason):
            conn.reason = CloseReason.STALLED.value
            return  # no close frame: it would block like the write did
        reason = mux.close_reason
        if refusals:
            conn.reason = refusals[0].reason
            await close_socket(self.websocket, refusals[0].close_code, refusals[0].reason)
        elif reason is not None and reason is not CloseReason.CLIENT_GONE:
            conn.reason = reason.value
            await close_socket(self.websocket, CLOSE_CODES[reason], mux.note or reason.value)

    async def _write(self) -> None:
        mux, websocket = self.mux, self.websocket
        while True:
            while self.replies:
                sent = await send_frame(websocket, self.replies.popleft(), mux.lead)
                mux.replies_owed -= 1
                if not sent:
                    mux.close(CloseReason.CLIENT_GONE)
                    return
            if mux.close_reason is not None:
                return
            if mux.revoked:
                await self._leave_revoked()
                continue
            if not mux.queued():
                await mux.wait()
            elif self.raw is not None:
                if not await write_arrivals(mux, self.raw, self.encode):
                    mux.close(CloseReason.CLIENT_GONE)
            else:
                for channel, items in mux.take(BATCH):
                    for item in items:
                        if not await send_frame(websocket, self.text(channel, item), mux.lead):
                            mux.close(CloseReason.CLIENT_GONE)
                            return

    async def _leave_revoked(self) -> None:
        """Leave the channels revoked alone, each with a ``revoked`` frame; the others go on."""
        mux = self.mux
        note = mux.note or CloseReason.REVOKED.value
        for channel in mux.revoked:
            if channel in mux.subs:
                await mux.close_channel(channel)
            self.listening.discard(channel)
            mux.replies_owed += 1
            self.reply(_frame(type="revoked", channel=channel, reason=note))
        mux.revoked.clear()

    async def _read(self) -> GatewayError | None:
        """Answer the client's frames until it leaves; a frame too large ends it (1009)."""
        most = self.gateway.settings.ws_max_frame_bytes
        frames = self.frames
        websocket = self.websocket
        inbox = lean_inbox(websocket)  # (then no coroutine of Starlette's waits: ws_lean.py)
        while True:
            frames.reading = True
            try:
                if inbox is None:
                    received = await receive_frame(websocket, most)
                else:
                    while (queued := queued_frame(websocket, inbox, most)) is None:
                        await inbox.arrival()
                    received = queued
            finally:
                frames.reading = False
            if isinstance(received, CloseReason):
                self.mux.close(received)
                return None
            if isinstance(received, GatewayError):
                return received
            await frames.settled()  # a publish answered in the protocol is answered first
            # Counted before it is handled: no message passes ahead of its answer.
            self.mux.replies_owed += 1
            await self._handle(received.text)

    async def _handle(self, text: str | None) -> None:
        channel: object = None
        try:
            frame = parse_frame(text)
            channel = frame.get("channel")
            kind = frame.get("type")
            if kind == "subscribe":
                await self._subscribe(frame)
            elif kind == "unsubscribe":
                await self._unsubscribe(frame)
            elif kind == "publish":
                await self._publish(frame)
            elif kind == "refresh":
                guard = self.gateway.guard
                self.reply(self.token.refresh(guard, frame, list(self.mux.subs)))
            elif kind == "ping":  # a browser's liveness check (it cannot see protocol pings)
                self.reply(_frame(type="pong"))
            else:
                raise BadRequest(
                    "expected a frame of type "
                    '"subscribe", "unsubscribe", "publish", "refresh" or "ping"'
                )
        except GatewayError as exc:
            fields = {"channel": channel} if isinstance(channel, str) else {}
            self.reply(_frame(type="error", **fields, reason=exc.reason))

    async def _subscribe(self, frame: dict[str, Any]) -> None:
        spec = frame_spec(frame)
        mux, most = self.mux, self.gateway.settings.max_channels
        if spec.channel in mux.subs:
            raise BadRequest(f"already subscribed to {spec.channel!r}")
        if len(mux.subs) >= most:
            raise BadRequest(f"at most {most} channels on one connection (GATEWAY_MAX_CHANNELS)")
        self.gateway.guard.check_read(self.token.rights, [spec.channel])
        self.gateway.hub.check_broker()
        if frame.get("presence") is True:
            self.listening.add(spec.channel)
        else:
            self.listening.discard(spec.channel)
        start = await mux.open(spec.channel, spec.cursor, spec.last)
        self.subscribed(spec.channel, start)  # at once: before any of its messages

    async def _unsubscribe(self, frame: dict[str, Any]) -> None:
        channel = frame_channel(frame)
        if channel in self.mux.subs:
            await self.mux.close_channel(channel)
        self.reply(_frame(type="unsubscribed", channel=channel))

    async def _publish(self, frame: dict[str, Any]) -> None:
        channel = frame_channel(frame)
        event, data = publish_fields(frame)
        gateway = self.gateway
        rights = self.token.rights
        message = await publish_checked(gateway, rights, self.limiter, channel, event, data)
        self.reply(_frame(type="ack", channel=channel, id=message.id))
