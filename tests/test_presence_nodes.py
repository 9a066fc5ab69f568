"""Presence across gateway nodes on one Redis: each other's members, dead nodes, a wiped Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import pytest
import redis.asyncio as aioredis

from gateway.brokers.presence_redis import VERSION, library_source, presence_keys
from tests.conftest import gateway_env
from tests.presence_clients import Watcher, members, snapshot, snapshot_until, watch_ws, watching
from tests.servers import GatewayServer, RedisServer

pytestmark = pytest.mark.anyio

DEAD_NODE_LIMIT_S = 15.0


@pytest.fixture
def nodes(fresh_redis: RedisServer) -> Iterator[list[GatewayServer]]:
    """Three gateway nodes on a Redis of this test's own."""
    env = gateway_env("redis", fresh_redis)
    servers = [GatewayServer(env).start() for _ in range(3)]
    yield servers
    for server in servers:
        server.close()


async def test_nodes_see_each_others_members(nodes, channel):
    """A member on one node is in every node's snapshot, and its join reaches the others' watchers."""
    first, second, _ = nodes
    async with watching(second.ws_url, channel) as watcher:
        async with members(first.ws_url, channel, ["ann", "ann"]), members(second.ws_url, channel, ["ann", "ben"]):
            await watcher.until(["join"], "ann")
            await watcher.until(["join"], "ben")
            for node in nodes:
                await snapshot_until(node.url, channel, {"ann": 3, "ben": 1})
        await watcher.until(["join", "leave"], "ann")
        await watcher.until(["join", "leave"], "ben")


@pytest.mark.slow
async def test_a_killed_nodes_members_leave_once_within_15_s(nodes, channel):
    """SIGKILL: its users leave every view with one leave each, though two survivors sweep."""
    first, second, doomed = nodes
    watchers = [Watcher(), Watcher()]
    async with anyio.create_task_group() as tasks:
        for node, watcher in zip((first, second), watchers, strict=True):
            tasks.start_soon(watch_ws, node.ws_url, channel, watcher)
            await watcher.ready.wait()
        async with members(first.ws_url, channel, ["stay"]), members(doomed.ws_url, channel, ["gone", "gone", "also"]):
            for watcher in watchers:
                for user in ("stay", "gone", "also"):
                    await watcher.until(["join"], user)
            killed = time.monotonic()
            doomed.kill()
            for watcher in watchers:
                for user in ("gone", "also"):
                    await watcher.until(["join", "leave"], user, timeout=DEAD_NODE_LIMIT_S)
            took = time.monotonic() - killed
            assert took < DEAD_NODE_LIMIT_S
            await snapshot_until(first.url, channel, {"stay": 1}, timeout=1)
            await snapshot_until(second.url, channel, {"stay": 1}, timeout=1)
            await anyio.sleep(4)  # more sweeps of both survivors: no second leave
            for watcher in watchers:
                assert watcher.seen.count(("leave", "gone")) == 1
                assert watcher.of("stay") == ["join"]
        tasks.cancel_scope.cancel()


async def test_sigterm_removes_a_nodes_members_at_once(nodes, channel):
    """A node told to stop takes its members out of presence as it goes (no lease to wait for)."""
    first, _, leaving = nodes
    async with watching(first.ws_url, channel) as watcher:
        async with members(leaving.ws_url, channel, ["tess"]):
            await watcher.until(["join"], "tess")
            with anyio.fail_after(10):
                await anyio.to_thread.run_sync(leaving.terminate)
            took = await watcher.until(["join", "leave"], "tess", timeout=3)
        assert took < 3
        await snapshot_until(first.url, channel, {}, timeout=1)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["flushall", "restart"])
async def test_presence_is_rebuilt_after_redis_is_wiped(nodes, fresh_redis, channel, how):
    """FLUSHALL, or a restart without persistence: every node re-asserts its members within 15 s."""
    first, second, _ = nodes
    async with members(first.ws_url, channel, ["ivy", "ivy"]), members(second.ws_url, channel, ["jon"]):
        await snapshot_until(first.url, channel, {"ivy": 2, "jon": 1})
        wiped = time.monotonic()
        if how == "flushall":
            client = aioredis.from_url(fresh_redis.url)
            await client.flushall()
            await client.aclose()
        else:
            await anyio.to_thread.run_sync(fresh_redis.restart)
        with anyio.fail_after(DEAD_NODE_LIMIT_S):
            while True:
                try:
                    found = await snapshot(second.url, channel)
                    if {m["user"]: m["connections"] for m in found["members"]} == {"ivy": 2, "jon": 1}:
                        break
                except AssertionError:  # 503 while the broker link comes back
                    pass
                await anyio.sleep(0.2)
        assert time.monotonic() - wiped < DEAD_NODE_LIMIT_S


async def test_sweeps_at_once_announce_each_leave_once(redis_server, channel):
    """Twenty sweeps of an expired node, in flight together: one leave per user among them all."""
    prefix = f"gwsweep{time.monotonic_ns()}"
    client = aioredis.from_url(redis_server.url)
    try:
        await client.execute_command("FUNCTION", "LOAD", library_source(prefix))
        keys = presence_keys(prefix, channel)
        update = f"{prefix}_presence_update_{VERSION}"
        sweep = f"{prefix}_presence_sweep_{VERSION}"
        # node "dead" holds two users with a lease of 1 ms; node "live" holds one of them too
        await client.execute_command("FCALL", update, 5, *keys, "dead", 1, "u1", 2, "null", "u2", 1, "{}")
        await client.execute_command("FCALL", update, 5, *keys, "live", 60000, "u2", 1, "{}")
        await anyio.sleep(0.01)
        leaves: list[bytes] = []

        async def sweep_once() -> None:
            _, said = await client.execute_command("FCALL", sweep, 5, *keys, "live", 60000, 1)
            leaves.append(said)

        async with anyio.create_task_group() as tasks:
            for _ in range(20):
                tasks.start_soon(sweep_once)
        said = [s for s in leaves if s]
        assert len(said) == 1, leaves
        assert b'"u1"' in said[0] and b'"u2"' not in said[0]  # u2 is still held by "live"
        assert await client.hkeys(keys[2]) == [b"u2"]
    finally:
        await client.aclose()
