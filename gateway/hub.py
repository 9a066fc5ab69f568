"""The hub: channel -> subscriptions, fed by one broker subscription per channel.

* First in subscribes the process to the channel at the broker; the release
  after the last one leaves is delayed by ``LINGER_S`` so that long-poll
  clients, which leave and come back every message, do not churn it.
* Resume is subscribe-then-read: a subscription is registered for live
  messages *before* history is read, and ``Subscription.load_history`` drops
  the duplicates by id. Nothing published in between is missed.
* Each channel remembers the last id it delivered. When the broker link comes
  back after a fault (on a cluster: a shard's link, or a slot that moved),
  every channel it carries is backfilled from history after that
  id (live messages arriving meanwhile wait behind the backfill); when the
  history's epoch changed meanwhile, subscribers are told of the gap.
* Fan-out offers the same ``Message`` object to every subscription: it is
  encoded once per wire, lazily, and never awaited for any client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc

from gateway.brokers.base import Broker, History, Published
from gateway.errors import STOPPING, BrokerUnavailable
from gateway.message import BATCH_BYTES, BATCH_ITEMS, START, Cursor, Message, data_size
from gateway.metrics import Metrics
from gateway.polls import SHUTDOWN, ChannelPolls, Encode, Polls, Waiter
from gateway.ports import ExitSignal, never_asked_to_exit
from gateway.recent import RECENT_SIZE, Recent
from gateway.settings import Settings
from gateway.subscription import GAP, Batch, CloseReason, Item, Owner, Subscription

logger = logging.getLogger(__name__)

LINGER_S = 5.0
CANARY_INTERVAL_S = 1.0
LINK_POLL_S = 0.05  # how often the canary loop looks for a link it has not got yet
READY_WINDOW_S = 3.0
STALL_S = 30.0  # a client write blocked this long: the client is gone or stalled
HISTORY_PAGE_MIN = 100  # messages per history read when paging a deep resume
ANSWERS_KEPT = 1024  # poll answers kept per channel between deliveries
ANSWERS_KEPT_BYTES = 1 << 20  # and their bodies' bytes, per channel: past it, kept anew
CAUGHT_UP = object()  # ``answer_after``: nothing after the cursor yet


class _Channel:
    __slots__ = (
        "answer_bytes",
        "answers",
        "delivered_at",
        "idle_since",
        "last",
        "pending",
        "polls",
        "ready",
        "recent",
        "refill",
        "subs",
    )

    def __init__(self, recent_size: int) -> None:
        self.subs: set[Subscription] = set()
        self.recent = Recent(recent_size)
        self.last: Cursor | None = None
        # Live messages held back while the channel joins or backfills.
        self.pending: list[Message] | None = []
        # A restoration came while the channel joined or backfilled: read history again.
        self.refill = False
        self.ready = asyncio.Event()
        self.idle_since: float | None = None
        self.delivered_at = 0.0
        self.polls: ChannelPolls | None = None  # waiting long-polls (polls.py)
        # Poll answers from ``recent``, by (cursor, limit), until the next delivery.
        self.answers: dict[tuple[Cursor, int], object] = {}
        self.answer_bytes = 0  # the kept answers' bodies (``ANSWERS_KEPT_BYTES``)

    def idle(self) -> bool:
        return not self.subs and not (self.polls is not None and self.polls.waiters)


class Hub:
    def __init__(
        self,
        broker: Broker,
        settings: Settings,
        metrics: Metrics,
        exit_signal: ExitSignal = never_asked_to_exit,
    ) -> None:
        self.broker = broker
        self._exit_signal = exit_signal  # the server was asked to stop (server/shutdown.py)
        self.settings = settings
        self.metrics = metrics
        self.channels: dict[str, _Channel] = {}
        self.link_ok_at = 0.0
        self.closing = False
        self._reads: dict[tuple[str, Cursor, int], asyncio.Future[History]] = {}
        self._tasks: anyio.abc.TaskGroup | None = None
        self.polls = Polls()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Hub]:
        """The hub's lifetime: broker started, background loops owned here."""
        await self.broker.start(self)
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                tasks.start_soon(self._canary_loop)
                tasks.start_soon(self._reaper_loop)
                tasks.start_soon(self._heartbeat_loop)
                tasks.start_soon(self._exit_watcher)
                tasks.start_soon(self.polls.run)
                yield self
                tasks.cancel_scope.cancel()
        finally:
            self._tasks = None
            self.close_all(CloseReason.SHUTDOWN)
            await self.broker.stop()

    @property
    def ready(self) -> bool:
        return self.broker.connected and time.monotonic() - self.link_ok_at < READY_WINDOW_S

    def check_broker(self) -> None:
        """Refuse up front (503) what could not be served while the broker is away."""
        if not self.broker.connected:
            raise BrokerUnavailable("the broker is unavailable; retry shortly")

    def subscribe(
        self,
        channel: str,
        cursor: Cursor | None = None,
        last: int | None = None,
        most: int | None = None,
        owner: Owner | None = None,
    ) -> Subscribed:
        """A subscription to live messages, preceded by the history asked for (``async with``).

        All history after ``cursor`` is read, however much the broker holds,
        unless the caller takes at ``most`` that many items (a poll): then
        one page of that size is read and the client asks again for more.
        ``owner``: the connection that carries this channel among others
        (multiplex.py), told of every item queued here.
        """
        return Subscribed(self, channel, cursor, last, most, owner)

    async def publish(self, channel: str, event: str, data: str) -> Message:
        message = await self.broker.publish(channel, event, data)
        self.metrics.published.inc()
        return message

    def publish_soon(self, channel: str, event: str, data: str, done: Published) -> None:
        """``publish``, its outcome (the message, or the exception) handed to ``done`` once.

        For a caller with no task of its own (a publish answered inside the
        HTTP protocol, server/publishing.py): the Redis and embedded brokers
        take the call as it is (``publish_soon``), any other broker's
        ``publish`` runs in a task the hub owns.
        """

        def settled(outcome: Message | BaseException) -> None:
            if isinstance(outcome, Message):
                self.metrics.published.inc()
            done(outcome)

        soon = getattr(self.broker, "publish_soon", None)
        if soon is not None:
            soon(channel, event, data, settled)
            return
        if self._tasks is None:
            settled(BrokerUnavailable(STOPPING))
            return
        self._tasks.start_soon(self._publish_then, channel, event, data, settled)

    async def _publish_then(self, channel: str, event: str, data: str, done: Published) -> None:
        try:
            message = await self.broker.publish(channel, event, data)
        except asyncio.CancelledError:
            done(BrokerUnavailable(STOPPING))
            raise
        except Exception as exc:
            done(exc)
        else:
            done(message)

    def close_all(self, reason: CloseReason) -> None:
        for state in self.channels.values():
            for sub in state.subs:
                sub.close(reason)
            if state.polls is not None and reason is CloseReason.SHUTDOWN:
                state.polls.close_all(SHUTDOWN)

    def park(self, channel: str, waiter: Waiter, timeout_s: float, encode: Encode) -> bool:
        """Register a caught-up poll as a waiter (polls.py); False when a subscription must.

        Only on a joined channel with nothing pending, whose newest delivered
        id is the waiter's start (``waiting`` said so, or ``newest``).
        """
        state = self.channels.get(channel)
        if state is None or state.pending is not None or self.closing:
            return False
        start, last = waiter.start, state.last
        if start is not last and start != (last if last is not None else START):
            return False  # ahead of the live link (a cursor read from history): see answer_after
        polls = state.polls
        if polls is None:
            polls = state.polls = ChannelPolls(
                channel, encode, lambda: self._idle(state), self.metrics.delivered.inc
            )
        state.idle_since = None
        self.polls.add(waiter, polls, timeout_s)
        return True

    def answer_after(
        self, channel: str, cursor: Cursor, limit: int, encode: Encode
    ) -> object | None:
        """A poll's answer from memory, encoded once for every poller at ``cursor``.

        ``CAUGHT_UP`` when nothing follows the cursor yet, None when this
        process cannot tell (``waiting``). A cursor past the newest id this
        process delivered (a client's earlier poll read history, which may
        be ahead of the live link) is not caught up: a waiter parked there
        would be answered the messages it had already, once they arrive.
        """
        state = self.channels.get(channel)
        if state is None or state.pending is not None:
            return None
        if cursor is state.last or cursor == state.last:
            return CAUGHT_UP  # (the common case: every poller back at the newest message)
        key = (cursor, limit)
        answer = state.answers.get(key)
        if answer is None:
            messages = state.recent.after(cursor, limit)
            if not messages:
                return CAUGHT_UP if messages is not None and cursor == state.last else None
            answer = encode(channel, list(messages), cursor)
            size = len(answer.body)
            if len(state.answers) >= ANSWERS_KEPT or state.answer_bytes + size > ANSWERS_KEPT_BYTES:
                state.answers.clear()
                state.answer_bytes = 0
            if size <= ANSWERS_KEPT_BYTES // 4:  # (a bigger one is built for each poll)
                state.answers[key] = answer
                state.answer_bytes += size
        return answer

    def newest(self, channel: str) -> Cursor | None:
        """The newest id delivered on a joined channel with nothing pending; None if unknown."""
        state = self.channels.get(channel)
        if state is None or state.pending is not None:
            return None
        return state.last if state.last is not None else START

    # -- broker listener ------------------------------------------------

    def on_messages(self, messages: list[Message]) -> None:
        """Live messages, as many as the broker read at once, in order."""
        if len(messages) == 1:
            self._arrived(messages[0].channel, messages)
            return
        by_channel: dict[str, list[Message]] = {}
        for message in messages:
            by_channel.setdefault(message.channel, []).append(message)
        for channel, batch in by_channel.items():
            self._arrived(channel, batch)

    def on_link_restored(self) -> None:
        self.on_channels_restored(list(self.channels))

    def on_channels_restored(self, channels: list[str]) -> None:
        self.metrics.broker_reconnects.inc()
        if self._tasks is None:
            return
        for channel in channels:
            state = self.channels.get(channel)
            if state is None:
                continue
            if state.pending is not None:  # joining or backfilling: its read may predate this gap
                state.refill = True
                continue
            state.pending = []
            self._tasks.start_soon(self._backfill, channel, state)

    # -- inside -----------------------------------------------------------

    async def _history_for(
        self, channel: str, cursor: Cursor | None, last: int | None, most: int | None
    ) -> list[Item]:
        if cursor is not None:
            size = self.settings.history_size
            recent = self.waiting(channel, cursor, most or size)
            if recent is not None:
                return list(recent)
            if most is not None:  # one page: the caller takes no more (a poll)
                history = await self._read_history(channel, cursor, most)
                return [GAP, *history.messages] if history.gap else list(history.messages)
            state = self.channels.get(channel)
            return await self._read_all(channel, cursor, state.last if state else None)
        if last:
            return list(await self.broker.tail(channel, last))
        return []

    async def _read_all(self, channel: str, cursor: Cursor, live: Cursor | None) -> list[Item]:
        """Everything history holds after ``cursor``, page by page, up to ``live``.

        A Redis stream trimmed with ``MAXLEN ~`` holds more than the history
        size: one page of that size would deliver a part and then jump to
        live messages, silently. ``live`` is the newest id the channel had
        delivered when the subscription joined: what comes after it reaches
        the subscription live, so paging stops there. A page that reports a
        gap after the first (trimmed while we read) is a real loss: said.
        """
        page = max(self.settings.history_size, HISTORY_PAGE_MIN)
        items: list[Item] = []
        while True:
            history = await self._read_history(channel, cursor, page)
            if history.gap:
                items.append(GAP)
            items.extend(history.messages)
            if len(history.messages) < page or not history.messages:
                return items
            newest = history.messages[-1]
            cursor = newest.cursor or cursor
            if live is not None and live.epoch == newest.epoch and newest.position >= live.position:
                return items

    async def _read_history(self, channel: str, cursor: Cursor, limit: int) -> History:
        """One broker read for any number of identical requests in flight."""
        key = (channel, cursor, limit)
        pending = self._reads.get(key)
        if pending is None:
            pending = self._reads[key] = asyncio.ensure_future(
                self.broker.history(channel, cursor, limit)
            )
            pending.add_done_callback(lambda done: self._read_done(key, done))
        return await asyncio.shield(pending)

    def _read_done(self, key: tuple[str, Cursor, int], done: asyncio.Future[History]) -> None:
        self._reads.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have left

    def waiting(self, channel: str, cursor: Cursor, limit: int) -> list[Message] | None:
        """Messages after ``cursor`` this process surely holds (no broker read, no join)."""
        state = self.channels.get(channel)
        if state is None or state.pending is not None:
            return None
        return state.recent.after(cursor, limit)

    def latest(self, channel: str) -> Cursor:
        """The newest id this process delivered on a joined channel."""
        state = self.channels.get(channel)
        return state.last if state is not None and state.last is not None else START

    async def _join(self, channel: str, sub: Subscription) -> None:
        state = self.channels.get(channel)
        if state is None:
            state = self.channels[channel] = _Channel(min(RECENT_SIZE, self.settings.history_size))
            state.subs.add(sub)
            try:
                await self.broker.subscribe(channel)
                state.last = await self.broker.latest(channel)
                state.recent.reset(state.last)
            except BaseException:
                del self.channels[channel]
                state.ready.set()
                raise
            self._release(channel, state)
            state.ready.set()
        else:
            state.subs.add(sub)
            state.idle_since = None
            await state.ready.wait()
            if self.channels.get(channel) is not state:
                raise BrokerUnavailable("the broker could not subscribe this channel")

    def _arrived(self, channel: str, messages: list[Message]) -> None:
        state = self.channels.get(channel)
        if state is None:
            return
        if state.pending is not None:
            state.pending.extend(messages)
            return
        self._deliver(state, messages)

    def _leave(self, channel: str, sub: Subscription) -> None:
        state = self.channels.get(channel)
        if state is not None:
            state.subs.discard(sub)
            self._idle(state)

    def _idle(self, state: _Channel) -> None:
        if state.idle():
            state.idle_since = time.monotonic()

    def _deliver(self, state: _Channel, messages: list[Message]) -> None:
        """Drop what the channel delivered already, say a new epoch as a gap, fan out the rest."""
        items: list[Item] = []
        delivered = 0
        for message in messages:
            if message.epoch is not None:
                last = state.last
                if last is not None and last.epoch == message.epoch:
                    if message.position <= last.position:
                        continue
                elif last is not None and last.epoch is not None:
                    items.append(GAP)
                state.last = message.cursor
                state.recent.append(message)
                if message.published_at:
                    self.metrics.latency.observe(max(0.0, time.time() - message.published_at))
            items.append(message)
            delivered += 1
        if items:
            state.delivered_at = time.monotonic()
            if state.last is not None:
                state.last = state.last.shared()  # (identity for the pollers: answer_after, park)
        for batch in _batches(items):
            self._fan_out(state, batch)
        self.metrics.delivered.inc(delivered * len(state.subs))

    def _fan_out(self, state: _Channel, batch: Batch) -> None:
        if state.answers:
            state.answers.clear()
            state.answer_bytes = 0
        if state.polls is not None:
            state.polls.arrived(batch.items)
        dropped = [sub for sub in state.subs if not sub.offer_batch(batch)]
        for sub in dropped:
            state.subs.discard(sub)
            self.metrics.slow_consumer_drops.inc()

    def _flush_pending(self, state: _Channel) -> None:
        pending, state.pending = state.pending or [], None
        self._deliver(state, pending)

    def _release(self, channel: str, state: _Channel) -> None:
        """Let live messages through, unless a restoration came meanwhile: backfill first."""
        if state.refill and self._tasks is not None:
            self._tasks.start_soon(self._backfill, channel, state)
        else:
            self._flush_pending(state)

    async def _backfill(self, channel: str, state: _Channel) -> None:
        """After a broker fault: every message history holds after the last one delivered.

        Live messages wait in ``pending`` meanwhile. A restoration heard
        during the read (another shard's link, the slot moved again) means
        messages this read may not hold: history is read again after it.
        """
        state.refill = False
        try:
            items = await self._read_all(channel, state.last or START, None)
        except Exception:
            logger.warning("backfill of %s failed; waiting for the next reconnect", channel)
            self._flush_pending(state)
            return
        self._deliver_history(state, items)
        self._release(channel, state)

    def _deliver_history(self, state: _Channel, items: list[Item]) -> None:
        """A backfill's items: a gap is said once, then the new epoch's messages follow."""
        segment: list[Message] = []
        for item in items:
            if isinstance(item, Message):
                segment.append(item)
                continue
            self._deliver(state, segment)
            segment = []
            self._fan_out(state, Batch([GAP]))
            state.last = None  # said once: the new epoch's messages follow
            state.recent.reset(None)
        self._deliver(state, segment)

    async def _exit_watcher(self) -> None:
        await self._exit_signal(self._exit_now)
        self._exit_now()

    def _exit_now(self) -> None:
        """Tell every client to reconnect elsewhere (once: shutdown.py may call it early)."""
        if self.closing:
            return
        logger.info("exit requested: telling every client to reconnect elsewhere")
        self.closing = True
        self.close_all(CloseReason.SHUTDOWN)

    async def _canary_loop(self) -> None:
        while True:
            if not self.broker.connected:
                # No link yet (starting, reconnecting): a canary sent now is lost, and
                # its round-trip's timeout plus a pause kept a new node unready ~3 s.
                await anyio.sleep(LINK_POLL_S)
                continue
            try:
                with anyio.fail_after(CANARY_INTERVAL_S * 2):
                    await self.broker.check_link()
                self.link_ok_at = time.monotonic()
            except Exception:
                logger.debug("canary round-trip failed", exc_info=True)
            await anyio.sleep(CANARY_INTERVAL_S)

    async def _heartbeat_loop(self) -> None:
        """Keep quiet streams alive and cut stalled writers, for every client in one loop.

        No timer per client per write. It ticks every half heartbeat and
        beats the channels that sent nothing for that long, so no stream is
        silent for much more than ``GATEWAY_HEARTBEAT`` and a busy one gets
        no heartbeat at all. A subscription on the fast path gets its
        heartbeat from its sink, without waking its writer.
        """
        tick = self.settings.heartbeat_s / 2
        while True:
            await anyio.sleep(tick)
            now = time.monotonic()
            stalled_before = now - STALL_S
            for state in list(self.channels.values()):
                quiet = now - state.delivered_at >= tick
                for sub in list(state.subs):
                    if sub.sending_since and sub.sending_since < stalled_before:
                        sub.close(CloseReason.STALLED)
                        if sub.writer is not None:
                            sub.writer.cancel()
                    elif sub.wants_heartbeat and not sub.beat(quiet) and quiet:
                        sub.poke()

    async def _reaper_loop(self) -> None:
        while True:
            await anyio.sleep(LINGER_S / 2)
            now = time.monotonic()
            idle = [
                name
                for name, state in self.channels.items()
                if state.idle() and state.idle_since and now - state.idle_since > LINGER_S
            ]
            for name in idle:
                del self.channels[name]
                try:
                    await self.broker.unsubscribe(name)
                except Exception:
                    logger.warning("unsubscribe of %s failed", name, exc_info=True)


class Subscribed:
    """``Hub.subscribe``'s context: joined and history loaded on entry, left on exit.

    A class, not an ``@asynccontextmanager``: every open stream holds it
    for its whole life, and the generator, its frame and its wrapper cost
    about 500 bytes per connection where this costs ~70.
    """

    __slots__ = ("_cursor", "_hub", "_last", "_most", "_sub")

    def __init__(
        self,
        hub: Hub,
        channel: str,
        cursor: Cursor | None,
        last: int | None,
        most: int | None,
        owner: Owner | None,
    ) -> None:
        self._hub = hub
        self._sub = Subscription(channel, hub.settings.queue_size, cursor, owner)
        self._cursor = cursor
        self._last = last
        self._most = most

    async def __aenter__(self) -> Subscription:
        hub, sub = self._hub, self._sub
        if hub.closing:
            sub.close(CloseReason.SHUTDOWN)
        await hub._join(sub.channel, sub)
        try:
            history = await hub._history_for(sub.channel, self._cursor, self._last, self._most)
            sub.load_history(history)
        except BaseException:
            hub._leave(sub.channel, sub)
            raise
        return sub

    async def __aexit__(self, *exc_info: object) -> None:
        self._hub._leave(self._sub.channel, self._sub)


def _batches(items: list[Item]) -> Iterator[Batch]:
    """``items`` cut into batches of at most ``BATCH_ITEMS`` items and about ``BATCH_BYTES``.

    One write per subscriber whose socket takes a batch at once; a backfill
    of a whole history never lands in one write.
    """
    if len(items) == 1:
        yield Batch(items)
        return
    start = size = 0
    for end, item in enumerate(items, 1):
        size += data_size(item)
        if end - start >= BATCH_ITEMS or size >= BATCH_BYTES or end == len(items):
            yield Batch(items[start:end])
            start, size = end, 0
