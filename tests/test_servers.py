"""Every promise on every ASGI server the README names (SPEC, "running it under any ASGI server").

Each setup serves the gateway as a user would: uvicorn with the gateway's
HTTP protocol (the Procfile), plain uvicorn with ``--http h11``, hypercorn
(HTTP/1.1 with its default worker process and with ``-w 0``, and HTTP/2
without TLS), granian, gunicorn with one uvicorn worker, and the README's
FastAPI and Starlette mounts on uvicorn. For each: a fair part
of the contract (ids and order on every transport, resume, several
channels), a departed client let go within 2 s (measured by the
``gateway_connections`` gauge and ``GATEWAY_MAX_CONNECTIONS`` places, as
tests/test_departures.py does), and SIGTERM: every client told to
reconnect, the process gone within the grace, no traceback.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import anyio
import h2.config
import h2.connection
import h2.settings
import httpx
import pytest

from gateway.hub import STALL_S
from gateway.server.shutdown import SERVER_STOP
from gateway.transports.departure import within
from tests.clients import TRANSPORTS, Reader, on_every_transport, publish, reader_for
from tests.conftest import gateway_env
from tests.servers import GatewayServer, RedisServer
from tests.sse_client import events
from tests.test_departures import LIMIT, _leave_and_come_back, _open_count
from tests.test_shutdown import CLEAN_EXIT, terminated_with_every_client

pytestmark = pytest.mark.anyio

# name: (GatewayServer options, the broker it runs on)
SETUPS: dict[str, tuple[dict[str, Any], str]] = {
    "uvicorn-procfile": ({}, "memory"),
    "uvicorn-h11": ({"http": "h11"}, "memory"),
    # The Procfile's server with every acceleration off: the plain ASGI path beside it.
    "uvicorn-plain": ({"env": {"GATEWAY_ACCELERATIONS": "none"}}, "memory"),
    "hypercorn": ({"server": "hypercorn"}, "memory"),  # one worker process, as by default
    "hypercorn-w0": ({"server": "hypercorn", "args": ["-w", "0"]}, "memory"),  # in-process
    "granian": ({"server": "granian"}, "memory"),
    "gunicorn": ({"server": "gunicorn"}, "memory"),  # with one uvicorn worker
    "fastapi-mount": ({"app": "tests.embedded_apps:fastapi_app", "mount": "/realtime"}, "redis"),
    "starlette-mount": (
        {"app": "tests.embedded_apps:starlette_app", "mount": "/realtime"},
        "redis",
    ),
}
GRACE_S = 5
FREED_WITHIN_S = 2.0


def _server(setup: str, redis: RedisServer | None, **extra: str) -> GatewayServer:
    options, broker = dict(SETUPS[setup][0]), SETUPS[setup][1]
    server = options.get("server", "uvicorn")
    if server != "uvicorn" and importlib.util.find_spec(server) is None:
        pytest.skip(f"{server} is not installed (requirements-dev.txt)")
    env = gateway_env(broker, redis if broker == "redis" else None, **extra)
    return GatewayServer({**env, **options.pop("env", {})}, **options)


@pytest.fixture(scope="module", params=list(SETUPS))
def served(request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    """The setup's server, shared by its module's tests: quiet channels, long timeouts."""
    redis = _redis_if_needed(request, request.param)
    server = _server(
        request.param,
        redis,
        GATEWAY_MAX_CONNECTIONS=str(LIMIT),
        GATEWAY_HEARTBEAT="20",
        GATEWAY_POLL_TIMEOUT="20",
    ).start()
    yield server
    server.close()


def _redis_if_needed(request: pytest.FixtureRequest, setup: str) -> RedisServer | None:
    if SETUPS[setup][1] != "redis":
        return None
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis


# -- the contract, in part ------------------------------------------------------


async def test_every_transport_gets_the_same_ids_in_order_and_resumes(served, channel):
    """SSE, WebSocket and poll see one publish sequence alike; each resumes after a cursor."""
    async with on_every_transport(served, channel, 3) as readers:
        ids = [await publish(served.url, channel, f"m{n}") for n in range(3)]
    for transport, reader in readers.items():
        assert [m["id"] for m in reader.messages] == ids, transport
    for transport in TRANSPORTS:
        resumed = await reader_for(transport, served)(channel, Reader(), 2, since=ids[0])
        assert [m["id"] for m in resumed.messages] == ids[1:], transport


async def test_several_channels_on_one_stream_and_one_poll(served, channel):
    """``/sse`` and ``/poll`` with two channels: each channel's messages, in order, with ids."""
    first, second = f"{channel}-a", f"{channel}-b"
    ids = [await publish(served.url, name, name) for name in (first, second, first)]
    params = [("channel", f"{first}@0"), ("channel", f"{second}@0")]
    async with httpx.AsyncClient(timeout=30) as client:
        answer = (await client.get(f"{served.url}/poll", params=[*params, ("timeout", "0")])).json()
        seen = []
        async with client.stream("GET", f"{served.url}/sse", params=params) as response:
            async for event in events(response):
                if event.event == "message":
                    seen.append(json.loads(event.data))
                if len(seen) == 3:
                    break
    assert sorted(m["id"] for m in answer["messages"]) == sorted(ids)
    assert answer["cursors"] == {first: ids[2], second: ids[1]}
    for messages in (answer["messages"], seen):
        assert [m["id"] for m in messages if m["channel"] == first] == [ids[0], ids[2]]
        assert [m["id"] for m in messages if m["channel"] == second] == [ids[1]]


# -- a client that left is let go -----------------------------------------------

REQUESTS = {
    "sse": "/sse/{channel}",
    "sse-several": "/sse?channel={channel}&channel={channel}-b",
    "poll": "/poll/{channel}?timeout=20",
    "poll-several": "/poll?channel={channel}&channel={channel}-b&timeout=20",
}


@pytest.mark.parametrize("kind", list(REQUESTS))
async def test_a_client_that_leaves_frees_its_place_within_two_seconds(served, channel, kind):
    """All places held on a quiet channel; five clients close their sockets; their places
    are free within 2 s and newcomers get in (tests/test_departures.py's measure)."""
    path = served.mount + REQUESTS[kind].format(channel=channel)
    writers: list[asyncio.StreamWriter] = []
    try:
        await _leave_and_come_back(served, channel, path, "close", writers)
    finally:
        for writer in writers:
            writer.close()


@pytest.fixture(scope="module")
def hypercorn_h2() -> Iterator[GatewayServer]:
    server = _server("hypercorn", None, GATEWAY_HEARTBEAT="20", GATEWAY_POLL_TIMEOUT="20")
    server.start()
    yield server
    server.close()


async def _h2_request(server: GatewayServer, path: str) -> tuple[Any, Any, Any]:
    """One HTTP/2 request without TLS (prior knowledge), left open: reader, writer, connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    head = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")]
    conn.send_headers(1, head, end_stream=True)
    writer.write(conn.data_to_send())
    await writer.drain()
    return reader, writer, conn


@pytest.mark.parametrize("kind", list(REQUESTS))
@pytest.mark.parametrize("how", ["reset-stream", "close"])
async def test_over_http2_a_client_that_leaves_is_let_go_within_two_seconds(
    hypercorn_h2, channel, kind, how
):
    """hypercorn, HTTP/2: a stream reset (a browser's cancelled fetch) or a closed connection."""
    path = REQUESTS[kind].format(channel=channel)
    async with httpx.AsyncClient(timeout=30) as http:
        _, writer, conn = await _h2_request(hypercorn_h2, path)
        with anyio.fail_after(10):
            while await _open_count(http, hypercorn_h2) < 1:
                await anyio.sleep(0.05)
        if how == "reset-stream":
            conn.reset_stream(1)
            writer.write(conn.data_to_send())
        else:
            writer.close()
        left_at = time.monotonic()
        while await _open_count(http, hypercorn_h2) > 0:
            assert time.monotonic() - left_at < FREED_WITHIN_S, "place still held"
            await anyio.sleep(0.02)
    writer.close()


async def test_over_http2_sse_and_poll_deliver(hypercorn_h2, channel):
    """httpx over HTTP/2 with prior knowledge: an SSE stream and a poll get the message."""
    async with httpx.AsyncClient(http1=False, http2=True, timeout=30) as client:
        cursor = (
            await client.get(f"{hypercorn_h2.url}/poll/{channel}", params={"timeout": 0})
        ).json()
        poll = asyncio.ensure_future(
            client.get(f"{hypercorn_h2.url}/poll/{channel}", params={"since": cursor["cursor"]})
        )
        async with client.stream("GET", f"{hypercorn_h2.url}/sse/{channel}") as response:
            assert response.http_version == "HTTP/2"
            message_id = await publish(hypercorn_h2.url, channel, "over h2")
            async for event in events(response):
                if event.event not in ("", ":"):
                    assert (event.id, event.data) == (message_id, "over h2")
                    break
        answer = (await poll).json()
    assert [m["id"] for m in answer["messages"]] == [message_id]


@pytest.mark.slow
async def test_over_http2_a_poll_whose_answer_cannot_leave_is_let_go(hypercorn_h2, channel):
    """A client that gives the stream no flow-control window: hypercorn's ``send`` of the
    answer never returns. The poll is let go ``hub.STALL_S`` (30 s) after its answer."""
    _, writer = await asyncio.open_connection("127.0.0.1", hypercorn_h2.port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
    )
    conn.initiate_connection()
    path = f"/poll/{channel}?timeout=1"
    head = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")]
    conn.send_headers(1, head, end_stream=True)
    writer.write(conn.data_to_send())
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as http:
        with anyio.fail_after(10):
            while await _open_count(http, hypercorn_h2) < 1:
                await anyio.sleep(0.05)
        await anyio.sleep(5)
        assert await _open_count(http, hypercorn_h2) == 1  # answered at 1 s, not sent
        with anyio.fail_after(STALL_S + 10):
            while await _open_count(http, hypercorn_h2) > 0:
                await anyio.sleep(0.5)
    assert time.monotonic() - started > STALL_S
    writer.close()


async def test_an_answer_whose_send_never_returns_is_given_up():
    """A poll's answer through ASGI is bounded: hypercorn's HTTP/2 send may wait for ever."""
    sent: list[str] = []

    async def stuck(message: Any) -> None:
        sent.append(message["type"])
        await anyio.sleep_forever()

    send = within(stuck, 0.2)
    started = time.monotonic()
    await send({"type": "http.response.start"})
    await send({"type": "http.response.body"})
    assert time.monotonic() - started < 1.0
    assert sent == ["http.response.start", "http.response.body"]  # the second given no time


# -- SIGTERM --------------------------------------------------------------------


@pytest.fixture(params=list(SETUPS))
def doomed(request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    redis = _redis_if_needed(request, request.param)
    server = _server(
        request.param, redis, GATEWAY_SHUTDOWN_GRACE=str(GRACE_S), GATEWAY_HEARTBEAT="20"
    ).start()
    yield server
    server.close()


@pytest.mark.slow
async def test_sigterm_tells_every_client_to_reconnect_and_exits_in_time(doomed, channel):
    """SSE ``retry:`` then its end, a waiting poll answered 200, WebSocket 1012, exit within
    the grace, no traceback in the log (tests/test_shutdown.py's clients)."""
    server = doomed
    cursor = await publish(server.url, channel, "before")
    seen, code, took = await terminated_with_every_client(server, channel, cursor)
    assert code in CLEAN_EXIT and took < GRACE_S + 2, (code, took)
    hints = [event for event in seen["sse"] if event.retry]
    assert len(hints) == 1 and seen["sse"][-1] is hints[-1], seen["sse"]
    status, body, _ = seen["poll"]
    assert status == 200 and body["messages"] == [] and body["cursor"] == cursor
    assert seen["websocket"] is not None and seen["websocket"].code == 1012
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.mark.slow
async def test_hypercorn_with_workers_on_the_embedded_broker_fails_visibly():
    """``hypercorn -w 2`` without REDIS_URL: one worker refuses, and the exit status says so."""
    if importlib.util.find_spec("hypercorn") is None:
        pytest.skip("hypercorn is not installed")
    server = GatewayServer({"REDIS_URL": ""}, server="hypercorn", args=["-w", "2"])
    try:
        proc = server.spawn()
        code = await anyio.to_thread.run_sync(lambda: proc.wait(30))
        assert code != 0, server.log()[-2000:]
        assert "refusing to start" in server.log()
    finally:
        server.close()


def test_a_signal_reaches_the_gateway_then_the_server_handler_it_came_before():
    """Where the server handles SIGTERM itself (granian's workers), the gateway hears it first,
    passes it on, and puts the server's handler back when the last gateway stops."""
    heard: list[int] = []

    def servers_own(number: int, frame: object) -> None:
        heard.append(number)

    previous = signal.signal(signal.SIGTERM, servers_own)
    try:
        with SERVER_STOP.watched():
            assert not SERVER_STOP.requested()
            signal.raise_signal(signal.SIGTERM)
            assert SERVER_STOP.requested() and heard == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is servers_own
        assert not SERVER_STOP.requested()
    finally:
        signal.signal(signal.SIGTERM, previous)
