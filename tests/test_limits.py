"""Every bound is a setting with a clear error past it, on a real server.

Frame size, publish rate, connections per process, poll clamps, and the
slow consumer: a client that stops reading is cut off with its transport's
signal while a fast subscriber on the same channel gets everything and the
server's memory stays bounded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import publish, reader_for, subscribed
from tests.servers import GatewayServer
from tests.sse_client import events
from tests.test_security import ws_refusal

pytestmark = pytest.mark.anyio

QUEUE_SIZE = 16
FRAME_BYTES = 131072
MESSAGE_BYTES = 65536
POLL_LIMIT_MAX = 5


@pytest.fixture(scope="module")
def limited() -> Iterator[GatewayServer]:
    env = {
        "REDIS_URL": "", "GATEWAY_HEARTBEAT": "1", "GATEWAY_QUEUE_SIZE": str(QUEUE_SIZE),
        "GATEWAY_HISTORY_SIZE": "50", "GATEWAY_WS_MAX_FRAME_BYTES": str(FRAME_BYTES),
        "GATEWAY_MAX_MESSAGE_BYTES": str(MESSAGE_BYTES), "GATEWAY_PUBLISH_RATE": "2",
        "GATEWAY_POLL_TIMEOUT": "1", "GATEWAY_POLL_LIMIT_MAX": str(POLL_LIMIT_MAX),
    }
    server = GatewayServer(env).start()
    yield server
    server.close()


def rss_bytes(server: GatewayServer) -> int:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def wait_for(check: Any, timeout: float = 15) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.02)


# -- WebSocket frames and publish rate ---------------------------------------


async def test_a_websocket_frame_past_the_limit_is_closed_1009(limited, channel):
    """GATEWAY_WS_MAX_FRAME_BYTES holds without uvicorn's --ws-max-size; others are unaffected."""
    async with subscribed(reader_for("sse", limited), channel, 1) as reader:
        async with websockets.connect(f"{limited.ws_url}/ws/{channel}", compression=None) as ws:
            big_data = json.dumps({"type": "publish", "data": "x" * (MESSAGE_BYTES + 1)})
            await ws.send(big_data)  # under the frame limit: refused, connection kept
            assert json.loads(await ws.recv()) == {
                "type": "error", "reason": f"data larger than {MESSAGE_BYTES} bytes"}
            await ws.send(json.dumps({"type": "publish", "data": "y" * FRAME_BYTES}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            1009, f"frame larger than {FRAME_BYTES} bytes")
        await publish(limited.url, channel, "others carry on")
    assert [m["data"] for m in reader.messages] == ["others carry on"]


async def test_binary_frames_get_an_error_and_the_connection_stays(limited, channel):
    """A binary frame is answered with an error frame, not a dropped connection."""
    async with websockets.connect(f"{limited.ws_url}/ws/{channel}", compression=None) as ws:
        await ws.send(b'{"type":"publish","data":"x"}')
        assert json.loads(await ws.recv())["type"] == "error"
        await ws.send(json.dumps({"type": "publish", "data": "text is fine"}))
        assert json.loads(await ws.recv())["type"] in ("ack", "message")


async def test_publishing_faster_than_the_rate_gets_errors_then_recovers(limited, channel):
    """GATEWAY_PUBLISH_RATE=2: a burst of 20 publishes is partly refused, the socket stays open."""
    async with websockets.connect(f"{limited.ws_url}/ws/{channel}", compression=None) as ws:
        for n in range(20):
            await ws.send(json.dumps({"type": "publish", "data": str(n)}))
        replies = [await _reply(ws) for _ in range(20)]
        refused = [r for r in replies if r["type"] == "error"]
        assert refused and all(r["reason"] == "more than 2 publishes a second on this connection"
                               for r in refused)
        assert len(refused) < 20  # the burst allowance passed
        await anyio.sleep(1.1)  # a second refills the bucket
        await ws.send(json.dumps({"type": "publish", "data": "later"}))
        assert (await _reply(ws))["type"] == "ack"


async def _reply(ws: Any) -> dict[str, Any]:
    """The next ack or error, skipping the messages our own publishes produce."""
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] != "message":
            return dict(frame)


# -- Poll clamps --------------------------------------------------------------


async def test_poll_timeout_and_limit_are_clamped_to_the_settings(limited, channel):
    """timeout=1000 waits no longer than GATEWAY_POLL_TIMEOUT; limit is at most the maximum."""
    ids = [await publish(limited.url, channel, str(n)) for n in range(POLL_LIMIT_MAX + 3)]
    async with httpx.AsyncClient(timeout=60) as client:
        page = await client.get(f"{limited.url}/poll/{channel}", params={"since": "0", "limit": 10**9})
        assert [m["id"] for m in page.json()["messages"]] == ids[:POLL_LIMIT_MAX]
        with anyio.fail_after(20):  # 1000 s asked; a GATEWAY_POLL_TIMEOUT=1 server answers in ~1
            idle = await client.get(f"{limited.url}/poll/{channel}",
                                    params={"since": ids[-1], "timeout": 1000})
    assert idle.json()["messages"] == [] and idle.json()["cursor"] == ids[-1]


# -- Connections per process -------------------------------------------------


@asynccontextmanager
async def open_sse(client: httpx.AsyncClient, url: str) -> AsyncIterator[httpx.Response]:
    """An SSE stream held open once the gateway has said it is subscribed."""
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        # Hold the iterator: a dropped one is finalised, and that closes the response.
        stream = events(response)
        assert (await anext(stream)).event == ":"  # the opening comment: subscribed
        yield response


async def test_past_max_connections_new_clients_get_503_or_1013(channel):
    """GATEWAY_MAX_CONNECTIONS=3: the fourth is refused on every transport; the three carry on."""
    server = GatewayServer({"REDIS_URL": "", "GATEWAY_MAX_CONNECTIONS": "3"}).start()
    try:
        async with subscribed(reader_for("websocket", server), channel, 1) as reader, \
                AsyncExitStack() as streams, httpx.AsyncClient(timeout=30) as client:
            first = await streams.enter_async_context(open_sse(client, f"{server.url}/sse/{channel}"))
            await streams.enter_async_context(open_sse(client, f"{server.url}/sse/{channel}"))
            for route in ("sse", "poll"):
                full = await client.get(f"{server.url}/{route}/{channel}", params={"timeout": 0})
                assert full.status_code == 503 and full.headers["retry-after"] == "5"
                assert "maximum" in full.json()["error"]
            code, reason = await ws_refusal(f"{server.ws_url}/ws/{channel}")
            assert code == 1013 and "maximum" in reason
            await publish(server.url, channel, "the three are served")
            await first.aclose()  # one leaves: room for one more
            await _eventually_ok(client, f"{server.url}/poll/{channel}")
        assert [m["data"] for m in reader.messages] == ["the three are served"]
    finally:
        server.close()


async def _eventually_ok(client: httpx.AsyncClient, url: str) -> None:
    with anyio.fail_after(15):
        while (await client.get(url, params={"timeout": 0})).status_code != 200:
            await anyio.sleep(0.05)


# -- Slow consumers -----------------------------------------------------------

SLOW_MESSAGES = 1000
SLOW_DATA = "z" * 32768


@asynccontextmanager
async def stalled_sse(server: GatewayServer, channel: str) -> AsyncIterator[AsyncIterator[Any]]:
    """An SSE client that reads the first hint, then stops reading until the test resumes it.

    (Its socket keeps the kernel's buffer sizes: a tiny SO_RCVBUF on loopback
    makes TCP fall back on slow zero-window probes, a test of TCP, not of us.)
    """
    async with httpx.AsyncClient(timeout=60) as client, \
            client.stream("GET", f"{server.url}/sse/{channel}") as response:
        stream = events(response)
        assert (await anext(stream)).event == ":"  # the opening comment: subscribed
        yield stream


async def test_a_slow_sse_client_is_cut_off_and_a_fast_one_gets_everything(limited, channel):
    """The stream of a client that stops reading ends with a retry hint; RSS stays bounded."""
    async with stalled_sse(limited, channel) as slow:
        ids, growth = await _flood(limited, channel)
        seen = [event async for event in slow]
    messages = [event for event in seen if event.event == "message"]
    assert 0 < len(messages) < SLOW_MESSAGES
    assert [event.id for event in messages] == ids[: len(messages)]  # a prefix: resumable
    assert seen[-1].event == "" and seen[-1].retry is not None  # then "reconnect", then the end
    assert growth < len(SLOW_DATA) * SLOW_MESSAGES / 2


async def test_a_slow_websocket_is_closed_1013_lagged_and_a_fast_one_gets_everything(limited, channel):
    """A WebSocket that stops reading is closed 1013 "lagged"; RSS stays bounded."""
    url = f"{limited.ws_url}/ws/{channel}"
    # max_queue=1: the client library stops reading the socket once one frame waits.
    async with websockets.connect(url, max_queue=1, max_size=2**20, compression=None) as ws:
        ids, growth = await _flood(limited, channel)
        received: list[str] = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                received.append(json.loads(await ws.recv())["id"])
    assert 0 < len(received) < SLOW_MESSAGES and received == ids[: len(received)]
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "lagged")
    assert growth < len(SLOW_DATA) * SLOW_MESSAGES / 2


async def _flood(server: GatewayServer, channel: str) -> tuple[list[str], int]:
    """Publish SLOW_MESSAGES large messages, paced by a fast subscriber; return ids and RSS growth.

    The fast subscriber never lags more than a few messages (far below
    GATEWAY_QUEUE_SIZE), so only the stalled client can overflow.
    """
    ids: list[str] = []
    async with subscribed(reader_for("websocket", server), channel, SLOW_MESSAGES) as fast, \
            httpx.AsyncClient(timeout=30) as client:
        drops_before = await slow_consumer_drops(client, server)
        for n in range(SLOW_MESSAGES):
            if n == 50:
                baseline = rss_bytes(server)
            ids.append(await publish(server.url, channel, SLOW_DATA, client=client))
            with anyio.fail_after(30):
                while len(fast.messages) < n - 4:
                    await anyio.sleep(0.001)
        growth = rss_bytes(server) - baseline
        with anyio.fail_after(15):  # the server has cut the stalled client off
            while await slow_consumer_drops(client, server) <= drops_before:
                await anyio.sleep(0.05)
    assert [m["id"] for m in fast.messages] == ids
    return ids, growth


async def slow_consumer_drops(client: httpx.AsyncClient, server: GatewayServer) -> float:
    text = (await client.get(f"{server.url}/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_slow_consumer_drops":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    raise AssertionError("no gateway_slow_consumer_drops in /metrics")
