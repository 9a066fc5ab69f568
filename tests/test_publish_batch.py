"""Concurrent publishes share one Redis pipeline (brokers/publish_batch.py) and lose nothing.

Each caller must get its own id (the one readers see with its data), ids
must follow the acknowledgements of one connection, every acknowledged
message must be read once and in id order, and a Redis lost mid-batch must
never turn into a 2xx for a message it did not store.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.brokers.redis import RedisBroker
from gateway.errors import BrokerUnavailable
from gateway.message import Message
from gateway.settings import Settings
from tests.clients import read_sse, subscribed
from tests.conftest import gateway_env
from tests.servers import GatewayServer, RedisServer

pytestmark = pytest.mark.anyio

CONNECTIONS = 20
EACH = 25


def position(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.rpartition(":")[2].partition("-")
    return int(ms), int(seq)


async def publish_all(base: str, channel: str, prefix: str, count: int) -> list[tuple[str, str]]:
    """``count`` publishes one after another on one keep-alive connection: (id, data)."""
    acked: list[tuple[str, str]] = []
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=1)) as client:
        for n in range(count):
            data = f"{prefix}-{n}"
            response = await client.post(f"{base}/publish/{channel}", content=data.encode())
            assert response.status_code == 201, response.text
            acked.append((response.json()["id"], data))
    return acked


async def test_concurrent_publishes_are_read_once_in_id_order_with_their_own_ids(
    gateway: GatewayServer, channel: str
) -> None:
    """20 connections publishing at once: each id is its own message's, read once, in order."""
    total = CONNECTIONS * EACH
    results: dict[int, list[tuple[str, str]]] = {}

    async def one(n: int) -> None:
        results[n] = await publish_all(gateway.url, channel, f"c{n}", EACH)

    async with subscribed(
        lambda *a, **kw: read_sse(gateway.url, *a, **kw), channel, total
    ) as reader:
        async with anyio.create_task_group() as tasks:
            for n in range(CONNECTIONS):
                tasks.start_soon(one, n)
    for acked in results.values():
        ids = [position(message_id) for message_id, _ in acked]
        assert ids == sorted(ids) and len(set(ids)) == len(ids), "one connection's ids ascend"
    sent = {message_id: data for acked in results.values() for message_id, data in acked}
    read = [(m["id"], m["data"]) for m in reader.messages]
    assert len(read) == total and len(sent) == total
    assert dict(read) == sent, "every reader sees each id with the data its publisher got it for"
    positions = [position(message_id) for message_id, _ in read]
    assert positions == sorted(positions) and len(set(positions)) == total


async def test_publish_route_answers_around_it_as_the_router_did(
    gateway: GatewayServer, channel: str
) -> None:
    """Past the router, /publish/… still says 405 (with Allow), 404 and 400 as Starlette did."""
    async with httpx.AsyncClient(timeout=30) as client:
        wrong_method = await client.get(f"{gateway.url}/publish/{channel}")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert wrong_method.text == "Method Not Allowed"
        assert (await client.post(f"{gateway.url}/publish/")).status_code == 404
        assert (await client.post(f"{gateway.url}/publish")).status_code == 404
        bad = await client.post(f"{gateway.url}/publish/a%20b", content=b"x")
        assert bad.status_code == 400 and "invalid channel name" in bad.json()["error"]
        ok = await client.post(f"{gateway.url}/publish/{channel}?event=e.1", content=b"hi")
        assert ok.status_code == 201 and ok.headers["content-type"] == "application/json"
        assert ok.json() == {"id": ok.json()["id"], "channel": channel}


def _gateway_connections(redis: RedisServer) -> int:
    listing = subprocess.run(
        ["redis-cli", "-p", str(redis.port), "CLIENT", "LIST"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(1 for line in listing.splitlines() if "cmd=client|list" not in line)


async def test_concurrent_publishes_share_a_connection_to_redis(fresh_redis: RedisServer) -> None:
    """100 publishes at once over 50 connections go out as pipelines, not on 50 Redis connections."""
    server = GatewayServer(gateway_env("redis", fresh_redis)).start()
    try:
        before = _gateway_connections(fresh_redis)
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            for _ in range(3):
                answers = await asyncio.gather(
                    *(
                        client.post(f"{server.url}/publish/batch:share", content=b"x%d" % n)
                        for n in range(100)
                    )
                )
                assert {a.status_code for a in answers} == {201}
        after = _gateway_connections(fresh_redis)
        # (the pub/sub link and one or two pool connections for the canary and the batches)
        assert after - before <= 3, f"{before} connections to Redis before, {after} after"
    finally:
        server.close()


async def test_redis_killed_mid_batch_never_acknowledges_an_unstored_publish() -> None:
    """SIGKILL under 40 publishing connections: each is a 201 whose message survives, or a 5xx."""
    redis = RedisServer(appendonly=True).start()  # appendfsync always: a reply means stored
    server = GatewayServer(gateway_env("redis", redis)).start()
    channel = "batch:killed"
    acked: dict[str, str] = {}
    statuses: list[int] = []
    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=40)) as c:
            killed = anyio.Event()

            async def keep_publishing(n: int) -> None:
                for k in range(1000):
                    data = f"p{n}-{k}"
                    response = await c.post(f"{server.url}/publish/{channel}", content=data)
                    statuses.append(response.status_code)
                    if response.status_code == 201:
                        acked[response.json()["id"]] = data
                    elif killed.is_set():
                        return

            async with anyio.create_task_group() as tasks:
                for n in range(40):
                    tasks.start_soon(keep_publishing, n)
                with anyio.fail_after(30):
                    while len(acked) < 400:
                        await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(redis.stop)
                killed.set()
        refused = [s for s in statuses if s != 201]
        assert refused and set(refused) <= {503, 504}, f"refusals: {sorted(set(refused))}"
        await anyio.to_thread.run_sync(redis.start)
        with anyio.fail_after(30):
            async with httpx.AsyncClient(timeout=30) as client:
                while (await client.get(f"{server.url}/readyz")).status_code != 200:
                    await anyio.sleep(0.1)
                kept: dict[str, str] = {}
                since = "0"
                while True:
                    params = {"since": since, "limit": 1000, "timeout": 0}
                    page = (await client.get(f"{server.url}/poll/{channel}", params=params)).json()
                    kept.update((m["id"], m["data"]) for m in page["messages"])
                    if not page["messages"]:
                        break
                    since = page["cursor"]
        lost = {i: d for i, d in acked.items() if kept.get(i) != d}
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged publishes are not stored"
    finally:
        server.close()
        redis.close()


async def test_stopping_the_broker_fails_publishes_waiting_in_a_batch(
    fresh_redis: RedisServer,
) -> None:
    """A broker stopped while its pipeline hangs (Redis paused): every waiting caller is told."""
    settings = Settings.from_env({"REDIS_URL": fresh_redis.url, "GATEWAY_REDIS_PREFIX": "stopb"})
    broker = RedisBroker(settings)
    await broker.start(_Listener())
    try:
        await broker.publish("stop:me", "message", "warm")
        fresh_redis.pause()
        waiting = [
            asyncio.ensure_future(broker.publish("stop:me", "message", f"{n}")) for n in range(50)
        ]
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in waiting)
        await broker.stop()
        with anyio.fail_after(5):
            outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(o, BrokerUnavailable) for o in outcomes), outcomes
    finally:
        fresh_redis.resume()
        await broker.stop()


class _Listener:
    def on_messages(self, messages: list[Message]) -> None:
        pass

    def on_link_restored(self) -> None:
        pass

    def on_channels_restored(self, channels: list[str]) -> None:
        pass


@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(["FCALL", "FCALL_RO", "PUBLISH"]),  # (a command's name comes first)
            st.lists(
                st.one_of(st.text(max_size=120), st.integers(-(2**63), 2**63 - 1)), max_size=8
            ),
        ).map(lambda named: (named[0], *named[1])),
        max_size=6,
    )
)
@settings(max_examples=200, deadline=None)
def test_a_pipeline_is_packed_as_redis_py_packs_each_command(calls: list[Any]) -> None:
    """publish_link.pack (with its memo of short arguments, filled and cleared as it goes:
    at most 8 here) writes the bytes redis-py's own packer writes, call after call."""
    from redis.asyncio.connection import Connection

    from gateway.brokers import publish_link

    expected = b"".join(b"".join(Connection().pack_command(*call)) for call in calls)
    most = publish_link._PACKED_MOST
    publish_link._PACKED_MOST = 8
    publish_link._packed.clear()  # (what other tests' publishes left)
    try:
        assert publish_link.pack(calls) == expected
        assert publish_link.pack(calls) == expected  # (the short arguments from the memo)
        assert len(publish_link._packed) <= 8
    finally:
        publish_link._PACKED_MOST = most
        publish_link._packed.clear()
