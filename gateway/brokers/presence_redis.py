"""Presence on Redis: three functions of their own library (presence.lua), events over pub/sub.

Decisions:

* **Keys in the channel's slot.** Everything of a channel's presence is
  under its hash tag ``{C}`` (``gw:{C}:pm``, ``:pu``, ``:pi``, ``:pn``), so
  one function call touches one slot, on a single Redis or a cluster.
* **A lease per node per channel**, in ``gw:{C}:pn``: renewed by every
  update and, every ``presence.LEASE_RENEW_S``, by a sweep. A node that dies
  without a word stops renewing; the next sweep of any node with an interest
  in the channel drops its members, with leaves, within
  ``LEASE_MS`` + ``LEASE_RENEW_S`` (13 s). Time is Redis's own clock (TIME
  inside the function): nodes' clocks never disagree about a lease.
* **Exactly once.** Each join and leave is decided inside one atomic call
  that also publishes it, so several survivors sweeping at once announce a
  leave once. The node that made a change hears of it like every other:
  through pub/sub, on the channel's own name with the ``PRESENCE_MARKER``
  payload (one branch in the broker's reader, ``RedisStore.presence_sink``).
  A node hears a channel's presence only while it is subscribed to it, which
  it is exactly while a connection there listens.
* **Rebuilt after a wipe.** A sweep that finds our lease gone (Redis
  restarted, FLUSHALL, or we were swept as dead) says so, and the node
  re-asserts every member it holds there (presence.py).
* **Its own library**, versioned like the publish one (functions.py): its
  name carries ``VERSION``; it is loaded at start and again whenever Redis
  answers that a function is missing.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.brokers.functions import (
    PRESENCE_VERSION,
    channel_key,
    function_prefix,
    presence_library_name,
    presence_library_source,
)
from gateway.brokers.redis_store import PRESENCE_MARKER, RedisStore
from gateway.presence_wire import Announce, Change, Member, Snapshot

logger = logging.getLogger(__name__)

VERSION = PRESENCE_VERSION

LEASE_MS = 10_000


def presence_keys(prefix: str, channel: str) -> tuple[str, str, str, str, str]:
    base = channel_key(prefix, channel)
    return base, f"{base}:pm", f"{base}:pu", f"{base}:pi", f"{base}:pn"


# The library's name and source live with the other's (functions.py): loaded together.
library_name = presence_library_name
library_source = presence_library_source


class RedisPresenceStore:
    def __init__(self, broker: RedisStore) -> None:
        self.broker = broker
        self.node = broker.node
        self.prefix = broker.prefix
        self._fn = function_prefix(self.prefix)
        self._announce: Announce | None = None

    async def start(self, announce: Announce) -> None:
        self._announce = announce
        self.broker.presence_sink = self._heard
        try:
            await self._load()
        except (RedisError, OSError) as exc:
            logger.warning("presence functions not loaded yet (%s); loaded at first use", exc)

    async def stop(self) -> None:
        self.broker.presence_sink = None
        self._announce = None

    async def update(self, channel: str, changes: list[Change]) -> None:
        args: list[str | int] = [self.node, LEASE_MS]
        for user, count, info in changes:
            args += [user, count, info]
        await self._call("FCALL", "update", channel, *args)

    async def sweep(self, channel: str, mine: bool) -> bool:
        had, _ = await self._call("FCALL", "sweep", channel, self.node, LEASE_MS, int(mine))
        return bool(had)

    async def snapshot(self, channel: str, most: int) -> Snapshot:
        raw = await self._call("FCALL_RO", "read", channel, most)
        read = orjson.loads(raw)
        found = read.get("members")
        members = None
        if found is not None:  # cjson writes an empty list as {}
            members = [Member(user, info, count) for user, info, count in found or ()]
        return Snapshot(channel, read["users"], read["connections"], members)

    # -- inside ---------------------------------------------------------------

    def _heard(self, name: bytes, payload: bytes) -> None:
        """A presence payload on a channel's pub/sub name (called by the broker's reader)."""
        if self._announce is None:
            return
        channel = name.decode()[len(self.prefix) + 2 : -1]
        said = orjson.loads(payload[len(PRESENCE_MARKER) :])
        self._announce(channel, _pairs(said.get("j")), _pairs(said.get("l")), int(said["u"]))

    async def _call(self, command: str, action: str, channel: str, *args: Any) -> Any:
        """Through the broker's own commands: routed by slot on a cluster; the libraries
        (ours among them) reloaded when Redis lost them; BrokerUnavailable otherwise."""
        keys = presence_keys(self.prefix, channel)
        name = f"{self._fn}_presence_{action}_{VERSION}"
        return await self.broker.call(command, name, len(keys), *keys, *args)

    async def _load(self) -> None:
        await self.broker.load_functions()


def _pairs(found: Any) -> list[tuple[str, str]]:
    """``[[user, info], ...]`` as cjson wrote it (an empty list comes as ``{}``)."""
    return [(user, info) for user, info in found or ()]
