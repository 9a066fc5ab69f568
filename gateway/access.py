"""Access that ends: open connections ended at their token's ``exp`` and when revoked.

Why one registry and not a timer per connection: 10,000 SSE streams with
tokens would be 10,000 timer handles, each an object in the loop's heap
that is pushed and popped. Here a connection opened with a token is one
small ``Grant`` in two dicts: its slot (the second its token expires, as
``polls.Polls`` keeps its wheel) and its user's set. One loop looks at the
slots every ``TICK_S``, so a connection ends at most a tick after ``exp``
(SPEC: within 1 s). A connection without a token (an open gateway, a
public channel) has no grant and is not concerned.

Revocations travel through the broker on a control channel (``CONTROL``, a
name no client can give: ``!`` is not a channel character), published by
``POST /admin/disconnect`` or ``gateway.publisher.disconnect`` with the
same atomic call as any message. Every node follows that channel as a
subscriber of its hub from the start of its history: a node that starts
later, or whose broker link came back, reads what it missed (the hub's
backfill), so every node knows every revocation still in force. The
channel's history is capped like any channel's (``GATEWAY_HISTORY_SIZE``
records); each is obeyed for ``GATEWAY_REVOCATION_TTL`` (revocations.py).

What ending means is the transport's (the ``Holder`` it registered): a
single-channel stream or socket closes its subscription with
``CloseReason.EXPIRED`` or ``REVOKED``; a several-channel one ends as a
whole or, for a revocation of some channels, drops just those with a
notice; a waiting poll is answered 401 or 403.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol

import anyio
import orjson

from gateway.errors import GatewayError
from gateway.message import START, Cursor, Message
from gateway.revocations import Revocation, Revocations, revocation
from gateway.subscription import CloseReason

if TYPE_CHECKING:
    from gateway.auth import Rights
    from gateway.hub import Hub

logger = logging.getLogger(__name__)

TICK_S = 0.25  # a connection ends at most this long after its exp
CONTROL = "!control"  # the control channel: revocations (not a name a client can use)
REVOKE_EVENT = "revoke"
FOLLOW_RETRY_S = 1.0
EXPIRED_NOTE = "token expired"


class Holder(Protocol):
    """What a connection registers: told once that its access ended."""

    def access_ended(
        self, reason: CloseReason, note: str, patterns: tuple[str, ...] | None
    ) -> None:
        """``EXPIRED`` (every channel) or ``REVOKED`` (``patterns``: only channels matching
        them; None: every channel); ``note``: the reason to tell the client. Must not wait."""


class Grant:
    """A connection opened with a token: ended at its ``exp`` or when its user is revoked.

    A context manager for the connection's life: leaving it unregisters.
    """

    __slots__ = ("access", "holder", "issued_at", "slot", "user")

    def __init__(self, access: Access, holder: Holder, rights: Rights) -> None:
        self.access = access
        self.holder: Holder | None = holder  # None once dropped
        self.user = rights.user
        self.issued_at = rights.issued_at
        self.slot: dict[Grant, None] | None = None

    def __enter__(self) -> Grant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()

    def drop(self) -> None:
        """No more ends: the connection is over."""
        self.access.drop(self)

    def renew(self, rights: Rights) -> None:
        """A refreshed token (same user): its exp and iat now count."""
        self.issued_at = rights.issued_at
        self.access.move(self, rights.expires_at)


class _NoGrant:
    """A connection without a token: nothing to watch."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        pass


NO_GRANT = _NoGrant()


class Access:
    """Every grant of this process by expiry second and by user; revocations heard and obeyed."""

    def __init__(self, revocations: Revocations) -> None:
        self.revocations = revocations
        self._slots: dict[int, dict[Grant, None]] = {}
        self._users: dict[str, dict[Grant, None]] = {}
        self._done = math.floor(time.time())
        self.grants = 0

    def watch(self, rights: Rights, holder: Holder) -> Grant | _NoGrant:
        """Register a connection opened with ``rights``; a grant to leave when it ends."""
        if rights.expires_at is None:
            return NO_GRANT
        grant = Grant(self, holder, rights)
        self.move(grant, rights.expires_at)
        if grant.user is not None:
            self._users.setdefault(grant.user, {})[grant] = None
        self.grants += 1
        return grant

    def move(self, grant: Grant, expires_at: float | None) -> None:
        if grant.slot is not None:
            grant.slot.pop(grant, None)
        if expires_at is None:
            grant.slot = None
            return
        key = max(math.ceil(expires_at), self._done + 1)  # (a slot swept already: the next)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = {}
        slot[grant] = None
        grant.slot = slot

    def drop(self, grant: Grant) -> None:
        if grant.holder is None:
            return  # dropped already
        grant.holder = None
        self.grants -= 1
        if grant.slot is not None:
            grant.slot.pop(grant, None)
            grant.slot = None
        user = grant.user
        if user is not None:
            grants = self._users.get(user)
            if grants is not None:
                grants.pop(grant, None)
                if not grants:
                    del self._users[user]

    def expire(self, now: float) -> None:
        """End every connection whose token's exp passed."""
        due = math.floor(now)
        for key in range(self._done + 1, due + 1):
            for grant in list(self._slots.pop(key, ())):
                holder = grant.holder
                grant.slot = None
                self.drop(grant)
                if holder is not None:
                    _end(holder, CloseReason.EXPIRED, EXPIRED_NOTE, None)
        self._done = max(self._done, due)

    def revoke(self, record: Revocation) -> None:
        """Obey a revocation: remembered for new tokens, and this node's connections ended."""
        if not self.revocations.add(record):
            return
        for grant in list(self._users.get(record.user, ())):
            issued = grant.issued_at if grant.issued_at is not None else float("-inf")
            if issued >= record.at:
                continue  # a token issued after the revocation
            holder = grant.holder
            if record.patterns is None:
                self.drop(grant)
            if holder is not None:
                _end(holder, CloseReason.REVOKED, record.reason, record.patterns)
        logger.info(
            "revoked user=%s channels=%s reason=%s",
            record.user,
            ",".join(record.patterns) if record.patterns else "*",
            record.reason,
        )

    async def run(self) -> None:
        """The one expiry loop."""
        while True:
            await asyncio.sleep(TICK_S)
            if self._slots:
                self.expire(time.time())
            else:
                self._done = math.floor(time.time())

    @asynccontextmanager
    async def running(self, hub: Hub) -> AsyncIterator[Access]:
        """The expiry loop and the control channel's follower, for the block's duration."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.run)
            tasks.start_soon(self._follow, hub)
            try:
                yield self
            finally:
                tasks.cancel_scope.cancel()

    async def _follow(self, hub: Hub) -> None:
        """Every revocation in the control channel's history, then each as it comes."""
        cursor: Cursor = START
        while True:
            try:
                async with hub.subscribe(CONTROL, cursor) as sub:
                    while True:
                        for item in sub.take(256):
                            if isinstance(item, Message):
                                self._heard(item)
                                cursor = item.cursor or cursor
                        if sub.closed:
                            break
                        await sub.wait()
            except GatewayError as exc:
                logger.debug("control channel not followed yet (%s)", exc.reason)
            if hub.closing:
                return
            await anyio.sleep(FOLLOW_RETRY_S)

    def _heard(self, message: Message) -> None:
        if message.event != REVOKE_EVENT:
            return
        try:
            record = revocation(orjson.loads(message.data))
        except (orjson.JSONDecodeError, GatewayError):
            logger.warning("unreadable revocation on the control channel: %.200s", message.data)
            return
        self.revoke(record)


async def announce(hub: Hub, record: Revocation) -> Message:
    """Publish a revocation on the control channel: every node (this one too) obeys it.

    Straight to the broker, as stats.py publishes: not a client message in the metrics.
    """
    return await hub.broker.publish(CONTROL, REVOKE_EVENT, record.encode())


def _end(holder: Holder, reason: CloseReason, note: str, patterns: tuple[str, ...] | None) -> None:
    try:
        holder.access_ended(reason, note, patterns)
    except Exception:  # one connection's bug must not spare the others
        logger.exception("ending a connection's access failed")
