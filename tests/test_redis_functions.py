"""The Redis Function library: versioned, no node's settings inside, every key declared.

Until v1 the history size was baked into one shared library that every node
loaded with ``REPLACE``: the node that loaded last capped every channel for
all of them, silently. These tests run real gateways on a real redis-server.
"""

from __future__ import annotations

import subprocess

import anyio
import httpx
import pytest
import redis

from gateway.brokers import functions
from tests.clients import Reader, publish, read_sse
from tests.conftest import gateway_env
from tests.servers import GatewayServer, RedisServer, wait_until

pytestmark = pytest.mark.anyio


def test_the_library_source_is_the_one_released_under_its_version():
    """Changing gateway.lua without bumping functions.VERSION would let two builds fight."""
    assert functions.source_digest() == functions.SOURCE_SHA256, (
        "gateway.lua changed: bump functions.VERSION and record the new digest"
    )


def _cli(server: RedisServer, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(server.port), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _stream_length(server: RedisServer, prefix: str, channel: str) -> int:
    return int(_cli(server, "XLEN", f"{prefix}:{{{channel}}}:h"))


async def test_two_nodes_with_different_history_sizes_keep_their_own_and_say_so(fresh_redis):
    """Node A keeps 1000, node B 20: A's publishes are not trimmed to 20, and both logs say they differ."""
    prefix = "gwsizes"
    big = GatewayServer(
        gateway_env("redis", fresh_redis, GATEWAY_HISTORY_SIZE="1000") | {"GATEWAY_REDIS_PREFIX": prefix}
    ).start()
    small = GatewayServer(
        gateway_env("redis", fresh_redis, GATEWAY_HISTORY_SIZE="20") | {"GATEWAY_REDIS_PREFIX": prefix}
    ).start()
    try:
        small.restart()  # loads the library again after the big one: the v1 failure mode
        async with httpx.AsyncClient(timeout=30) as client:
            for n in range(400):
                await publish(big.url, "sizes:a", f"m{n}", client=client)
        assert _stream_length(fresh_redis, prefix, "sizes:a") >= 400
        async with httpx.AsyncClient(timeout=30) as client:
            for n in range(400):
                await publish(small.url, "sizes:b", f"m{n}", client=client)
        assert 20 <= _stream_length(fresh_redis, prefix, "sizes:b") < 400
        for server, theirs in ((big, "20"), (small, "1000")):
            wait_until(lambda s=server, t=theirs: f"{t} on node" in s.log(), timeout=20)
            assert "GATEWAY_HISTORY_SIZE differs between gateway nodes" in server.log()
    finally:
        big.close()
        small.close()


async def test_redis_cli_publish_follows_the_deployments_history_size(fresh_redis):
    """The README's redis-cli line, with no cap given, trims to the gateways' setting (here 20)."""
    prefix = "gwcli"
    env = gateway_env("redis", fresh_redis, GATEWAY_HISTORY_SIZE="20") | {"GATEWAY_REDIS_PREFIX": prefix}
    server = GatewayServer(env).start()
    try:
        channel = "cli:follow"
        await publish(server.url, channel, "first, over http")  # records the cap
        keys = [key for key in functions.channel_keys(prefix, channel)]
        for n in range(400):
            _cli(fresh_redis, "FCALL", f"{prefix}_publish_v3", "3", *keys, f"cli {n}")
        assert 20 <= _stream_length(fresh_redis, prefix, channel) < 400
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"{server.url}/poll/{channel}", params={"last": 1, "timeout": 0}
            )
        answer = response.json()
        assert answer["messages"][0]["data"] == "cli 399"
    finally:
        server.close()


async def test_two_versions_of_the_library_live_side_by_side(fresh_redis):
    """An older version's library (another name) is neither replaced nor breaks this one."""
    client = redis.Redis(port=fresh_redis.port, protocol=2)
    try:
        old = "#!lua name=gw_gateway\nredis.register_function('gw_publish', function() return 'v1' end)"
        client.function_load(old)
        server = GatewayServer(gateway_env("redis", fresh_redis) | {"GATEWAY_REDIS_PREFIX": "gw"}).start()
        try:
            message_id = await publish(server.url, "versions:a", "hello")
            names = {lib[b"library_name"] for lib in _libraries(client)}
            assert {b"gw_gateway", b"gw_gateway_v3"} <= names
            assert client.fcall("gw_publish", 0) == b"v1"
            server.restart()  # loading again replaces nothing and fails nothing
            assert await publish(server.url, "versions:a", "again") > message_id
            assert "differs from this node's" not in server.log()
        finally:
            server.close()
    finally:
        client.close()


async def test_a_modified_library_under_the_same_version_is_said(fresh_redis):
    """Same version name, other code: the node says so in its log instead of fighting."""
    client = redis.Redis(port=fresh_redis.port, protocol=2)
    try:
        source = functions.library_source("gw").replace("local DEFAULT_CAP", "-- modified\nlocal DEFAULT_CAP")
        client.function_load(source)
        server = GatewayServer(gateway_env("redis", fresh_redis) | {"GATEWAY_REDIS_PREFIX": "gw"}).start()
        try:
            assert "differs from this node's" in server.log()
        finally:
            server.close()
    finally:
        client.close()


def test_the_functions_refuse_undeclared_keys(redis_server):
    """A call naming only the pub/sub key (the v1 form) is refused with the usage, not half done."""
    client = redis.Redis(port=redis_server.port, protocol=2)
    try:
        client.function_load(functions.library_source("gwkeys"), replace=True)
        with pytest.raises(redis.ResponseError, match="usage: FCALL gwkeys_publish_v3 3"):
            client.fcall("gwkeys_publish_v3", 1, "gwkeys:{c}", "data")
        assert client.exists("gwkeys:{c}:h") == 0
        with pytest.raises(redis.ResponseError, match="invalid history cap"):
            client.fcall("gwkeys_publish_v3", 3, *functions.channel_keys("gwkeys", "c"), "d", "message", "0")
        assert client.exists("gwkeys:{c}:h") == 0
    finally:
        client.close()


def _libraries(client: redis.Redis) -> list[dict[bytes, object]]:
    return [
        dict(zip(lib[::2], lib[1::2], strict=True))
        for lib in client.execute_command("FUNCTION", "LIST")
    ]


async def test_an_older_node_subscribed_the_classic_way_hears_every_publish(fresh_redis):
    """A rolling deploy from a version without sharded pub/sub: its nodes SUBSCRIBE, and hear ours."""
    server = GatewayServer(gateway_env("redis", fresh_redis) | {"GATEWAY_REDIS_PREFIX": "gw"}).start()
    client = redis.Redis(port=fresh_redis.port, protocol=2)
    listener = client.pubsub()
    try:
        listener.subscribe("gw:{rolling:a}")
        assert listener.get_message(timeout=5)["type"] == "subscribe"
        message_id = await publish(server.url, "rolling:a", "heard by the old node")
        heard = listener.get_message(timeout=5)
        assert heard is not None and heard["type"] == "message"
        assert heard["data"] == b"\x00gw\x00" + message_id.encode() + b"\x00message\x00heard by the old node"
    finally:
        listener.close()
        client.close()
        server.close()


async def test_two_deployments_on_databases_7_and_8_hear_only_their_own(redis_server):
    """Same prefix, one Redis, databases 7 and 8: live and history stay apart, redis-cli included.

    Redis pub/sub ignores database numbers: before the database joined the
    prefix, db 8's reader got db 7's message live (a spurious gap).
    """
    base = redis_server.url.rsplit("/", 1)[0]
    prefix = "gwtenants"
    seven, eight = (
        GatewayServer(gateway_env("redis", redis_server) | {"REDIS_URL": f"{base}/{db}", "GATEWAY_REDIS_PREFIX": prefix}).start()
        for db in (7, 8)
    )
    try:
        channel = "tenants:room"
        readers = {name: Reader() for name in ("seven", "eight")}
        async with anyio.create_task_group() as tasks:
            for name, server in (("seven", seven), ("eight", eight)):
                tasks.start_soon(lambda s=server, r=readers[name]: read_sse(s.url, channel, r, 2))
            with anyio.fail_after(15):
                for reader in readers.values():
                    await reader.ready.wait()
            await publish(seven.url, channel, "from 7")
            # The README's redis-cli line, on database 7 with its prefix gwtenants@7.
            own = functions.deployment_prefix(prefix, f"{base}/7")
            assert own == f"{prefix}@7"
            keys = functions.channel_keys(own, channel)
            _cli(redis_server, "-n", "7", "FCALL", functions.function_name(own, "publish"), "3", *keys, "cli 7")
            await publish(eight.url, channel, "from 8")
            await publish(eight.url, channel, "more 8")
        assert [m["data"] for m in readers["seven"].messages] == ["from 7", "cli 7"]
        assert [m["data"] for m in readers["eight"].messages] == ["from 8", "more 8"]
    finally:
        seven.close()
        eight.close()
