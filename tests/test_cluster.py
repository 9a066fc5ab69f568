"""A Redis Cluster behind the gateway: found by itself, channels on every shard, one publish line.

The session's cluster (3 primaries, 3 replicas), left unharmed; the faults
are in test_cluster_faults.py.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator

import anyio
import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError

from gateway.brokers import is_cluster
from gateway.brokers.cluster import ClusterBroker
from gateway.brokers.functions import channel_keys, function_name
from gateway.brokers.redis_store import MARKER
from gateway.brokers.shard_link import ShardLink
from gateway.message import Message
from gateway.publisher import AsyncPublisher, Publisher
from gateway.settings import Settings
from tests.clients import publish
from tests.cluster import RedisCluster
from tests.conftest import gateway_env
from tests.servers import GatewayServer, RedisServer
from tests.test_publisher import published_and_received

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def node(redis_cluster: RedisCluster) -> Iterator[GatewayServer]:
    server = GatewayServer(gateway_env("cluster", redis_cluster)).start()
    yield server
    server.close()


def test_a_cluster_is_found_from_any_node(redis_cluster, redis_server):
    """``INFO cluster`` on any node, primary or replica, says cluster; a single Redis says not."""
    assert all(is_cluster(node.url) for node in redis_cluster.nodes)
    assert not is_cluster(redis_server.url)


async def test_channels_spread_over_every_shard(node, redis_cluster):
    """Forty channels' histories live on all three primaries, each channel's keys on one."""
    prefix = node.env["GATEWAY_REDIS_PREFIX"]
    channels = [f"spread:{n}" for n in range(40)]
    for channel in channels:
        await publish(node.url, channel, "x")
    where: dict[str, list[int]] = {}
    for primary in redis_cluster.primaries():
        keys = primary.cli("--scan", "--pattern", f"{prefix}:*").split()
        for key in keys:
            where.setdefault(key, []).append(primary.port)
    histories = {channel: where.get(channel_keys(prefix, channel)[1]) for channel in channels}
    assert all(ports is not None and len(ports) == 1 for ports in histories.values()), histories
    shards = {ports[0] for ports in histories.values() if ports}
    assert len(shards) == 3, f"all channels on {shards}"
    for channel in channels:  # the channel's three keys share its shard
        base, stream, epoch = channel_keys(prefix, channel)
        assert where[base] == where[stream] == where[epoch]


async def test_the_python_publisher_routes_by_slot(node, redis_cluster):
    """``Publisher`` and ``AsyncPublisher`` on a cluster URL reach subscribers on every shard."""
    prefix = node.env["GATEWAY_REDIS_PREFIX"]
    with Publisher(redis_cluster.url, prefix=prefix) as publisher:
        for n in range(6):
            channel = f"pub:sync:{n}"
            send = lambda: anyio.to_thread.run_sync(publisher.publish, channel, "s", "ev")  # noqa: B023, E731
            message_id, received = await published_and_received(node, channel, send)
            assert received == {"id": message_id, "channel": channel, "event": "ev", "data": "s"}
    async with AsyncPublisher(redis_cluster.nodes[-1].url, prefix=prefix) as apublisher:
        for n in range(6):
            channel = f"pub:async:{n}"
            message_id, received = await published_and_received(
                node, channel, lambda: apublisher.publish(channel, "a")  # noqa: B023
            )
            assert received["id"] == message_id


def _cli_publish(server: RedisServer, prefix: str, channel: str, data: str) -> str:
    """The README's line: ``redis-cli -c FCALL <fn> 3 <the channel's keys> <data>``."""
    args = ["redis-cli", "-c", "-p", str(server.port), "FCALL", function_name(prefix, "publish")]
    args += ["3", *channel_keys(prefix, channel), data]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("kind", ["cluster", "redis"])
async def test_the_readme_redis_cli_line_works_on_a_cluster_and_a_single_redis(
    kind, redis_cluster, redis_server
):
    """The same ``redis-cli -c FCALL`` line publishes on a cluster (any node) and on a single Redis."""
    redis = redis_cluster if kind == "cluster" else redis_server
    server = GatewayServer(gateway_env(kind, redis)).start()
    try:
        prefix = server.env["GATEWAY_REDIS_PREFIX"]
        entry = redis_cluster.nodes[-1] if kind == "cluster" else redis_server
        for n in range(4):
            channel = f"cli:{n}"
            message_id, received = await published_and_received(
                server,
                channel,
                lambda: anyio.to_thread.run_sync(_cli_publish, entry, prefix, channel, "hi"),  # noqa: B023
            )
            assert received == {"id": message_id, "channel": channel, "event": "message", "data": "hi"}
    finally:
        server.close()


class _Quiet:
    """A shard link's owner that only counts what the link reports."""

    def __init__(self) -> None:
        self.reports = 0

    def _map_changed(self) -> None:
        self.reports += 1

    def _received(self, name: bytes, payload: bytes) -> None:
        self.reports += 1

    def _unsubscribed(self, link: ShardLink, name: bytes) -> None:
        self.reports += 1


async def test_a_shard_link_refuses_a_replica(redis_cluster):
    """Redis takes SSUBSCRIBE on a replica, which hears nothing for a while after a failover: refused."""
    primary = redis_cluster.primaries()[0]
    replica = redis_cluster.replica_of(primary)
    name = next(f"probe:{{{n}}}" for n in range(100) if redis_cluster.owner_of(f"{{{n}}}") is primary)
    for node in (primary, replica):
        conn = Connection(host="127.0.0.1", port=node.port, protocol=2)
        link = ShardLink(f"127.0.0.1:{node.port}", conn, name.encode(), _Quiet())
        try:
            if node is primary:
                await link.start()
                assert link.alive
            else:
                with pytest.raises(RedisConnectionError, match="not a primary"):
                    await link.start()
                assert not link.alive
        finally:
            await link.close()


async def test_a_primary_left_with_no_slot_in_the_map_is_refused_not_searched_forever(
    redis_cluster,
):
    """A failover's ``MOVED`` empties a primary's slots while links are rebuilt: refused, at once.

    The supervisor reads the primaries, awaits (dropping a link), then opens
    links to those it read. Meanwhile a command answered ``MOVED`` after a
    failover makes redis-py's map give that primary's slots to its replica.
    The canary search for the old primary then never ended, synchronously:
    the gateway stopped answering anyone (CI). The map is moved here as
    redis-py moves it on such a ``MOVED``; the cluster itself is untouched.
    """
    broker = ClusterBroker(Settings(redis_url=redis_cluster.url))
    try:
        await broker._cluster.initialize()
        primary = redis_cluster.primaries()[0]
        replica = redis_cluster.replica_of(primary)
        name = f"127.0.0.1:{primary.port}"
        manager = broker._cluster.nodes_manager
        assert broker._canary_name(name)  # owns slots: found
        while owned := [s for s, nodes in manager.slots_cache.items() if nodes[0].name == name]:
            await manager.move_slot(MovedError(f"{owned[0]} 127.0.0.1:{replica.port}"))
        with anyio.fail_after(10):  # (a thread: the old search would hold the loop forever)
            with pytest.raises(RedisConnectionError, match="owns no slot"):
                await anyio.to_thread.run_sync(broker._canary_name, name, abandon_on_cancel=True)
        with pytest.raises(RedisConnectionError, match="owns no slot"):
            await broker._open_link(name)
        assert not broker._links
    finally:
        await broker._cluster.aclose()


class _Listener:
    """The hub's side of the broker, as a record of calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def on_messages(self, messages: list[Message]) -> None:
        self.calls.append(("live", [m.channel for m in messages]))

    def on_link_restored(self) -> None:
        self.calls.append(("link", []))

    def on_channels_restored(self, channels: list[str]) -> None:
        self.calls.append(("restored", list(channels)))


class _AnsweringLink:
    """A shard link that confirms each subscription a loop turn later, as a real node would.

    Meanwhile a live message of every channel arrives (on this link or on
    one that carries it already): the hub must hear of a channel's
    restoration before any of its live messages, or its backfill would
    start after that message, past the hole.
    """

    def __init__(self, node: str, broker: ClusterBroker) -> None:
        self.node = node
        self.broker = broker
        self.alive = True

    async def subscribe(self, names: list[bytes]) -> set[bytes]:
        for n, channel in enumerate(sorted(self.broker._channels)):
            self.broker._received(self.broker.base(channel).encode(), _payload(n))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return set(names)

    async def send(self, *args: object) -> None:
        pass


def _payload(n: int) -> bytes:
    return MARKER + f"e0:{1000 + n}-0".encode() + b"\x00message\x00x"


async def test_a_channel_re_homed_with_others_is_restored_before_its_live_messages():
    """Channels of several shards re-homed at once: each one's restoration precedes its live messages."""
    broker = ClusterBroker(Settings(redis_url="redis://127.0.0.1:1/0"))
    listener = _Listener()
    broker._listener = listener
    owners = {f"c{n}": f"127.0.0.1:{7000 + n}" for n in range(3)}
    broker._owner = lambda key: owners[key.split("{")[1].rstrip("}")]  # type: ignore[method-assign]
    for channel, node in owners.items():
        broker._channels.add(channel)
        broker._lost.add(channel)
        broker._links[node] = _AnsweringLink(node, broker)  # type: ignore[assignment]
    try:
        assert await broker._home_channels()
        await asyncio.sleep(0)  # the last live messages handed over
        for channel in owners:
            said = [kind for kind, channels in listener.calls if channel in channels]
            assert said[0] == "restored", (channel, listener.calls)
        assert any(kind == "live" for kind, _ in listener.calls)  # not all dropped
    finally:
        await broker._cluster.aclose()
