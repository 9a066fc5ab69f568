"""Presence: who is on a channel, across every node, and who comes and goes.

A member is one connection on one channel, named by its token's ``sub``
(``?user=`` on an open gateway); a user's several connections (tabs,
nodes) are one user. This module is one node's part: it counts its own
connections per channel and user, tells the store (presence_wire.PresenceStore,
in memory or on Redis) what changed, and hands the joins and leaves the
store announces to the connections that asked for them.

Decisions:

* **A tick, not a call per connection.** Arrivals and departures only mark
  a (channel, user) dirty; every ``TICK_S`` the node sends each channel's
  changed counts in one store call. 10,000 clients arriving at once cost a
  few hundred calls, not 10,000, and a user who leaves and comes back
  within the tick costs nothing at all.
* **A departure is final after ``LEAVE_GRACE_S``.** A connection that drops
  and comes back (a transport switch, a network blip, a reconnect storm
  after a node restarts, a tab handing the shared connection to another)
  is no leave and join for everyone: the user stays a member meanwhile.
  Only an anonymous connection (no ``sub``, no ``?user=``) is no member.
* **A storm lengthens the grace.** When more than ``STORM_DEPARTURES`` users
  of one channel leave this node within ``LEAVE_GRACE_S``, departures get
  ``STORM_GRACE_S`` instead: a mass reconnect of thousands takes longer than
  2 s to come back (measured: 5,000 listening members took 6 s), and each
  leave announced meanwhile would go to every listener, N leaves x N
  listeners, slowing the reconnect further. The users who left just before
  the storm was noticed get the longer grace too. A real leave during a
  storm is announced up to ``STORM_GRACE_S`` late.
* **Long-poll members hold a lease**: a poll's end keeps its user a member
  for ``GATEWAY_POLL_TIMEOUT`` + ``POLL_EXTRA_S``, renewed by the next poll
  (which then changes nothing in the store).
* **Events are batched per channel per tick**: the store announces one
  payload per call, which becomes one ``Batch`` (one write) per listener.
  Past ``GATEWAY_PRESENCE_MAX_MEMBERS`` users a channel's events are not
  sent (its snapshot is counts only): a huge room's joins would multiply
  by its listeners (N joins x N listeners).
* **Leases and sweeps**: every ``LEASE_RENEW_S`` the node sweeps each
  channel it holds members on or listens to: its own lease is renewed,
  dead nodes' members dropped. A sweep that finds our lease gone (Redis
  wiped) makes the node re-assert every member it holds there.
* **SIGTERM** removes this node's members at once (no grace): its clients
  are told to reconnect elsewhere, where they join again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager

import anyio

from gateway.message import Batch
from gateway.ports import ExitSignal, never_asked_to_exit
from gateway.presence_visit import ANONYMOUS, Identity, Visit, visit_of
from gateway.presence_wire import JOIN, LEAVE, Change, PresenceEvent, PresenceStore, Snapshot
from gateway.settings import Settings
from gateway.subscription import Subscription

logger = logging.getLogger(__name__)

__all__ = ["ANONYMOUS", "Identity", "Presence", "Visit", "visit_of"]

TICK_S = 0.05
LEAVE_GRACE_S = 2.0
STORM_DEPARTURES = 100  # users leaving one channel within LEAVE_GRACE_S: a storm
STORM_GRACE_S = 12.0
POLL_EXTRA_S = 10.0
LEASE_RENEW_S = 3.0
SWEEPS_AT_ONCE = 64
STOP_TIMEOUT_S = 3.0


class _Local:
    """One user on one channel, on this node."""

    __slots__ = ("connections", "info", "sent", "until")

    def __init__(self, info: str) -> None:
        self.info = info
        self.connections = 0
        self.until = 0.0  # still a member until then, with no connection (grace, poll lease)
        self.sent = 0  # the count the store holds for this node

    def wanted(self, now: float) -> int:
        if self.connections:
            return self.connections
        return 1 if now < self.until else 0


class Presence:
    def __init__(
        self,
        store: PresenceStore,
        settings: Settings,
        exit_signal: ExitSignal = never_asked_to_exit,
    ) -> None:
        self.store = store
        self._exit_signal = exit_signal  # the server was asked to stop (server/shutdown.py)
        self.max_members = settings.presence_max_members
        self.poll_hold_s = settings.poll_timeout_s + POLL_EXTRA_S
        self.users: dict[str, dict[str, _Local]] = {}
        self.listeners: dict[str, set[Subscription]] = {}
        self.closing = False
        self.clock: Callable[[], float] = time.monotonic  # a test may turn it
        self.events_sent = 0  # events offered to listeners (bench/)
        self._dirty: set[tuple[str, str]] = set()
        self._expiring: list[tuple[float, str, str]] = []  # (until, channel, user), a heap
        self._departures: dict[str, tuple[float, int]] = {}  # channel -> (window start, count)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Presence]:
        await self.store.start(self._announced)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._flush_loop)
                tasks.start_soon(self._lease_loop)
                tasks.start_soon(self._exit_watcher)
                yield self
                tasks.cancel_scope.cancel()
        finally:
            with anyio.move_on_after(STOP_TIMEOUT_S, shield=True):
                await self.leave_all()
            await self.store.stop()

    # -- connections --------------------------------------------------------

    def attend(self, visit: Visit, sub: Subscription, *, hold: bool = False) -> Attendance:
        """``sub``'s connection as a member (and listener, if asked) for a ``with`` block.

        An object with slots, not a generator: a stream holds it for its
        whole life, and an idle SSE connection's every frame counts
        (bench/, e). An anonymous reader that does not listen gets a shared
        one that does nothing.
        """
        if visit.identity is None and not visit.listen:
            return NOTHING
        return _Attendance(self, visit, sub, hold)

    attending = attend  # the same object serves ``async with``

    def polled(self, visit: Visit, channels: list[str]) -> None:
        """A poll answered at once, from memory: its user a member for the poll lease from now."""
        identity = visit.identity
        if identity is None or self.closing:
            return
        for channel in channels:
            self._arrive(channel, identity)
            self._depart(channel, identity.user, self.poll_hold_s)

    def attender(
        self, visit: Visit, listening: Collection[str], *, hold: bool = False
    ) -> Callable[[Subscription], Attendance] | None:
        """``attend`` for each channel of a several-channel connection (``Multiplex.attend``).

        ``listening``: the channels whose events the connection asked for (a
        set it may still grow). None when there is nothing to do.
        """
        if visit.identity is None and isinstance(listening, tuple) and not listening:
            return None

        def attend(sub: Subscription) -> Attendance:
            return self.attend(Visit(visit.identity, sub.channel in listening), sub, hold=hold)

        return attend

    async def snapshot(self, channel: str) -> Snapshot:
        return await self.store.snapshot(channel, self.max_members)

    def _entered(self, visit: Visit, sub: Subscription) -> bool:
        """Listen and arrive; whether the connection is a member (not while closing)."""
        if visit.listen:
            self.listeners.setdefault(sub.channel, set()).add(sub)
        if visit.identity is None or self.closing:
            return False
        self._arrive(sub.channel, visit.identity)
        return True

    def _left(self, visit: Visit, sub: Subscription, member: bool, hold: bool) -> None:
        if visit.listen:
            self._unlisten(sub.channel, sub)
        if member and visit.identity is not None:
            keep_s = self.poll_hold_s if hold else self._grace(sub.channel)
            self._depart(sub.channel, visit.identity.user, keep_s)

    def _arrive(self, channel: str, identity: Identity) -> None:
        users = self.users.setdefault(channel, {})
        local = users.get(identity.user)
        if local is None:
            local = users[identity.user] = _Local(identity.info)
        local.info = identity.info
        local.connections += 1
        self._dirty.add((channel, identity.user))

    def _depart(self, channel: str, user: str, keep_s: float) -> None:
        local = self.users.get(channel, {}).get(user)
        if local is None:
            return
        local.connections -= 1
        if local.connections == 0 and not self.closing:
            local.until = max(local.until, self.clock() + keep_s)
            heapq.heappush(self._expiring, (local.until, channel, user))
        self._dirty.add((channel, user))

    def _grace(self, channel: str) -> float:
        """How long a departure stays a member: longer while the channel sees a storm of them."""
        now = self.clock()
        start, count = self._departures.get(channel, (now, 0))
        if now - start > LEAVE_GRACE_S:
            start, count = now, 0
        self._departures[channel] = (start, count + 1)
        if count == STORM_DEPARTURES:
            self._storm(channel, now + STORM_GRACE_S)
        return STORM_GRACE_S if count >= STORM_DEPARTURES else LEAVE_GRACE_S

    def _storm(self, channel: str, until: float) -> None:
        """A storm began: the users who left just before it wait as long as those after."""
        for user, local in self.users.get(channel, {}).items():
            if local.connections == 0 and local.until > self.clock():
                local.until = max(local.until, until)
                heapq.heappush(self._expiring, (local.until, channel, user))

    def _unlisten(self, channel: str, sub: Subscription) -> None:
        subs = self.listeners.get(channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.listeners[channel]

    # -- the store ------------------------------------------------------------

    async def flush(self) -> None:
        """Send every changed count, one store call per channel."""
        now = self.clock()
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            _, channel, user = heapq.heappop(expiring)
            self._dirty.add((channel, user))
        changes: dict[str, list[Change]] = {}
        for channel, user in self._dirty:
            local = self.users.get(channel, {}).get(user)
            if local is None:
                continue
            wanted = 0 if self.closing else local.wanted(now)
            if wanted != local.sent:
                changes.setdefault(channel, []).append((user, wanted, local.info))
        self._dirty = set()
        for channel in [c for c, (start, _) in self._departures.items() if now - start > 60]:
            del self._departures[channel]  # quiet for a minute: forget the window
        for channel, batch in changes.items():
            await self._send(channel, batch)

    async def _send(self, channel: str, changes: list[Change]) -> None:
        try:
            await self.store.update(channel, changes)
        except Exception:
            logger.debug("presence update of %s failed; retried next tick", channel)
            self._dirty.update((channel, user) for user, _, _ in changes)
            return
        users = self.users.get(channel, {})
        for user, count, _ in changes:
            local = users.get(user)
            if local is None:
                continue
            local.sent = count
            if count == 0 and local.connections == 0:
                del users[user]
        if not users:
            self.users.pop(channel, None)

    async def leave_all(self) -> None:
        """This node's members gone from the store at once (SIGTERM, shutdown)."""
        self.closing = True
        for channel, users in self.users.items():
            self._dirty.update((channel, user) for user in users)
        await self.flush()

    async def sweep(self) -> None:
        """Renew our leases, drop dead nodes' members; re-assert ours where they were lost."""
        channels = list(set(self.users) | set(self.listeners))
        for start in range(0, len(channels), SWEEPS_AT_ONCE):
            part = channels[start : start + SWEEPS_AT_ONCE]
            await asyncio.gather(*(self._sweep(channel) for channel in part))

    async def _sweep(self, channel: str) -> None:
        users = self.users.get(channel)
        try:
            had = await self.store.sweep(channel, bool(users))
        except Exception:
            logger.debug("presence sweep of %s failed", channel)
            return
        if not had and users and not self.closing:
            logger.info("presence of %s was lost at the broker: re-asserting it", channel)
            for user, local in users.items():
                local.sent = 0
                self._dirty.add((channel, user))

    def _announced(
        self, channel: str, joins: list[tuple[str, str]], leaves: list[tuple[str, str]], users: int
    ) -> None:
        """Joins and leaves the store announced: one batch to every listener of the channel."""
        subs = self.listeners.get(channel)
        if not subs or users > self.max_members:
            return
        events = [PresenceEvent.of(channel, LEAVE, user, info) for user, info in leaves]
        events += [PresenceEvent.of(channel, JOIN, user, info) for user, info in joins]
        batch = Batch(list(events))
        self.events_sent += len(events) * len(subs)
        for sub in list(subs):
            if not sub.offer_batch(batch):
                subs.discard(sub)

    async def _flush_loop(self) -> None:
        while True:
            await anyio.sleep(TICK_S)
            await self.flush()

    async def _lease_loop(self) -> None:
        while True:
            await anyio.sleep(LEASE_RENEW_S)
            await self.sweep()

    async def _exit_watcher(self) -> None:
        await self._exit_signal(None)
        await self.leave_all()


class Attendance:
    """A connection's presence for a ``with`` or ``async with`` block."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)


class _Attendance(Attendance):
    __slots__ = ("hold", "member", "presence", "sub", "visit")

    def __init__(self, presence: Presence, visit: Visit, sub: Subscription, hold: bool) -> None:
        self.presence = presence
        self.visit = visit
        self.sub = sub
        self.hold = hold
        self.member = False

    def __enter__(self) -> None:
        self.member = self.presence._entered(self.visit, self.sub)

    def __exit__(self, *exc: object) -> None:
        self.presence._left(self.visit, self.sub, self.member, self.hold)


NOTHING = Attendance()  # an anonymous reader that does not listen: nothing to do
