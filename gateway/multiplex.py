"""Several channels on one connection: one Subscription per channel, merged in arrival order.

Habit 14, "a connection is not a second hub": the hub still fans out per
channel into per-channel subscriptions, each with its own bounded buffer and
overflow policy. A ``Multiplex`` holds one connection's subscriptions and
only merges what they queue, in the order they queued it:

* Each subscription names the multiplex as its ``owner``; every queued offer
  is recorded as ``(subscription, count)`` in one ``arrivals`` list, and the
  connection's one writer (or its one poll) wakes. ``take`` hands the items
  back run by run in that order: in order within a channel, and across
  channels in the order they arrived.
* On the fast path each subscription's sink writes straight to the socket
  only while nothing of the connection is queued (``held``), so a direct
  write never passes a queued one of another channel.
* A channel is added with ``open`` (subscribe-then-read, as everywhere) and
  reported only once its history is in: what queued during that read is
  recorded then, as one arrival, so nothing comes ahead of its
  subscription's announcement. ``close_channel`` drops one channel.
* Any subscription closed (slow consumer, shutdown, stalled, client gone)
  ends the whole connection: ``close_reason``. The client resumes every
  channel from its cursors.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, AsyncExitStack
from types import TracebackType

from gateway.hub import Hub
from gateway.message import START, Cursor, Message
from gateway.subscription import CloseReason, Item, Subscription


class Multiplex:
    """One connection's channels; ``async with`` it: leaving it leaves every channel."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.subs: dict[str, Subscription] = {}  # announced channels, in subscription order
        self.close_reason: CloseReason | None = None
        self.replies_owed = 0  # frames (WS acks, errors) to write before any message goes direct
        self.writer: asyncio.Task[object] | None = None
        # Presence (presence.py): entered for each channel once subscribed, left with it.
        self.attend: Callable[[Subscription], AbstractContextManager[None]] | None = None
        self._exits: dict[str, AsyncExitStack] = {}
        self._arrivals: deque[_Arrival] = deque()  # oldest first
        self._waiter: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Multiplex:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for channel in list(self._exits):
            await self.close_channel(channel)

    @property
    def lead(self) -> Subscription | None:
        """The subscription standing for the connection in the hub's loop (heartbeat, stall)."""
        return next(iter(self.subs.values()), None)

    def held(self) -> bool:
        """Whether anything of the connection waits: then no message may be written directly."""
        return bool(self._arrivals) or self.replies_owed > 0

    def queued(self) -> bool:
        return bool(self._arrivals)

    async def open(
        self, channel: str, cursor: Cursor | None, last: int | None, most: int | None = None
    ) -> Cursor:
        """Subscribe one more channel; returns the position it starts after (``0``: all history).

        With neither cursor nor ``last``, the start is the channel's newest id
        once subscribed; with ``last=N`` it is the id before those N (one more
        is read, then dropped), so a client that drops before the first
        message resumes from the start it was told, without loss. ``most``:
        the caller takes no more than that many items (a poll), so one page
        of history is enough.
        """
        assert channel not in self._exits, f"{channel} opened twice"
        stack = AsyncExitStack()
        read = last + 1 if cursor is None and last else None
        try:
            sub = await stack.enter_async_context(
                self.hub.subscribe(channel, cursor, read, most=most, owner=self)
            )
            if self.attend is not None:
                stack.enter_context(self.attend(sub))
            start = self._start(sub, cursor, last)
        except BaseException:
            await stack.aclose()
            raise
        self._exits[channel] = stack
        self.subs[channel] = sub
        sub.writer = self.writer
        if sub.close_reason is not None:
            self._closed(sub.close_reason)
        if sub.queue:
            self._arrivals.append(_Arrival(sub, len(sub.queue)))
            self._signal()
        return start

    def _start(self, sub: Subscription, cursor: Cursor | None, last: int | None) -> Cursor:
        if cursor is not None:
            return cursor
        if last:
            first = sub.queue[0] if sub.history_left > last else None
            if not isinstance(first, Message) or first.cursor is None:
                return START  # history holds no more than the N asked for: all of it
            start = first.cursor
        else:
            start = self.hub.latest(sub.channel)
        sub.start_after(start)
        return start

    async def close_channel(self, channel: str) -> None:
        """Leave one channel: nothing more of it is taken, even what was queued."""
        sub = self.subs.pop(channel, None)
        if sub is not None:
            sub.sink = None
        await self._exits.pop(channel).aclose()

    def take(self, most: int, budget: int = 0) -> list[tuple[str, list[Item]]]:
        """Up to ``most`` queued items, as runs of one channel each, in arrival order.

        With a ``budget``, stop once the data taken reaches that many characters.
        """
        runs: list[tuple[str, list[Item]]] = []
        arrivals = self._arrivals
        while arrivals and most > 0:
            entry = arrivals[0]
            sub, count = entry.sub, entry.count
            if self.subs.get(sub.channel) is not sub:
                arrivals.popleft()  # a channel left meanwhile
                continue
            items = sub.take(min(count, most), budget)
            if items:
                runs.append((sub.channel, items))
            most -= len(items)
            if len(items) < count and sub.queue:
                entry.count = count - len(items)
                if budget:
                    break  # the budget stopped this run: the write is full
            else:
                arrivals.popleft()
        return runs

    def client_gone(self) -> None:
        """The client closed or reset its connection (server/direct.py ``on_http_lost``)."""
        self.close(CloseReason.CLIENT_GONE)

    def close(self, reason: CloseReason) -> None:
        """End the connection (its writer sees ``close_reason``)."""
        self._closed(reason)
        self._signal()

    def poke(self) -> None:
        """Wake the writer: a reply to write, or a heartbeat due."""
        self._signal()

    async def wait(self) -> None:
        """Return at the next arrival, reply, close or poke.

        Callers look at everything first (arrivals, replies, ``close_reason``)
        and wait without yielding in between, so nothing can be missed.
        """
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def arrived(self, sub: Subscription, count: int) -> None:
        """The subscriptions' ``Owner`` port: record the arrival, wake the writer."""
        if sub.close_reason is not None:
            self._closed(sub.close_reason)
        elif count and self.subs.get(sub.channel) is sub:
            last = self._arrivals[-1] if self._arrivals else None
            if last is not None and last.sub is sub:
                last.count += count
            else:
                self._arrivals.append(_Arrival(sub, count))
        self._signal()

    def _closed(self, reason: CloseReason) -> None:
        if self.close_reason is None:
            self.close_reason = reason

    def _signal(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Arrival:
    """``count`` items queued on ``sub``, after every earlier arrival of the connection."""

    __slots__ = ("count", "sub")

    def __init__(self, sub: Subscription, count: int) -> None:
        self.sub = sub
        self.count = count
