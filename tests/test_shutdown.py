"""SIGTERM, as a platform sends on every deploy: clients are told to reconnect,
the process exits within GATEWAY_SHUTDOWN_GRACE, and nothing is lost when
each client resumes with its cursor on another server sharing the Redis.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import TRANSPORTS, publish
from tests.resilient import Follower, Producer, assert_exactly_once_in_order, follow, wait_for_all
from tests.servers import GatewayServer, RedisServer
from tests.sse_client import Event, events

pytestmark = pytest.mark.anyio

GRACE_S = 5
# uvicorn drains, restores the default handler and re-raises the signal it caught.
CLEAN_EXIT = (0, -signal.SIGTERM)


async def open_connections(server: GatewayServer) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{server.url}/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_connections":
            return {s.labels["transport"]: s.value for s in family.samples}
    raise AssertionError("no gateway_connections gauge")


async def sigterm(server: GatewayServer) -> tuple[int, float]:
    """SIGTERM the server and wait for it to exit: its exit code and how long it took."""
    started = time.monotonic()
    code = await anyio.to_thread.run_sync(server.terminate)
    return code, time.monotonic() - started


@pytest.fixture
def lone_server() -> Iterator[GatewayServer]:
    server = GatewayServer({"REDIS_URL": "", "GATEWAY_SHUTDOWN_GRACE": str(GRACE_S)}).start()
    yield server
    server.close()


async def terminated_with_every_client(
    server: GatewayServer, channel: str, cursor: str
) -> tuple[dict[str, Any], int, float]:
    """An SSE stream, a WebSocket and a poll waiting at ``cursor``; SIGTERM once all are open.

    Returns what each saw (the SSE events, the WebSocket's close frame, the
    poll's status, body and time), the exit code and how long the exit took.
    """
    seen: dict[str, Any] = {}

    async def sse() -> None:
        async with httpx.AsyncClient(timeout=30) as client, \
                client.stream("GET", f"{server.url}/sse/{channel}") as response:
            seen["sse"] = [event async for event in events(response)]

    async def ws() -> None:
        async with websockets.connect(f"{server.ws_url}/ws/{channel}", compression=None) as sock:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await sock.recv()
            seen["websocket"] = closed.value.rcvd

    async def poll() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            answer = await client.get(f"{server.url}/poll/{channel}", params={"since": cursor, "timeout": 25})
            seen["poll"] = (answer.status_code, answer.json(), time.monotonic())

    async with anyio.create_task_group() as tasks:
        for client in (sse, ws, poll):
            tasks.start_soon(client)
        with anyio.fail_after(15):
            while await open_connections(server) != {"websocket": 1, "sse": 1, "poll": 1}:
                await anyio.sleep(0.05)
        code, took = await sigterm(server)
    return seen, code, took


async def test_sigterm_tells_every_client_to_reconnect_and_exits_within_the_grace(lone_server, channel):
    """SSE gets retry: then its end, WebSocket 1012, a waiting poll its answer; exit in time."""
    server = lone_server
    cursor = await publish(server.url, channel, "before")
    seen, code, took = await terminated_with_every_client(server, channel, cursor)
    assert code in CLEAN_EXIT and took < GRACE_S + 2, (code, took)
    retry_hints = [event for event in seen["sse"] if isinstance(event, Event) and event.retry]
    assert len(retry_hints) == 1 and seen["sse"][-1] is retry_hints[-1]  # at the end: reconnect
    assert seen["websocket"] is not None and seen["websocket"].code == 1012
    status, body, answered_at = seen["poll"]
    assert status == 200 and body["messages"] == [] and body["cursor"] == cursor
    assert answered_at - (time.monotonic() - took) < GRACE_S  # answered, not left to time out
    closes = [line for line in server.log().splitlines() if " close conn=" in line]
    for transport in TRANSPORTS:
        [line] = [line for line in closes if f"transport={transport} " in line]
        assert 'reason="server shutting down"' in line, line


@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[tuple[GatewayServer, GatewayServer]]:
    """Two gateways sharing one Redis (same prefix), as two nodes of a deployment."""
    env = {"REDIS_URL": redis_server.url, "GATEWAY_REDIS_PREFIX": f"gwshut{time.monotonic_ns()}",
           "GATEWAY_SHUTDOWN_GRACE": str(GRACE_S), "GATEWAY_HEARTBEAT": "1"}
    first, second = GatewayServer(env).start(), GatewayServer(env).start()
    yield first, second
    first.close()
    second.close()


async def test_clients_of_a_terminated_node_resume_on_another_and_lose_nothing(pair, channel):
    """Mid-stream SIGTERM: SSE, WebSocket and poll clients move to the second node, gap-free."""
    doomed, survivor = pair
    followers = {transport: Follower() for transport in TRANSPORTS}
    producer = Producer()
    async with anyio.create_task_group() as tasks:
        for transport, follower in followers.items():
            tasks.start_soon(follow, transport, [doomed, survivor], channel, follower, "0")
        with anyio.fail_after(15):
            for follower in followers.values():
                await follower.ready.wait()
        tasks.start_soon(producer.run, [survivor], channel, 300)
        with anyio.fail_after(30):
            while len(producer.acked) < 50:
                await anyio.sleep(0.01)
        code, took = await sigterm(doomed)
        with anyio.fail_after(60):
            while len(producer.acked) < 300:
                await anyio.sleep(0.05)
        await wait_for_all(list(followers.values()), producer.acked[-1])
        tasks.cancel_scope.cancel()
    assert code in CLEAN_EXIT and took < GRACE_S + 2, (code, took)
    for transport, follower in followers.items():
        assert follower.reconnects >= 1, transport
        assert follower.gaps == 0, transport
        assert_exactly_once_in_order(follower, producer.acked)


def test_a_gateway_whose_port_is_taken_exits_with_the_reason(redis_server: RedisServer) -> None:
    """``python -m gateway`` on Redis, its port already bound: uvicorn says why and stops the
    app at once. It hung at that shutdown: the broker's pub/sub reader, cancelled while its
    link loaded the Functions, lost the cancellation inside redis-py and read forever
    (SIGTERM too was waited out). brokers/base.cancel_and_wait cancels until it ends."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {
            **os.environ,
            "REDIS_URL": redis_server.url,
            "PORT": str(taken.getsockname()[1]),
            "LOG_LEVEL": "info",
        }
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode != 0, done.stderr[-2000:]
    assert "Address already in use" in done.stderr or "address already in use" in done.stderr
    assert "Application shutdown complete" in done.stderr, done.stderr[-2000:]
    assert time.monotonic() - started < 30
