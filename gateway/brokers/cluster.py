"""The Redis Cluster broker: sharded pub/sub, one link per primary, re-homed on every move.

Commands (publish, history, the roll call) go through redis-py's
``RedisCluster``, which routes by slot and follows ``MOVED``/``ASK``/
``TRYAGAIN`` itself; ``CLUSTERDOWN`` and lost connections are retried
within ``COMMAND_RETRIES``, then the call is ``BrokerUnavailable`` (503).
The pub/sub side is our own, as for a single Redis (``redis.py``), because
redis-py's ``ClusterPubSub`` did not resubscribe after a pushed
``sunsubscribe`` (measured with redis-py 8.1 and Redis 7.0).

Decisions:

* One connection per primary (a ``ShardLink``), one ``SSUBSCRIBE`` per
  channel on the primary that owns its slot (``{C}``: a channel's keys and
  its pub/sub name share one slot). ``PUBLISH`` would be broadcast to every
  node of the cluster: the Function publishes by ``SPUBLISH``.
* One task, ``_supervise``, owns the map from channel to link. Whatever may
  have moved a channel wakes it: ``MOVED`` or an error answering an
  ``SSUBSCRIBE``, a pushed ``sunsubscribe`` for a channel still wanted (a
  slot migrated, a primary failed over), a lost link, ``CLUSTERDOWN`` on a
  command, and a timer. It refreshes the slot map, opens links to new
  primaries, closes those to nodes no longer primaries, subscribes each
  homeless channel on its owner, and then tells the hub which channels
  came back (``on_channels_restored``), before it awaits anything else:
  the hub backfills just those from history on their new owner and drops
  duplicates by id. Until the hub has heard, such a channel's live
  messages are dropped (history holds them): one delivered first would
  move the hub's cursor past the hole.
* Each link has a canary, a name in a slot its primary owns: ``check_link``
  sends one through every link, so ``/readyz`` fails while any shard's
  messages would not arrive.
* The Function library is loaded on every primary at start, whenever the
  set of primaries changes, and on "Function not found".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MovedError,
    RedisError,
    SlotNotCoveredError,
)

from gateway.brokers.backoff import Backoff
from gateway.brokers.base import BrokerListener, cancel_and_wait
from gateway.brokers.redis_store import (
    MARKER,
    SUBSCRIBE_TIMEOUT_S,
    RedisStore,
    connection_options,
    load_library,
)
from gateway.brokers.shard_link import ShardLink
from gateway.errors import BrokerUnavailable
from gateway.settings import Settings

logger = logging.getLogger(__name__)

COMMAND_RETRIES = 6  # CLUSTERDOWN or a lost node: ~2 s of backoff, then 503
REFRESH_S = 5.0  # the slot map is read again at least this often
CANARY_NAMES = 1 << 20  # names tried for a canary: a node of one slot needs ~16k
MAP_ERRORS = (ClusterDownError, MovedError, ConnectionError, SlotNotCoveredError)


class ClusterBroker(RedisStore):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), COMMAND_RETRIES)
        self._cluster = RedisCluster.from_url(
            settings.redis_url or "", retry=retry, **connection_options(settings)
        )
        self._links: dict[str, ShardLink] = {}
        self._home: dict[str, str] = {}  # channel -> the node whose link carries it
        self._lost: set[str] = set()  # channels whose live messages may have had a gap
        self._homed: dict[str, asyncio.Event] = {}
        self._primaries: frozenset[str] = frozenset()
        self._wake = asyncio.Event()
        self._stale = True  # the slot map must be read again
        self._supervisor: asyncio.Task[None] | None = None

    # -- lifetime -----------------------------------------------------------

    async def start(self, listener: BrokerListener) -> None:
        self._listener = listener
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def stop(self) -> None:
        if self._supervisor is not None:
            await cancel_and_wait(self._supervisor)
            self._supervisor = None
        await self.stop_housekeeping()
        for name in list(self._links):
            await self._drop_link(name)
        await self._cluster.aclose()
        self.connected = False

    # -- the Broker protocol: the links -------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Ask the supervisor to home the channel; return once its owner confirmed."""
        homed = self._homed.setdefault(channel, asyncio.Event())
        self._channels.add(channel)
        self._wake.set()
        try:
            await asyncio.wait_for(homed.wait(), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError:
            self._forget(channel)
            raise BrokerUnavailable("the broker did not confirm the subscription") from None
        self._record_cap(channel)

    async def unsubscribe(self, channel: str) -> None:
        home = self._home.get(channel)
        self._forget(channel)
        link = self._links.get(home or "")
        if link is not None and link.alive:
            await link.send("SUNSUBSCRIBE", self.base(channel))

    async def check_link(self) -> None:
        """A canary through every shard's link: any shard deaf or missing fails it."""
        await self._maybe_announce()
        links = list(self._links.values())
        if not links or {link.node for link in links} != self._primaries:
            raise BrokerUnavailable("not every shard has a live link")
        await asyncio.gather(*(self._canary(link) for link in links))

    # -- commands -------------------------------------------------------------

    async def _execute(self, *args: Any, **options: Any) -> Any:
        try:
            return await self._cluster.execute_command(*args, **options)
        except MAP_ERRORS:
            self._map_changed()
            raise

    async def _load_functions(self) -> None:
        for node in self._cluster.get_primaries():
            execute = functools.partial(self._cluster.execute_command, target_nodes=node)
            await load_library(execute, self.prefix)

    def _map_changed(self) -> None:
        self._stale = True
        self._wake.set()

    def _forget(self, channel: str) -> None:
        self._channels.discard(channel)
        self._home.pop(channel, None)
        self._lost.discard(channel)
        self._homed.pop(channel, None)

    # -- the supervisor -----------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = Backoff(cap_s=1.0)
        while True:
            self._wake.clear()
            try:
                settled = await self._rehome()
            except Exception as exc:  # the edge of the links: try again shortly
                logger.warning("cluster links: %s: %s; retrying", type(exc).__name__, exc)
                self._stale, settled = True, False
            self.connected = any(link.alive for link in self._links.values())
            if settled:
                backoff.reset()
            wait_s = REFRESH_S if settled else backoff.next_delay()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            if not settled or not self._wake.is_set():
                self._stale = True  # a timer, or a retry: read the map again

    async def _rehome(self) -> bool:
        """Bring links and subscriptions in line with the slot map; whether all went well."""
        if self._stale:
            await self._cluster.initialize()
            await self._cluster.nodes_manager.initialize()
            self._stale = False
        primaries = frozenset(node.name for node in self._cluster.get_primaries())
        if primaries != self._primaries:
            logger.info("the primaries are now %s", ", ".join(sorted(primaries)))
            await self._load_functions()
            self._primaries = primaries
        for name, link in list(self._links.items()):
            if name not in primaries or not link.alive:
                await self._drop_link(name)
        settled = True
        for name in primaries - self._links.keys():
            try:
                self._links[name] = await self._open_link(name)
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning("no link to primary %s yet (%s); retrying", name, exc)
                settled = False
        return await self._home_channels() and settled

    async def _home_channels(self) -> bool:
        wanted: dict[str, list[str]] = {}
        for channel in self._channels:
            owner = self._owner(self.base(channel))
            if self._home.get(channel) != owner:
                wanted.setdefault(owner, []).append(channel)
        settled = True
        for node, channels in wanted.items():
            link = self._links.get(node)
            if link is None or not link.alive:
                settled = False
                continue
            settled = await self._home_on(link, channels) and settled
        if not settled:
            self._stale = True
        return settled

    async def _home_on(self, link: ShardLink, channels: list[str]) -> bool:
        """Subscribe ``channels`` on ``link``; tell the hub at once of those that had a hole.

        A channel that moves (or was lost) is in ``_lost`` until the hub
        has heard: its live messages are dropped till then (``_received``),
        as one handed over first would carry the hub's cursor past the hole
        its backfill must fill; that backfill, read after this, holds them.
        The hub hears before any await: this pass may wait on other links.
        One whose move was refused stays on its old link, told as well (for
        what was dropped meanwhile); one homed nowhere stays lost.
        """
        moving = {c: self._home[c] for c in channels if c in self._home}
        self._lost.update(moving)
        confirmed = await link.subscribe([self.base(c).encode() for c in channels])
        settled = True
        for channel in channels:
            if self.base(channel).encode() not in confirmed or channel not in self._channels:
                settled = False
                continue
            old = self._home.get(channel)
            self._home[channel] = link.node
            if channel in self._lost:
                logger.info("channel %s re-homed from %s to %s", channel, old, link.node)
            if channel in self._homed:
                self._homed[channel].set()
        restored = [c for c in channels if c in self._lost and c in self._home]
        if restored and self._listener is not None:
            self._listener.on_channels_restored(restored)
        self._lost.difference_update(restored)
        for channel, old in moving.items():
            old_link = self._links.get(old)
            moved = self._home.get(channel) == link.node and old_link is not link
            if moved and old_link is not None:
                await old_link.send("SUNSUBSCRIBE", self.base(channel))
        return settled

    def _owner(self, key: str) -> str:
        return str(self._cluster.nodes_manager.get_node_from_slot(key_slot(key.encode())).name)

    async def _open_link(self, name: str) -> ShardLink:
        host, _, port = name.rpartition(":")
        options = {**connection_options(self.settings), "host": host, "port": int(port)}
        options.pop("ssl_cert_reqs", None)
        link = ShardLink(name, Connection(**options), self._canary_name(name), self)
        await link.start()
        return link

    async def _drop_link(self, name: str) -> None:
        link = self._links.pop(name, None)
        if link is None:
            return
        await link.close()
        for channel, home in list(self._home.items()):
            if home == name:
                del self._home[channel]
                self._lost.add(channel)
        self._map_changed()

    def _canary_name(self, node: str) -> bytes:
        """A canary name of this process in a slot that ``node`` owns in the slot map now.

        ``ConnectionError`` when the map gives ``node`` no slot: it was read
        as a primary, then a command's ``MOVED`` (redis-py's ``move_slot``)
        handed its slots to its replica while this pass awaited. The search
        used to go on forever there, and being synchronous it stopped the
        whole process: a gateway silent from a manual failover on, its
        clients stranded (CI, test_manual_failover_of_the_channels_primary).
        """
        slots = self._cluster.nodes_manager.slots_cache
        owned = {slot for slot, nodes in slots.items() if nodes and nodes[0].name == node}
        if not owned:
            raise ConnectionError(f"{node} owns no slot in the slot map now")
        for n in range(CANARY_NAMES):
            name = f"{self.prefix}:canary:{self.node}:{{{n}}}"
            if key_slot(name.encode()) in owned:
                return name.encode()
        raise ConnectionError(f"no canary name found in the slots of {node}")

    async def _canary(self, link: ShardLink) -> None:
        node = self._cluster.get_node(node_name=link.node)

        async def send(token: bytes) -> None:
            name = link.canary.name
            await self._cluster.execute_command("SPUBLISH", name, token, target_nodes=node)

        async def deaf() -> None:
            logger.warning("pub/sub link to %s is deaf (canary lost); rebuilding", link.node)
            await link.close()

        await link.canary.check(send, deaf)

    # -- what links report ------------------------------------------------------

    def _received(self, name: bytes, payload: bytes) -> None:
        """A message of a channel; one whose hole the hub has not heard of yet is dropped."""
        if self._lost and payload.startswith(MARKER) and self._channel_of(name) in self._lost:
            return  # in history: the channel's backfill delivers it
        super()._received(name, payload)

    def _unsubscribed(self, link: ShardLink, name: bytes) -> None:
        """A pushed ``sunsubscribe``: its slot moved away from ``link``'s node."""
        if name == link.canary.name:
            logger.info("the canary slot of %s moved; rebuilding its link", link.node)
            link.alive = False
            self._map_changed()
            return
        channel = self._channel_of(name)
        if self._home.get(channel) == link.node:
            del self._home[channel]
            self._lost.add(channel)
            self._map_changed()
