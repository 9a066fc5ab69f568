"""The embedded broker: one process, history in memory.

Its epoch is drawn at start, so every cursor from an earlier run of the
process is recognised as another epoch (a gap), never silently skipped past.
Positions are made like Redis stream ids (``<ms>-<seq>``) so both brokers'
ids look alike.
"""

from __future__ import annotations

import bisect
import secrets
import time
from collections import deque

from gateway.brokers.base import BrokerListener, History, Published
from gateway.message import START, Cursor, Message, Position
from gateway.settings import Settings


class _Channel:
    __slots__ = ("history", "trimmed")

    def __init__(self) -> None:
        self.history: deque[Message] = deque()
        self.trimmed: Position | None = None  # newest position dropped from history


class MemoryBroker:
    def __init__(self, settings: Settings) -> None:
        self.history_size = settings.history_size
        self.epoch = secrets.token_hex(4)
        self.connected = False
        self._channels: dict[str, _Channel] = {}
        self._subscribed: set[str] = set()
        self._listener: BrokerListener | None = None
        self._last_position: Position = (0, 0)

    async def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        self.connected = True

    async def stop(self) -> None:
        self.connected = False
        self._listener = None

    async def publish(self, channel: str, event: str, data: str) -> Message:
        return self._publish(channel, event, data)

    def publish_soon(self, channel: str, event: str, data: str, done: Published) -> None:
        """``publish``, its outcome handed to ``done`` at once (base.py)."""
        done(self._publish(channel, event, data))

    def _publish(self, channel: str, event: str, data: str) -> Message:
        now = time.time()
        message = Message(channel, event, data, self.epoch, self._next_position(now), now)
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        state.history.append(message)
        if len(state.history) > self.history_size:
            state.trimmed = state.history.popleft().position
        if channel in self._subscribed and self._listener is not None:
            self._listener.on_messages([message])
        return message

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def history(self, channel: str, cursor: Cursor, limit: int) -> History:
        state = self._channels.get(channel)
        messages = list(state.history) if state else []
        if cursor.epoch is None:
            return History(messages[:limit], gap=False)
        if cursor.epoch != self.epoch:
            return History(messages[:limit], gap=True)
        start = bisect.bisect_right(messages, cursor.position, key=lambda m: m.position)
        gap = state is not None and state.trimmed is not None and state.trimmed > cursor.position
        return History(messages[start : start + limit], gap=gap)

    async def tail(self, channel: str, count: int) -> list[Message]:
        state = self._channels.get(channel)
        if state is None or count <= 0:
            return []
        return list(state.history)[-count:]

    async def latest(self, channel: str) -> Cursor:
        state = self._channels.get(channel)
        if state is None or not state.history:
            return START
        return Cursor(self.epoch, state.history[-1].position)

    async def check_link(self) -> None:
        return None

    def _next_position(self, now: float) -> Position:
        ms = int(now * 1000)
        last_ms, last_seq = self._last_position
        position = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        self._last_position = position
        return position
