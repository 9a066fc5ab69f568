"""``/ws`` publish frames answered as they arrive: no task woken per frame.

Why: a publish frame through ASGI woke the socket's reader task twice (its
frame, its publish's outcome) and its writer task once (the ack), and
crossed Starlette's and uvicorn's receive and send chains: under 64
publishing connections that cost more than Nchan's whole publish
(bench/README.md). Here, under uvicorn, the protocol hands each whole text
frame to ``offer`` as it is parsed (server/ws_frames.py); a publish frame
is checked and handed to the hub (``Hub.publish_soon``) at once, and its
ack or error frame is written straight to the socket when the outcome
comes (``Sink.write_bytes``), or by the connection's writer when it cannot
go at once.

The same answers as the reader's path, by construction: the same checks
(``check_publish``, in the same order), the same frames, and only when
nothing of the client is ahead of the frame. ``offer`` declines (the frame
then goes the plain way, through the reader task) unless the reader waits
for a frame with nothing queued, no answer is owed and no publish is in
flight: one frame at a time, as the reader answers them, so a client that
sends several without waiting gets its answers in order. The reader, given
a frame while a publish answered here is in flight, waits for its answer
first (``settled``). Frames of any other type, a frame that is not JSON, and
one past ``GATEWAY_WS_MAX_FRAME_BYTES`` are the reader's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

import orjson

from gateway.errors import BadRequest, GatewayError
from gateway.message import Message, ws_frame
from gateway.multiplex import Multiplex
from gateway.server.direct import WsSink
from gateway.state import Gateway
from gateway.subscription import CloseReason
from gateway.transports.channels import named
from gateway.transports.refresh import Token
from gateway.transports.websocket import RateLimit, check_publish, publish_fields

logger = logging.getLogger(__name__)
Outcome = Message | BaseException
ACK = b'{"type":"ack","channel":%b,"id":%b}'  # the reader's ack, as orjson writes its dict


class Session(Protocol):
    """What of a ``/ws`` connection's session (ws_multi.py) its publish frames use."""

    gateway: Gateway
    mux: Multiplex
    token: Token
    limiter: RateLimit
    raw: WsSink | None
    replies: deque[str]

    def reply(self, text: str) -> None: ...


class PublishFrames:
    """One socket's publish frames, answered in the protocol's callback (``offer``)."""

    __slots__ = ("_idle", "in_flight", "reading", "session")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.reading = False  # the reader waits for the client's next frame
        self.in_flight = False  # a publish answered here waits for its outcome
        self._idle: asyncio.Future[None] | None = None  # the reader, waiting for that outcome

    def offer(self, data: bytes) -> bool:
        """Answer a whole text frame's payload here if it is a publish; False: the reader's."""
        session = self.session
        mux = session.mux
        if not self.reading or self.in_flight or mux.replies_owed or mux.close_reason:
            return False
        if len(data) > session.gateway.settings.ws_max_frame_bytes:
            return False  # (the reader closes the socket 1009)
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False  # (not JSON, or not UTF-8: the reader's or uvicorn's answer)
        if type(frame) is not dict or frame.get("type") != "publish":
            return False
        mux.replies_owed += 1  # from now: messages queue behind the answer
        channel = frame.get("channel")
        try:
            self._publish(frame)
        except GatewayError as exc:
            self._answer(_error(channel, exc))
        return True

    async def settled(self) -> None:
        """Once no publish answered here is in flight (its answer is then on its way)."""
        while self.in_flight:
            self._idle = asyncio.get_running_loop().create_future()
            try:
                await self._idle
            finally:
                self._idle = None

    def _publish(self, frame: dict[str, Any]) -> None:
        session = self.session
        channel = frame_channel(frame)
        event, data = publish_fields(frame)
        rights = session.token.rights
        check_publish(session.gateway, rights, session.limiter, channel, data)
        self.in_flight = True

        def done(outcome: Outcome) -> None:
            self._settle(channel, outcome)

        session.gateway.hub.publish_soon(channel, event, data, done)

    def _settle(self, channel: str, outcome: Outcome) -> None:
        self.in_flight = False
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)
        if isinstance(outcome, Message):
            self._answer(ACK % (orjson.dumps(channel), orjson.dumps(outcome.id)))
        elif isinstance(outcome, GatewayError):
            self._answer(_error(channel, outcome))
        else:  # as an exception out of the reader would: logged, the connection ended
            logger.error("publish failed", exc_info=outcome)
            self.session.mux.replies_owed -= 1
            self.session.mux.close(CloseReason.CLIENT_GONE)

    def _answer(self, payload: bytes) -> None:
        """Write the frame's answer now if nothing else is owed or queued; else the writer does."""
        session = self.session
        mux, raw = session.mux, session.raw
        if raw is not None and mux.replies_owed == 1 and not session.replies and raw.ready():
            raw.write_bytes(ws_frame(payload))
            mux.replies_owed = 0
            if mux.queued():
                mux.poke()
        else:
            session.reply(payload.decode())


def frame_channel(frame: dict[str, Any]) -> str:
    """The channel a frame names, checked."""
    channel = frame.get("channel")
    if not isinstance(channel, str):
        raise BadRequest(f"{frame.get('type')} frame without a channel")
    return named(channel)


def _error(channel: object, exc: GatewayError) -> bytes:
    """The reader's error frame (``Session._handle``): the channel when the frame named one."""
    fields = {"channel": channel} if isinstance(channel, str) else {}
    return orjson.dumps({"type": "error", **fields, "reason": exc.reason})
