"""Broker faults on the Redis broker: clients that keep their cursor lose nothing.

Each test runs its own redis-server and gateways, so it can kill, pause and
restart them. The longest silence a client saw after the fault is printed
(the fault's recovery time) and appended to artifacts/fault-recovery.txt.
"""

from __future__ import annotations

import subprocess
import time

import anyio
import httpx
import pytest

from tests.conftest import gateway_env
from tests.resilient import RESULTS, followers, record, stream_through_fault, wait_for_all
from tests.servers import GatewayServer, RedisServer

pytestmark = pytest.mark.anyio

@pytest.fixture
def gateways(fresh_redis: RedisServer):
    servers: list[GatewayServer] = []

    def start(count: int = 1, **extra: str) -> list[GatewayServer]:
        env = gateway_env("redis", fresh_redis, **extra)
        for _ in range(count):
            servers.append(GatewayServer(env).start())
        return servers

    yield start
    for server in servers:
        server.close()


async def test_pubsub_connection_killed_mid_stream_loses_nothing(gateways, fresh_redis):
    """CLIENT KILL TYPE pubsub while 2000 messages are published: all arrive once, in order."""
    [server] = gateways(1)
    killed = []

    async def kill_pubsub() -> None:
        killed.append(int(_redis_cli(fresh_redis, "CLIENT", "KILL", "TYPE", "pubsub")))

    readers, _, fault_at = await stream_through_fault(
        [server], [server], "fault:kill", 2000, 500, kill_pubsub
    )
    assert killed[0] >= 1
    assert all(reader.gaps == 0 for reader in readers.values())
    record("CLIENT KILL TYPE pubsub", readers, fault_at)


async def test_redis_restarted_with_aof_loses_nothing():
    """redis-server restarted mid-stream (AOF on): publishes get 503 meanwhile, nothing is lost."""
    redis = RedisServer(appendonly=True).start()
    server = None
    try:
        server = GatewayServer(gateway_env("redis", redis)).start()
        readers, producer, fault_at = await stream_through_fault(
            [server],
            [server],
            "fault:restart",
            1000,
            300,
            lambda: anyio.to_thread.run_sync(redis.restart),
        )
        assert all(reader.gaps == 0 for reader in readers.values())
        record(
            f"redis-server restarted (AOF; {producer.refused} publishes refused meanwhile)",
            readers,
            fault_at,
        )
    finally:
        if server is not None:
            server.close()
        redis.close()


async def test_gateway_killed_clients_resume_on_the_other(gateways):
    """One of two gateways SIGKILLed: its clients resume on the other with their cursor."""
    first, second = gateways(2)

    async def kill_first() -> None:
        first.kill()

    readers, _, fault_at = await stream_through_fault(
        [first, second], [second], "fault:node", 1000, 300, kill_first
    )
    assert all(reader.reconnects >= 1 for reader in readers.values())
    record("gateway SIGKILL", readers, fault_at)


async def test_redis_restarted_without_persistence_gives_a_gap(gateways, fresh_redis):
    """History lost (Redis restarted empty): live clients are told of the gap, then go on."""
    [server] = gateways(1)
    async with httpx.AsyncClient(timeout=5) as client:
        before = [
            (await client.post(f"{server.url}/publish/fault:gap", content=b"old")).json()["id"]
            for _ in range(5)
        ]
        async with anyio.create_task_group() as tasks:
            readers = await followers([server], "fault:gap", tasks)
            await wait_for_all(list(readers.values()), before[-1])
            fault_at = time.monotonic()
            await anyio.to_thread.run_sync(fresh_redis.restart)
            after = []
            with anyio.fail_after(30):
                while len(after) < 5:
                    response = await client.post(f"{server.url}/publish/fault:gap", content=b"new")
                    if response.status_code == 201:
                        after.append(response.json()["id"])
                    else:
                        await anyio.sleep(0.05)
            await wait_for_all(list(readers.values()), after[-1])
            tasks.cancel_scope.cancel()
    for transport, reader in readers.items():
        assert reader.gaps == 1, transport
        assert reader.ids[:5] == before and reader.ids[-5:] == after, transport
        gap_at = reader.items.index({"type": "gap"})
        assert gap_at >= 5, f"{transport}: the gap is said after the old messages, before new ones"
    assert before[0].split(":")[0] != after[0].split(":")[0], "a new epoch after history was lost"
    record("redis-server restarted empty (gap)", readers, fault_at)


async def test_frozen_redis_fails_readyz_and_recovers(gateways, fresh_redis):
    """A paused redis-server (SIGSTOP): /readyz turns 503, publish is 503, both recover."""
    [server] = gateways(1)
    async with httpx.AsyncClient(timeout=10) as client:

        async def ready_is(status: int, timeout: float) -> float:
            started = time.monotonic()
            with anyio.fail_after(timeout):
                while (await client.get(f"{server.url}/readyz")).status_code != status:
                    await anyio.sleep(0.05)
            return time.monotonic() - started

        await ready_is(200, 10)
        fresh_redis.pause()
        try:
            unready_after = await ready_is(503, 15)
            refused = await client.post(f"{server.url}/publish/fault:frozen", content=b"x")
            assert refused.status_code == 503 and refused.headers["retry-after"]
        finally:
            fresh_redis.resume()
        ready_after = await ready_is(200, 30)
        assert (
            await client.post(f"{server.url}/publish/fault:frozen", content=b"y")
        ).status_code == 201
    line = f"SIGSTOP: /readyz 503 after {unready_after:.2f}s; ready again {ready_after:.2f}s after SIGCONT"
    print(line)
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as out:
        out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def _redis_cli(redis: RedisServer, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(redis.port), *args], capture_output=True, text=True, check=True
    ).stdout.strip()
