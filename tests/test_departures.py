"""Connections are counted honestly: a client that leaves frees its place within a second or two.

An idle SSE client's departure used to be noticed only at its next
heartbeat (up to ``GATEWAY_HEARTBEAT``), and a waiting poll's at its
timeout: near ``GATEWAY_MAX_CONNECTIONS`` real clients were refused for
seconds. Here the heartbeat and the poll timeout are long (20 s), the
channel is quiet, and each client leaves by closing its socket (a FIN) or
by resetting it (an RST); the places must come back at once.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import httpx
import pytest

from tests.clients import publish
from tests.conftest import gateway_env, redis_for
from tests.servers import GatewayServer

pytestmark = pytest.mark.anyio

LIMIT = 20
LEAVING = 5
FREED_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def full_house(broker: str, request: pytest.FixtureRequest):
    redis = redis_for(broker, request)
    env = gateway_env(
        broker,
        redis,
        GATEWAY_MAX_CONNECTIONS=str(LIMIT),
        GATEWAY_HEARTBEAT="20",
        GATEWAY_POLL_TIMEOUT="20",
    )
    server = GatewayServer(env).start()
    yield server
    server.close()


REQUESTS = {
    "sse": "/sse/{channel}",
    "sse-several": "/sse?channel={channel}&channel={channel}-b",
    "poll": "/poll/{channel}?timeout=20",
    "poll-several": "/poll?channel={channel}&channel={channel}-b&timeout=20",
}


async def _open(server: GatewayServer, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


def _leave(writer: asyncio.StreamWriter, how: str) -> None:
    if writer.is_closing():
        return
    if how == "reset":  # SO_LINGER 0: close sends an RST
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def _open_count(client: httpx.AsyncClient, server: GatewayServer) -> float:
    text = (await client.get(f"{server.url}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_connections{")
    )


@pytest.mark.parametrize("kind", list(REQUESTS))
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_client_that_leaves_a_quiet_channel_frees_its_place_at_once(
    full_house: GatewayServer, channel: str, kind: str, how: str
) -> None:
    """20 clients hold every place; 5 leave; within 2 s the gauge says 15 and 5 newcomers get in."""
    path = REQUESTS[kind].format(channel=channel)
    writers: list[asyncio.StreamWriter] = []
    try:
        await _leave_and_come_back(full_house, channel, path, how, writers)
    finally:
        for writer in writers:
            _leave(writer, "reset")
            await writer.wait_closed()


async def _leave_and_come_back(
    server: GatewayServer, channel: str, path: str, how: str, writers: list[asyncio.StreamWriter]
) -> None:
    clients = [await _open(server, path) for _ in range(LIMIT)]
    writers += [writer for _, writer in clients]
    async with httpx.AsyncClient(timeout=30) as http:
        deadline = time.monotonic() + 10
        while await _open_count(http, server) < LIMIT:
            assert time.monotonic() < deadline, "the clients never all connected"
            await asyncio.sleep(0.05)
        refused = await http.get(f"{server.url}/poll/{channel}", params={"timeout": 0})
        assert refused.status_code == 503
        for _, writer in clients[:LEAVING]:
            _leave(writer, how)
        left_at = time.monotonic()
        while await _open_count(http, server) > LIMIT - LEAVING:
            assert time.monotonic() - left_at < FREED_WITHIN_S, "places still held"
            await asyncio.sleep(0.02)
        newcomers = [await _open(server, path) for _ in range(LEAVING)]
        writers += [writer for _, writer in newcomers]
        while await _open_count(http, server) < LIMIT:  # a refused one is never counted
            assert time.monotonic() - left_at < 10, "the newcomers were not let in"
            await asyncio.sleep(0.02)
        await publish(server.url, channel, "answers the waiting polls", client=http)
        status = [(await reader.readline()).decode() for reader, _ in newcomers]
        assert all(" 200 " in line for line in status), status
        for writer in writers:
            _leave(writer, "reset")
        deadline = time.monotonic() + FREED_WITHIN_S * 2
        while await _open_count(http, server) > 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


async def test_a_websocket_that_leaves_frees_its_place_at_once(full_house, channel):
    """The WebSocket's reader sees the close: the same bound holds."""
    import websockets

    sockets = [await websockets.connect(f"{full_house.ws_url}/ws/{channel}") for _ in range(LIMIT)]
    async with httpx.AsyncClient(timeout=30) as http:
        assert await _open_count(http, full_house) == LIMIT
        for ws in sockets[:LEAVING]:
            ws.transport.abort()  # no close frame: the TCP connection is just gone
        left_at = time.monotonic()
        while await _open_count(http, full_house) > LIMIT - LEAVING:
            assert time.monotonic() - left_at < FREED_WITHIN_S, "places still held"
            await asyncio.sleep(0.02)
    for ws in sockets[LEAVING:]:
        await ws.close()
