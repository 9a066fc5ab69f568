"""Several gateway processes on one Redis, and publishing from Redis directly."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from tests.clients import TRANSPORTS, Reader, publish, reader_for, subscribed
from tests.conftest import gateway_env
from tests.servers import GatewayServer, RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def pair(redis_server: RedisServer):
    env = gateway_env("redis", redis_server)
    servers = [GatewayServer(env).start(), GatewayServer(env).start()]
    yield servers, env["GATEWAY_REDIS_PREFIX"], redis_server
    for server in servers:
        server.close()


async def _subscribe_everywhere(servers, channel, count, tasks):
    readers = []
    for server in servers:
        for transport in TRANSPORTS:
            reader = Reader()
            read = reader_for(transport, server)
            tasks.start_soon(lambda r=read, rd=reader: r(channel, rd, count, since="0"))
            readers.append(reader)
    with anyio.fail_after(15):
        for reader in readers:
            await reader.ready.wait()
    return readers


async def test_every_path_of_publishing_reaches_both_nodes_with_one_id(pair):
    """HTTP on one node, FCALL from redis-cli and redis-py, a WS frame on the other: same ids everywhere."""
    (first, second), prefix, redis = pair
    channel = "nodes:all-paths"
    async with anyio.create_task_group() as tasks:
        readers = await _subscribe_everywhere([first, second], channel, 4, tasks)
        ids = [await publish(first.url, channel, "over http", event="http")]
        cli = await anyio.run_process(
            [
                "redis-cli",
                "-p",
                str(redis.port),
                "FCALL",
                f"{prefix}_publish_v3",
                "3",
                f"{prefix}:{{{channel}}}",
                f"{prefix}:{{{channel}}}:h",
                f"{prefix}:{{{channel}}}:e",
                "from redis-cli",
                "cli",
            ],
        )
        ids.append(cli.stdout.decode().strip())
        client = aioredis.Redis(port=redis.port)
        try:
            keys = [f"{prefix}:{{{channel}}}", f"{prefix}:{{{channel}}}:h", f"{prefix}:{{{channel}}}:e"]
            raw = await client.fcall(f"{prefix}_publish_v3", 3, *keys, "from redis-py", "py")
            ids.append(raw.decode())
        finally:
            await client.aclose()
        async with websockets.connect(f"{second.ws_url}/ws/{channel}?since=0") as ws:
            await ws.send(json.dumps({"type": "publish", "data": "over ws", "event": "ws"}))
            while (frame := json.loads(await ws.recv()))["type"] != "ack":
                pass
            ids.append(frame["id"])
    expected = list(
        zip(ids, ["over http", "from redis-cli", "from redis-py", "over ws"], strict=True)
    )
    for reader in readers:
        assert [(m["id"], m["data"]) for m in reader.messages] == expected
        assert [m["event"] for m in reader.messages] == ["http", "cli", "py", "ws"]


async def test_a_cursor_from_one_node_resumes_on_the_other(pair):
    """Cursor taken on the first process; the second continues after it, exactly once."""
    (first, second), _, _ = pair
    channel = "nodes:resume"
    ids = [await publish(first.url, channel, f"m{n}") for n in range(8)]
    for transport in TRANSPORTS:
        seen = await reader_for(transport, first)(channel, Reader(), 3, since="0")
        cursor = seen.messages[2]["id"]  # a poll may bring more than asked: resume after the third
        resumed = await reader_for(transport, second)(channel, Reader(), 5, since=cursor)
        assert [m["id"] for m in resumed.messages] == ids[3:], transport


async def test_raw_publish_is_delivered_live_without_id(pair):
    """A plain PUBLISH of text on the channel's pub/sub name is fire-and-forget: live, no id, no history."""
    (first, _), prefix, redis = pair
    channel = "nodes:raw"
    async with subscribed(reader_for("websocket", first), channel, 1) as reader:
        await anyio.run_process(
            ["redis-cli", "-p", str(redis.port), "PUBLISH", f"{prefix}:{{{channel}}}", "raw text"]
        )
    assert reader.messages == [
        {"id": "", "channel": channel, "event": "message", "data": "raw text"}
    ]
    async with httpx.AsyncClient() as client:
        history = (
            await client.get(f"{first.url}/poll/{channel}", params={"since": "0", "timeout": 0})
        ).json()
    assert history["messages"] == []


async def test_trimmed_history_is_a_gap(redis_server):
    """A cursor older than the capped history gets the gap signal, then what remains."""
    env = gateway_env("redis", redis_server, GATEWAY_HISTORY_SIZE="10")
    server = GatewayServer(env).start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:  # one connection for 300 publishes
            ids = [await publish(server.url, "nodes:trim", f"m{n}", client=client) for n in range(300)]
        for transport in TRANSPORTS:
            reader = await reader_for(transport, server)("nodes:trim", Reader(), 10, since=ids[0])
            assert reader.gaps == 1 and reader.items[0] == {"type": "gap"}, transport
            got = [m["id"] for m in reader.messages]
            start = ids.index(got[0])
            assert start > 1 and got == ids[start : start + len(got)], transport
    finally:
        server.close()
