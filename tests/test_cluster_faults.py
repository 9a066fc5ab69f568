"""Faults on a real Redis Cluster: readers on two gateway nodes lose nothing, see nothing twice.

Each test starts its own 3-primary, 3-replica cluster and two gateways on
it; SSE, WebSocket and poll readers on each gateway follow one channel
while a producer keeps publishing (retrying 503s). The fault hits the shard
that owns the channel's slot. Every acknowledged publish must reach every
reader exactly once, in order: the only exception allowed is a SIGKILLed
primary whose replica lacked the last writes, and then the reader must have
been told of the gap. Recovery times go to artifacts/fault-recovery.txt.
"""

from __future__ import annotations

import time

import anyio
import pytest

from tests.cluster import RedisCluster, migrate_slot
from tests.conftest import gateway_env
from tests.resilient import Follower, record, stream_through_fault
from tests.servers import GatewayServer, wait_until

# CI saw two kinds of failure here (one run in three failed one test): a
# redis-server not up in 20 s (its port taken meanwhile: the harness now
# moves it, tests/cluster.py) and acknowledged messages missing after a
# manual failover (a link rebuilt to the demoted primary: shard_link.py
# refuses a replica now). The failover test passed 55 runs in a row under
# load since (a CPU hog on one of two cores), and runs without a retry. It
# failed once more in CI: one gateway hung for good on a canary search for a
# primary that a MOVED had just emptied (cluster.py's _canary_name refuses
# that now; test_cluster.py), its readers waited out 60 s read timeouts and
# resumed after history had been trimmed past them, told of the gap. The
# others keep one retry until they have as many: in 8 runs of this file under
# load one of them failed once, on a duplicate poll answer since fixed
# (Hub.answer_after). A second failure still fails the run, and a rerun is
# reported.
RETRY_ONCE = pytest.mark.flaky(reruns=1)
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

COUNT = 1500
FAULT_AFTER = 300


@pytest.fixture
def nodes(fresh_cluster: RedisCluster):
    env = gateway_env("cluster", fresh_cluster)
    servers = [GatewayServer(env).start() for _ in range(2)]
    yield servers, env["GATEWAY_REDIS_PREFIX"]
    for n, server in enumerate(servers):
        print(f"--- gateway {n} log (tail) ---\n{server.log()[-6000:]}")  # shown on failure
        server.close()


def _owner(cluster: RedisCluster, prefix: str, channel: str):
    return cluster.owner_of(f"{prefix}:{{{channel}}}")


async def test_manual_failover_of_the_channels_primary(nodes, fresh_cluster):
    """CLUSTER FAILOVER on the replica of the channel's primary: a delay, then every message once."""
    servers, prefix = nodes
    channel = "fault:failover"
    primary = _owner(fresh_cluster, prefix, channel)
    replica = fresh_cluster.replica_of(primary)

    async def failover() -> None:
        print(f"{time.strftime('%H:%M:%S')} CLUSTER FAILOVER: {primary.port} to {replica.port}")
        replica.cli("CLUSTER", "FAILOVER")
        await anyio.to_thread.run_sync(lambda: wait_until(lambda: replica.is_primary, 20))

    readers, producer, fault_at = await stream_through_fault(
        servers, servers, channel, COUNT, FAULT_AFTER, failover, on_each=True
    )
    assert _owner(fresh_cluster, prefix, channel) is replica
    assert all(reader.gaps == 0 for reader in readers.values())
    record(f"cluster manual failover ({producer.refused} publishes refused)", readers, fault_at)


@RETRY_ONCE
async def test_the_channels_slot_migrates_to_another_shard(nodes, fresh_cluster):
    """The channel's slot and keys move to another primary (SETSLOT/MIGRATE) mid-stream."""
    servers, prefix = nodes
    channel = "fault:reshard"
    key = f"{prefix}:{{{channel}}}"
    source = _owner(fresh_cluster, prefix, channel)
    target = next(node for node in fresh_cluster.primaries() if node is not source)

    async def reshard() -> None:
        await anyio.to_thread.run_sync(migrate_slot, fresh_cluster, fresh_cluster.slot_of(key), target)

    readers, producer, fault_at = await stream_through_fault(
        servers, servers, channel, COUNT, FAULT_AFTER, reshard, on_each=True
    )
    assert fresh_cluster.owner_of(key) is target
    assert target.cli("EXISTS", f"{key}:h") == "1" and source.cli("EXISTS", f"{key}:h") != "1"
    assert all(reader.gaps == 0 for reader in readers.values())
    record(f"cluster slot migrated ({producer.refused} publishes refused)", readers, fault_at)


def _every_ack_or_the_gap(reader: Follower, acked: list[str]) -> None:
    """Exactly once in order; acknowledged messages may be missing only after a gap signal."""
    ids = reader.ids
    assert len(ids) == len(set(ids)), "a message was delivered twice"
    wanted = set(acked)
    got = [i for i in ids if i in wanted]
    if reader.gaps == 0:
        assert got == acked, "an acknowledged message was lost without a gap signal"
    else:
        assert got == [i for i in acked if i in set(got)], "reordered"


@RETRY_ONCE
async def test_the_channels_primary_sigkilled(nodes, fresh_cluster):
    """SIGKILL of the channel's primary: its replica takes over; every message, or the gap."""
    servers, prefix = nodes
    channel = "fault:kill-primary"
    primary = _owner(fresh_cluster, prefix, channel)
    replica = fresh_cluster.replica_of(primary)

    async def kill() -> None:
        primary.stop()
        await anyio.to_thread.run_sync(lambda: wait_until(lambda: replica.is_primary, 30))

    readers, producer, fault_at = await stream_through_fault(
        servers, servers, channel, COUNT, FAULT_AFTER, kill, check=_every_ack_or_the_gap, on_each=True
    )
    gaps = {name: reader.gaps for name, reader in readers.items()}
    record(
        f"cluster primary SIGKILL ({producer.refused} publishes refused; gaps {gaps})",
        readers,
        fault_at,
    )


@RETRY_ONCE
async def test_a_gateway_node_sigkilled_on_a_cluster(nodes):
    """One of two gateways SIGKILLed: its readers resume on the other with their cursor."""
    servers, _ = nodes
    first, second = servers

    async def kill_first() -> None:
        first.kill()

    readers, _, fault_at = await stream_through_fault(
        servers, [second], "fault:gateway", COUNT, FAULT_AFTER, kill_first, on_each=True
    )
    assert all(r.reconnects >= 1 for name, r in readers.items() if name.endswith("@0"))
    record("cluster: gateway SIGKILL", readers, fault_at)


@RETRY_ONCE
async def test_readyz_turns_503_while_a_shard_is_down_and_recovers(nodes, fresh_cluster):
    """A canary per shard: a frozen primary (SIGSTOP) fails /readyz until its replica takes over."""
    servers, prefix = nodes
    [server, _] = servers
    primary = _owner(fresh_cluster, prefix, "fault:ready")
    started = time.monotonic()
    primary.pause()
    try:
        wait_until(lambda: not server.ready(), 15)
        unready_after = time.monotonic() - started
        wait_until(server.ready, 40)
        ready_after = time.monotonic() - started
    finally:
        primary.resume()
    line = f"cluster primary SIGSTOP: /readyz 503 after {unready_after:.2f}s; ready again (replica promoted) after {ready_after:.2f}s"
    print(line)
    from tests.resilient import RESULTS

    with RESULTS.open("a") as out:
        out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
