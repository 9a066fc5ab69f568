"""A Redis Cluster behind the gateway: found by itself, channels on every shard, one publish line.

The session's cluster (3 primaries, 3 replicas), left unharmed; the faults
are in test_cluster_faults.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import anyio
import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.brokers import is_cluster
from gateway.brokers.functions import channel_keys, function_name
from gateway.brokers.shard_link import ShardLink
from gateway.publisher import AsyncPublisher, Publisher
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

