"""Publish frames answered in uvicorn's protocol (ws-frames) answer as the reader task does.

Two gateways as the Procfile runs them, on one Redis under two prefixes (the
same channel names, histories of their own): one with every acceleration,
where ``/ws`` publish frames are answered in the protocol's callback
(gateway/transports/ws_publishing.py), one with ``ws-frames`` off, where
every frame goes through ASGI to the reader task. The same frames, sent
one by one and pipelined, must get the same answers in the same order (ids
aside: each has its own), and the same messages must be stored: a refused
publish stores nothing on either.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import jwt
import pytest
import websockets

from gateway.settings import ALL_ACCELERATIONS
from tests.servers import GatewayServer, RedisServer

pytestmark = pytest.mark.anyio

SECRET = "w" * 40
RATE = 20  # GATEWAY_PUBLISH_RATE: a burst of this many, then refusals
MAX_DATA = 100  # GATEWAY_MAX_MESSAGE_BYTES
ID = re.compile(r'"id":"[^"]*"')


def mint(**claims: Any) -> str:
    payload = {"sub": "u", "sub_channels": ["*"], "pub_channels": ["ok*"], **claims}
    return jwt.encode({"exp": int(time.time()) + 3600, **payload}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, GatewayServer]]:
    redis = RedisServer().start()
    env = {
        "REDIS_URL": redis.url,
        "GATEWAY_SECRET": SECRET,
        "GATEWAY_PUBLISH_RATE": str(RATE),
        "GATEWAY_MAX_MESSAGE_BYTES": str(MAX_DATA),
    }
    plain = ",".join(a for a in ALL_ACCELERATIONS if a != "ws-frames")
    pair = {
        "fast": GatewayServer({**env, "GATEWAY_REDIS_PREFIX": "fast"}, procfile=True),
        "plain": GatewayServer(
            {**env, "GATEWAY_REDIS_PREFIX": "plain", "GATEWAY_ACCELERATIONS": plain},
            procfile=True,
        ),
    }
    try:
        for server in pair.values():
            server.start()
        yield pair
    finally:
        for server in pair.values():
            server.close()
        redis.close()


@asynccontextmanager
async def connected(server: GatewayServer, token: str) -> AsyncIterator[Any]:
    async with websockets.connect(f"{server.ws_url}/ws?token={token}") as ws:
        yield ws


async def answers(ws: Any, count: int) -> list[str]:
    """The next ``count`` frames, ids masked (each gateway has its own)."""
    with anyio.fail_after(10):
        return [ID.sub('"id":"<id>"', await ws.recv()) for _ in range(count)]


def publish(channel: Any = "ok1", data: Any = "hello", **more: Any) -> str:
    return json.dumps({"type": "publish", "channel": channel, "data": data, **more})


ONE_BY_ONE: list[str | bytes] = [
    publish(),
    publish(data={"n": 1}, event="chat"),
    publish("nope"),  # no right to publish there
    publish(data="x" * (MAX_DATA + 1)),  # too large
    publish(event="a b"),  # a bad event name
    publish(event=5),
    publish("bad name"),
    json.dumps({"type": "publish", "data": "no channel"}),
    json.dumps({"type": "publish", "channel": "ok1"}),  # no data
    "not json",
    "[1, 2]",
    b"binary",
    json.dumps({"type": "ping"}),
    publish("ok2", "after the ping"),
]


async def one_by_one(server: GatewayServer) -> list[str]:
    seen: list[str] = []
    async with connected(server, mint()) as ws:
        for frame in ONE_BY_ONE:
            await ws.send(frame)
            seen += await answers(ws, 1)
    return seen


async def test_the_fast_server_alone_answers_frames_in_the_protocol(
    servers: dict[str, GatewayServer],
) -> None:
    """What is compared: ``ws-frames`` on in one, off in the other (``/metrics`` says)."""
    for name, on in (("fast", 1.0), ("plain", 0.0)):
        async with httpx.AsyncClient(timeout=10) as client:
            metrics = (await client.get(f"{servers[name].url}/metrics")).text
        assert f'gateway_acceleration{{name="ws-frames"}} {on}' in metrics, name


async def test_each_frame_is_answered_as_the_reader_answers_it(
    servers: dict[str, GatewayServer],
) -> None:
    """Acks and every refusal (right, size, event, channel, JSON, binary): the same frames."""
    fast, plain = [await one_by_one(servers[name]) for name in ("fast", "plain")]
    assert fast == plain
    assert fast[0] == '{"type":"ack","channel":"ok1","id":"<id>"}'
    assert sum('"ack"' in a for a in fast) == 3, fast


async def test_pipelined_frames_are_answered_in_the_order_they_came(
    servers: dict[str, GatewayServer],
) -> None:
    """Frames sent without waiting: one answer each, in order, each ack before its message."""
    burst = [
        publish("ok3", "a"),
        json.dumps({"type": "ping"}),
        publish("nope"),
        json.dumps({"type": "subscribe", "channel": "ok3"}),
        publish("ok3", "b"),
        publish("ok3", "c"),
    ]
    seen = {}
    for name in ("fast", "plain"):
        async with connected(servers[name], mint()) as ws:
            for frame in burst:
                await ws.send(frame)
            with anyio.fail_after(10):
                got = [json.loads(await ws.recv()) for _ in range(8)]  # 6 answers, 2 messages
        acked = [f["id"] for f in got if f["type"] == "ack"]
        delivered = [f["id"] for f in got if f["type"] == "message"]
        assert delivered == acked[-2:], got
        for message_id in delivered:
            assert got.index(next(f for f in got if f.get("id") == message_id)) < max(
                i for i, f in enumerate(got) if f.get("id") == message_id
            ), got  # (the ack first)
        seen[name] = [f["type"] for f in got if f["type"] != "message"]
    assert seen["fast"] == seen["plain"] == ["ack", "pong", "error", "subscribed", "ack", "ack"]


async def test_a_burst_past_the_rate_is_refused_alike(servers: dict[str, GatewayServer]) -> None:
    """``GATEWAY_PUBLISH_RATE`` per connection: the burst's allowance, then refusals."""
    seen = {}
    for name in ("fast", "plain"):
        async with connected(servers[name], mint()) as ws:
            for n in range(RATE + 5):
                await ws.send(publish("ok4", f"r{n}"))
            seen[name] = await answers(ws, RATE + 5)
    assert seen["fast"] == seen["plain"]
    assert [json.loads(f)["type"] for f in seen["fast"]] == ["ack"] * RATE + ["error"] * 5


async def test_a_frame_past_the_limit_closes_the_socket_alike(
    servers: dict[str, GatewayServer],
) -> None:
    """A frame larger than ``GATEWAY_WS_MAX_FRAME_BYTES``: close 1009 on both, nothing stored."""
    codes = {}
    for name in ("fast", "plain"):
        async with connected(servers[name], mint()) as ws:
            await ws.send(publish("ok5", "y" * 200_000))
            with anyio.fail_after(10), pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            codes[name] = closed.value.rcvd.code if closed.value.rcvd else None
    assert codes == {"fast": 1009, "plain": 1009}


async def test_only_what_was_acked_is_stored_in_order(servers: dict[str, GatewayServer]) -> None:
    """After the frames above: each channel's history holds the acked publishes alone, in order."""
    stored = {}
    for name, server in servers.items():
        async with httpx.AsyncClient(timeout=10) as client:
            got = await client.get(
                f"{server.url}/poll",
                params=[("channel", f"ok{n}@0") for n in range(1, 6)] + [("timeout", "0")],
                headers={"Authorization": f"Bearer {mint()}"},
            )
        assert got.status_code == 200, got.text
        stored[name] = [(m["channel"], m["event"], m["data"]) for m in got.json()["messages"]]
    assert stored["fast"] == stored["plain"]
    assert ("ok1", "chat", '{"n":1}') in stored["fast"]
    assert not [s for s in stored["fast"] if s[0] == "ok5"]
