"""Waiting long-polls: registered waiters, answers built once, one timer loop for all timeouts.

Why not a ``Subscription`` per waiting poll (what ``/poll`` used first): a
poll lives for one message. Per poll that was a subscription joined and
left, an async context manager, a cancel scope with its own timer
(``anyio.move_on_after``) and a task wakeup to build a JSON answer of its
own; under 5,000 clients at 10 msg/s the core went to that (py-spy,
bench/README.md). Here a poll that finds nothing to answer yet is a
``Waiter`` on its channel:

* The hub hands every live item of the channel to ``ChannelPolls.arrived``,
  which appends it to one list (``batch``) and, once per channel, schedules
  a flush ``GATHER_S`` later (a burst leaves in one answer). A waiter
  remembers where that list ended when it registered (``mark``): its
  answer is ``batch[mark:mark + limit]``, exactly the live items a
  subscription registered at that moment would have queued (gaps and
  id-less messages included). Waiters with the same ``(mark, limit,
  start)`` get the same answer object, encoded once by the transport's
  ``encode`` (headers included, transports/longpoll.py) and written by each
  waiter's ``write`` straight to its socket when that is safe.
* Timeouts are one wheel (``Polls``): slots of ``TICK_S``, one loop; a
  waiter is never answered before its timeout and at most a tick after.
* A waiter whose client leaves (``cancel``) is dropped from both at once.

A poll registers only when the hub surely knows it is caught up (the
channel joined, nothing pending, its cursor the newest the process
delivered, ``Hub.waiting``); every other case goes through a subscription
as before.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.message import Cursor, Item

GATHER_S = 0.005  # after the first arrival, let a burst land so it leaves in one answer
TICK_S = 0.05  # timeout granularity: never early, at most this late


class Encoded(Protocol):
    """The transport's encoding of an answer (body and headers), built once per group."""

    body: bytes  # what it weighs (``Hub.answer_after`` keeps answers by bytes)


Encode = Callable[[str, list[Item], Cursor], Encoded]
ANSWERED = "answered"
TIMED_OUT = "timed out"
CLIENT_GONE = "client gone"
SHUTDOWN = "server shutting down"


class Releasable(Protocol):
    def drop(self) -> None:
        """The poll ended: no more need to end it (``access.Grant``)."""


class Writer(Protocol):
    def write(self, answer: object) -> bool:
        """The answer on the client's socket now, without waiting; False if it cannot be."""


class Ended(Protocol):
    reason: str  # why it ended: ANSWERED, TIMED_OUT, CLIENT_GONE or SHUTDOWN


class Client(Writer, Protocol):
    """Whoever waits for a waiter's answer: a request's task, or the HTTP protocol (protocol.py)."""

    def settled(self, waiter: Ended, answer: object | None) -> None:
        """Told once that the waiter ended, with its answer (None: released, nothing to write)."""


class Waiter:
    """One waiting poll; its ``client`` writes the answer and is told once that it ended.

    A poll served through ASGI has a task that awaits a future
    (``TaskClient``); one served by the gateway's own HTTP protocol has no
    task at all (protocol.py). The client is an object, not two callables:
    a bound method is one more object for the garbage collector per poll.
    """

    __slots__ = (
        "client",
        "done",
        "grant",
        "limit",
        "mark",
        "polls",
        "raw",
        "reason",
        "start",
        "timeouts",
        "written",
    )

    def __init__(
        self, start: Cursor, limit: int, client: Client | None, *, raw: bool = False
    ) -> None:
        self.start = start
        self.limit = limit
        self.client = client
        self.raw = raw  # its answer is the list of items, not an encoded answer (poll_multi.py)
        self.written = False
        self.done = False
        self.mark = 0
        self.reason = TIMED_OUT
        self.polls: ChannelPolls | None = None  # its channel's waiters
        self.timeouts: dict[Waiter, None] | None = None  # its slot of the wheel (``Polls``)
        self.grant: Releasable | None = None  # its token's watch (access.py), if any

    def finish(self, answer: object | None, reason: str) -> None:
        """Answer (or, with None, just release) the poll; later calls do nothing."""
        if self.done:
            return
        if self.polls is not None:
            self.polls.discard(self)
        self.ended(answer, reason)

    def ended(self, answer: object | None, reason: str) -> None:
        """``finish`` once out of its channel's set (``ChannelPolls.flush`` takes them all)."""
        self.done = True
        self.reason = reason
        if self.timeouts is not None:
            self.timeouts.pop(self, None)  # (an emptied slot goes when its time comes)
        grant = self.grant
        if grant is not None:
            self.grant = None
            grant.drop()
        client, self.client = self.client, None  # (it holds the request)
        if client is not None:
            if answer is not None:
                self.written = client.write(answer)
            client.settled(self, answer)

    def cancel(self) -> None:
        """The client left: release the poll, write nothing."""
        self.finish(None, CLIENT_GONE)


class TaskClient:
    """A poll's task, awaiting ``future``; ``write`` is the direct write, if any (else False)."""

    __slots__ = ("future", "writer")

    def __init__(self, writer: Writer | None) -> None:
        self.writer = writer
        self.future: asyncio.Future[object | None] = asyncio.get_running_loop().create_future()

    def write(self, answer: object) -> bool:
        return self.writer is not None and self.writer.write(answer)

    def settled(self, waiter: Ended, answer: object | None) -> None:
        if not self.future.done():  # (cancelled with its task)
            self.future.set_result(answer)


class ChannelPolls:
    """The waiters of one channel and the live items since its last flush."""

    __slots__ = ("_flush", "batch", "count", "encode", "name", "on_idle", "waiters")

    def __init__(
        self,
        name: str,
        encode: Encode,
        on_idle: Callable[[], None],
        count: Callable[[int], None],
    ) -> None:
        self.name = name
        self.encode = encode
        self.on_idle = on_idle
        self.count = count  # messages handed out (the delivered counter)
        self.waiters: dict[Waiter, None] = {}  # an ordered set: O(1) removal
        self.batch: list[Item] = []
        self._flush: asyncio.TimerHandle | None = None

    def add(self, waiter: Waiter) -> None:
        waiter.mark = len(self.batch)
        waiter.polls = self
        self.waiters[waiter] = None

    def discard(self, waiter: Waiter) -> None:
        if self.waiters.pop(waiter, 0) is None and not self.waiters:
            self.on_idle()

    def arrived(self, items: list[Item]) -> None:
        """Live items of the channel, in order; answered to the waiters at the next flush."""
        if not self.waiters:
            return
        self.batch.extend(items)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(GATHER_S, self.flush)

    def flush(self) -> None:
        """Answer every waiter that has items."""
        self._flush = None
        batch, self.batch = self.batch, []
        end = len(batch)
        answers: dict[Any, object] = {}
        handed = 0
        # Out of the channel all at once, not one ``discard`` each; those
        # that wait on (and any that comes while this runs) go in the new set.
        waiters, self.waiters = self.waiters, {}
        for waiter in waiters:
            if waiter.done:
                continue  # (released meanwhile: a several-channel poll's other waiter)
            mark, limit = waiter.mark, waiter.limit
            if mark >= end:
                waiter.mark = 0  # registered after the last item: waits on
                self.waiters[waiter] = None
                continue
            handed += min(end - mark, limit)
            waiter.ended(self.answer(waiter, batch, answers), ANSWERED)
        if handed:
            self.count(handed)
        if waiters and not self.waiters:
            self.on_idle()

    def answer(self, waiter: Waiter, batch: list[Item], answers: dict[Any, object]) -> object:
        """The waiter's answer from ``batch`` (its items from its mark, an empty one for none):
        encoded once for every waiter at the same place, or the items themselves (``raw``)."""
        if waiter.raw:
            return batch[waiter.mark : waiter.mark + waiter.limit]
        key = (waiter.mark, waiter.limit, waiter.start) if batch else waiter.start
        answer = answers.get(key)
        if answer is None:
            items = batch[waiter.mark : waiter.mark + waiter.limit]
            answer = answers[key] = self.encode(self.name, items, waiter.start)
        return answer

    def close_all(self, reason: str) -> None:
        """Answer every waiter now with nothing new (its own cursor): shutdown."""
        answers: dict[Any, object] = {}
        for waiter in list(self.waiters):
            waiter.finish(self.answer(waiter, [], answers), reason)


class Polls:
    """Every waiting poll's timeout, in slots of ``TICK_S``: one loop for all of them."""

    def __init__(self) -> None:
        self._slots: dict[int, dict[Waiter, None]] = {}
        self._done = math.floor(time.monotonic() / TICK_S)

    def add(self, waiter: Waiter, channel: ChannelPolls, timeout_s: float) -> None:
        channel.add(waiter)
        slot = int((time.monotonic() + timeout_s) / TICK_S) + 1  # (never early)
        if slot <= self._done:
            slot = self._done + 1
        waiters = self._slots.get(slot)
        if waiters is None:
            waiters = self._slots[slot] = {}
        waiters[waiter] = None
        waiter.timeouts = waiters

    def expire(self, now: float) -> None:
        """Answer every waiter whose timeout passed with nothing new."""
        due = math.floor(now / TICK_S)
        answers: dict[ChannelPolls, dict[Any, object]] = {}
        for key in range(self._done + 1, due + 1):
            for waiter in list(self._slots.pop(key, ())):
                channel = waiter.polls
                assert channel is not None
                empty = channel.answer(waiter, [], answers.setdefault(channel, {}))
                waiter.finish(empty, TIMED_OUT)
        self._done = max(self._done, due)

    async def run(self) -> None:
        """The one timer loop."""
        while True:
            await asyncio.sleep(TICK_S)
            if self._slots:
                self.expire(time.monotonic())
            else:
                self._done = math.floor(time.monotonic() / TICK_S)
