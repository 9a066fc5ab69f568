"""One client's bounded buffer between the hub and that client's writer.

Policy (habit 6): the hub *offers* each live message and never waits.
Messages queue in ``queue``, at most ``limit`` live ones. An offer that would
exceed the limit closes the subscription with ``CloseReason.SLOW_CONSUMER``:
the buffer is dropped at once (memory stays bounded), the writer sees the
close after what it already took, and its transport tells the client to
resume from its cursor (SSE: the stream ends; WebSocket: close 1013
"lagged"; long-poll never lags, it takes what is queued).

History read on resume is queued ahead and is not counted against the
limit: it is bounded by the history size and read by the subscriber itself.

Fast path: once the transport has attached a ``sink`` (a port: ``Sink`` is
defined here, implemented by the server layer, server/direct.py),
an offer that finds nothing queued and the socket writable goes straight
to the socket (the batch's bytes, framed once for all subscribers): no
queue, no wakeup. Anything queued, a paused socket, or a resume still
loading sends the offer to the queue instead, so order holds; the writer
drains the queue through the same sink when the socket takes writes again.

Duplicates are dropped by id: a message at or before ``last`` (same epoch)
was already given to this client, from history or live.

Several channels on one connection (multiplex.py): each channel keeps its
own Subscription, buffer and policy; an ``owner`` is told of every queued
offer (``Owner.arrived``), so one writer wakes for all of them and drains
them in the order they queued.
"""

from __future__ import annotations

import asyncio
import enum
from fnmatch import fnmatchcase
from typing import Protocol

from gateway.message import GAP, Batch, Cursor, Gap, Item, Message, data_size

__all__ = ["GAP", "Batch", "CloseReason", "Gap", "Item", "Owner", "Sink", "Subscription"]


class Sink(Protocol):
    def ready(self) -> bool:
        """Open and not paused: a write now goes out without queueing in memory."""

    def gone(self) -> bool:
        """The connection is closed, closing or lost: nothing more can be written."""

    def write(self, batch: Batch) -> None:
        """Write the batch's bytes now; only after ``ready()`` said so."""

    def heartbeat(self) -> None:
        """Keep an idle stream alive (SSE: a comment; WebSocket: nothing, uvicorn pings)."""

    async def drain(self) -> None:
        """Return once the transport takes writes again (or the connection is lost)."""


class CloseReason(enum.Enum):
    CLIENT_GONE = "client gone"
    STALLED = "stalled: a write blocked too long"
    SLOW_CONSUMER = "lagged"
    SHUTDOWN = "server shutting down"
    EXPIRED = "token expired"  # its token's exp passed (access.py)
    REVOKED = "revoked"  # its user's access was revoked (access.py)


class Owner(Protocol):
    """The connection a subscription belongs to, when it carries several channels."""

    def arrived(self, sub: Subscription, count: int) -> None:
        """``count`` items were queued on ``sub`` (0: it closed or was poked); must not wait."""


class Subscription:
    """One client's buffer: history first, then live items, in one list.

    The first ``history_left`` items are history and do not count against
    ``limit``. A list, not a deque: an empty deque allocates a block of
    ~700 bytes, an empty list 56, and 10,000 idle clients are common (the
    queue is empty almost always, and ``take`` removes items in slices).
    The wake-up is a bare future made only while the writer waits, for the
    same reason (an ``asyncio.Event`` is ~760 bytes).
    """

    __slots__ = (
        "_poked",
        "_signalled",
        "_waiter",
        "caught_up",
        "channel",
        "close_reason",
        "history_left",
        "last",
        "limit",
        "note",
        "owner",
        "queue",
        "replies_owed",
        "resuming",
        "sending_since",
        "sink",
        "wants_heartbeat",
        "writer",
    )

    def __init__(
        self, channel: str, limit: int, cursor: Cursor | None = None, owner: Owner | None = None
    ) -> None:
        assert limit > 0
        self.channel = channel
        self.limit = limit
        self.queue: list[Item] = []
        self.history_left = 0
        # The newest id given to this client: its cursor, then the last
        # message accepted (a Message has the cursor's epoch and position,
        # so keeping the message itself costs no allocation per offer).
        self.last: Cursor | Message | None = cursor
        # While history is being read, live items queue unfiltered: the
        # dedupe against history happens in ``load_history``.
        self.resuming = True
        self.caught_up = False
        self.close_reason: CloseReason | None = None
        self._signalled = False
        self._waiter: asyncio.Future[None] | None = None
        # Kept by the transport's writer, read by the hub's watchdog: no
        # timer per write. ``sending_since`` is 0.0 while no write is blocked.
        self.writer: asyncio.Task[object] | None = None
        self.sending_since = 0.0
        self.wants_heartbeat = False
        self._poked = False
        self.sink: Sink | None = None  # set by the transport once its stream is open
        self.replies_owed = 0  # answers (WS acks) to write before any message goes direct
        self.owner = owner
        self.note: str | None = None  # what to tell the client of an EXPIRED or REVOKED end

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    def offer_batch(self, batch: Batch) -> bool:
        """Write or queue live items without waiting; False when they overflowed the buffer."""
        if self.close_reason is not None:
            return True
        if self.resuming:
            return self._enqueue(batch.items)
        if not self.caught_up:
            items = batch.items
            fresh = [item for item in items if self._is_new(item)]
            if len(fresh) != len(items):  # some came in the history already: not the shared bytes
                if not fresh:
                    return True
                batch = Batch(fresh)
            # Past the history's end: the hub delivers each id once, so no more checks.
            self.caught_up = any(isinstance(i, Message) and i.epoch is not None for i in fresh)
        sink = self.sink
        if sink is not None and not self.queue and not self.replies_owed and sink.ready():
            sink.write(batch)
            return True
        return self._enqueue(batch.items)

    def _enqueue(self, items: list[Item]) -> bool:
        if len(self.queue) - self.history_left + len(items) > self.limit:
            self.close(CloseReason.SLOW_CONSUMER)
            return False
        self.queue.extend(items)
        self._signal(len(items))
        return True

    def load_history(self, items: list[Item]) -> None:
        """Put history ahead of the live items queued meanwhile, dropping repeats."""
        history = [item for item in items if self._is_new(item)]
        live = [item for item in self.queue if self._is_new(item)]
        if history:
            self.queue = history + live
        elif len(live) != len(self.queue):
            self.queue = live
        self.history_left = len(history)
        self.resuming = False
        if self.queue:
            self._signal()

    def start_after(self, cursor: Cursor) -> None:
        """Begin after ``cursor``: drop what is queued at or before it, and refuse it later.

        How a connection makes "only new" (or ``last=N``) an exact starting point
        that it can tell its client before the first message.
        """
        before = len(self.queue)
        self.last = cursor
        self.queue = [i for i in self.queue if isinstance(i, Message) and self._is_new(i)]
        self.history_left = max(0, self.history_left - (before - len(self.queue)))

    def client_gone(self) -> None:
        """The client closed or reset its connection (server/direct.py ``on_http_lost``)."""
        self.close(CloseReason.CLIENT_GONE)

    def access_ended(
        self, reason: CloseReason, note: str, patterns: tuple[str, ...] | None
    ) -> None:
        """Its token expired, or its user was revoked (of ``patterns``: if they match): close."""
        if patterns is None or any(fnmatchcase(self.channel, p) for p in patterns):
            if self.close_reason is None:
                self.note = note
            self.close(reason)

    def close(self, reason: CloseReason) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self.queue.clear()
            self.history_left = 0
        self._signal()

    def take(self, most: int, budget: int = 0) -> list[Item]:
        """Remove and return up to ``most`` queued items, history first.

        With a ``budget``, stop once the data taken reaches that many
        characters (at least one item is taken).
        """
        queue = self.queue
        count = min(most, len(queue))
        if budget:
            size = 0
            for index in range(count):
                item = queue[index]
                size += data_size(item)
                if size >= budget:
                    count = index + 1
                    break
        taken = queue[:count]
        del queue[:count]
        self.history_left = max(0, self.history_left - len(taken))
        if not queue and self.close_reason is None:
            self._signalled = False
        return taken

    def beat(self, quiet: bool) -> bool:
        """A heartbeat written by the sink, without waking the writer; False when it cannot.

        Only a ``quiet`` stream needs one (messages keep a busy one alive). A
        client found gone meanwhile is closed (its writer wakes and ends).
        """
        sink = self.sink
        if sink is None or self.queue or self.replies_owed:
            return False
        if sink.gone():
            self.close(CloseReason.CLIENT_GONE)
        elif quiet and sink.ready():
            sink.heartbeat()
        return True

    def poke(self) -> None:
        """Wake the writer with nothing queued: its cue for a heartbeat."""
        self._poked = True
        self._signal()

    def poked(self) -> bool:
        """Whether a poke came since the last call (and forget it)."""
        poked, self._poked = self._poked, False
        return poked

    def wait(self) -> asyncio.Future[None]:
        """Done once an item is queued or the subscription is closed.

        A future, not a coroutine around one: an idle stream awaits it for
        its whole life, and the coroutine cost 216 bytes per connection.
        """
        waiter = self._waiter
        if waiter is None or waiter.done():  # (done: cancelled with the task awaiting it)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        if self._signalled:
            self._waiter = None
            waiter.set_result(None)
        return waiter

    def _signal(self, count: int = 0) -> None:
        self._signalled = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self.owner is not None:
            self.owner.arrived(self, count)

    def _is_new(self, item: Item) -> bool:
        if isinstance(item, Gap) or item.epoch is None:
            return True
        last = self.last
        if last is not None and item.epoch == last.epoch and item.position <= last.position:
            return False
        self.last = item
        return True
