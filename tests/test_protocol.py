"""The gateway's HTTP protocol (gateway/server/protocol.py): long-polls served without a task.

A caught-up ``GET /poll/{channel}`` is answered or parked inside uvicorn's
parser callback. These tests speak raw HTTP/1.1 over one socket, so that
what the fast path must keep is visible: keep-alive across polls,
pipelined requests answered in order, ``Connection: close`` and HTTP/1.0
honoured, HEAD and refusals answered as everywhere. One test runs uvicorn
in this process to see that a waiting poll holds no task at all.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.polls import Waiter
from gateway.server.protocol import GatewayHttpProtocol, Poll
from gateway.settings import Settings
from gateway.state import Connection
from tests.clients import publish
from tests.conftest import gateway_env, redis_for
from tests.servers import GatewayServer, free_port, uvicorn_here

pytestmark = pytest.mark.anyio

PROTOCOLS = {"ours": "gateway.server.protocol:GatewayHttpProtocol", "uvicorn's": "httptools"}


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def gateway(broker: str, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    """The module's gateway on the broker of this run, with our protocol and with uvicorn's own."""
    if request.param != "ours" and broker == "cluster":
        pytest.skip("uvicorn's own protocol: the ASGI path, checked on memory and redis")
    server = GatewayServer(
        gateway_env(broker, redis_for(broker, request)), http=PROTOCOLS[request.param]
    ).start()
    yield server
    server.close()


class Wire:
    """One raw HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Wire:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, *paths: str, method: str = "GET", extra: str = "", version: str = "1.1") -> None:
        """One request per path, all in one write (pipelined when several)."""
        self.writer.write(
            b"".join(
                f"{method} {path} HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()
                for path in paths
            )
        )

    async def response(self, *, body: bool = True) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0")) if body else 0
        content = await asyncio.wait_for(self.reader.readexactly(length), 30)
        return int(status_line.split()[1]), headers, content

    async def poll(self, path: str, **extra: str) -> dict[str, Any]:
        self.send(path, **extra)
        status, _, content = await self.response()
        assert status == 200, content
        answer: dict[str, Any] = json.loads(content)
        return answer

    def close(self, how: str = "close") -> None:
        if how == "reset":  # SO_LINGER 0: close sends an RST
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.close()


async def _joined(server: GatewayServer, channel: str) -> str:
    """Join the channel with a first poll (served through a subscription); its cursor."""
    async with httpx.AsyncClient(timeout=30) as http:
        first = http.get(f"{server.url}/poll/{channel}", params={"timeout": 10})
        async with anyio.create_task_group() as tasks:
            answers: list[httpx.Response] = []

            async def wait() -> None:
                answers.append(await first)

            tasks.start_soon(wait)
            await anyio.sleep(0.3)
            await publish(server.url, channel, "joined")
        return str(answers[0].json()["cursor"])


async def test_polls_on_one_connection_get_every_message_in_order(
    gateway: GatewayServer, channel: str
) -> None:
    cursor = await _joined(gateway, channel)
    wire = await Wire.open(gateway.port)
    got: list[str] = []
    try:
        for n in range(30):
            wire.send(f"/poll/{channel}?since={cursor}&timeout=10")
            if n % 2:
                await anyio.sleep(0.02)  # sometimes the poll waits, sometimes a message does
            await publish(gateway.url, channel, f"m{n}")
            status, headers, content = await wire.response()
            assert status == 200 and headers.get("connection") != "close"
            answer = json.loads(content)
            got += [message["data"] for message in answer["messages"]]
            cursor = answer["cursor"]
            while len(got) < n + 1:  # a message published after the answer left
                answer = await wire.poll(f"/poll/{channel}?since={cursor}&timeout=10")
                got += [message["data"] for message in answer["messages"]]
                cursor = answer["cursor"]
    finally:
        wire.close()
    assert got == [f"m{n}" for n in range(30)]


async def test_pipelined_polls_are_answered_in_order(gateway: GatewayServer, channel: str) -> None:
    start = await _joined(gateway, channel)
    ids = [await publish(gateway.url, channel, f"p{n}") for n in range(3)]
    # On Redis an acknowledged publish reaches the gateway's memory a moment later, and
    # a poll answers what is there (the rest comes to the next): wait until p2 has.
    async with httpx.AsyncClient(timeout=30) as http:
        since_p1 = {"since": ids[1], "timeout": 10}
        assert (await http.get(f"{gateway.url}/poll/{channel}", params=since_p1)).json()["messages"]
    wire = await Wire.open(gateway.port)
    try:
        wire.send(
            f"/poll/{channel}?since={start}",
            f"/poll/{channel}?since={ids[1]}&timeout=10",
            f"/poll/{channel}?since={ids[2]}&timeout=10",
        )
        first = json.loads((await wire.response())[2])
        second = json.loads((await wire.response())[2])
        await anyio.sleep(0.2)
        await publish(gateway.url, channel, "p3")
        third = json.loads((await wire.response())[2])
    finally:
        wire.close()
    assert [m["data"] for m in first["messages"]] == ["p0", "p1", "p2"]
    assert [m["data"] for m in second["messages"]] == ["p2"]
    assert [m["data"] for m in third["messages"]] == ["p3"]


@pytest.mark.parametrize("ask", ["connection-close", "http/1.0"])
async def test_a_client_that_asks_to_close_gets_its_answer_then_the_close(
    gateway: GatewayServer, channel: str, ask: str
) -> None:
    cursor = await _joined(gateway, channel)
    wire = await Wire.open(gateway.port)
    try:
        if ask == "connection-close":
            wire.send(f"/poll/{channel}?since={cursor}&timeout=10", extra="Connection: close\r\n")
        else:
            wire.send(f"/poll/{channel}?since={cursor}&timeout=10", version="1.0")
        await anyio.sleep(0.2)
        await publish(gateway.url, channel, "last")
        status, headers, content = await wire.response()
        assert status == 200 and json.loads(content)["messages"][0]["data"] == "last"
        assert headers.get("connection") == "close"
        assert await asyncio.wait_for(wire.reader.read(), 10) == b""  # the server closed
    finally:
        wire.close()


async def test_head_and_refusals_are_answered_as_on_every_route(
    gateway: GatewayServer, channel: str
) -> None:
    cursor = await _joined(gateway, channel)
    wire = await Wire.open(gateway.port)
    try:
        wire.send(f"/poll/{channel}?since={cursor}&timeout=0", method="HEAD")
        status, headers, _ = await wire.response(body=False)
        assert status == 200 and headers["content-type"] == "application/json"
        wire.send(f"/poll/{channel}?since={cursor}&timeout=soon")
        status, _, content = await wire.response()
        assert status == 400 and "timeout" in json.loads(content)["error"]
        wire.send(f"/poll/{channel}?since=not-an-id")
        status, _, content = await wire.response()
        assert status == 400 and json.loads(content)["error"]
        answer = await wire.poll(f"/poll/{channel}?since={cursor}&timeout=0")
        assert answer["messages"] == [] and answer["cursor"] == cursor
        for path in (f"/pollX{channel}", f"/polls/{channel}", "/poll/"):  # not poll routes
            wire.send(f"{path}?since={cursor}&timeout=1")
            status, _, _ = await wire.response()
            assert status in (404, 307), (path, status)
    finally:
        wire.close()


async def test_several_channels_on_one_connection_get_every_message_once(
    gateway: GatewayServer, channel: str
) -> None:
    """``/poll?channel=a@…&channel=b@…``: waits on both, answers with the first, cursors move."""
    a, b = f"{channel}-a", f"{channel}-b"
    cursors = {a: await _joined(gateway, a), b: await _joined(gateway, b)}
    wire = await Wire.open(gateway.port)
    got: dict[str, list[str]] = {a: [], b: []}
    try:
        for n in range(12):
            query = "&".join(f"channel={name}@{cursor}" for name, cursor in cursors.items())
            wire.send(f"/poll?{query}&timeout=10")
            if n % 2:
                await anyio.sleep(0.02)
            await publish(gateway.url, (a, b)[n % 3 == 0], f"m{n}")
            answer = json.loads((await wire.response())[2])
            assert answer["gaps"] == [] and set(answer["cursors"]) == {a, b}
            for message in answer["messages"]:
                got[message["channel"]].append(message["data"])
            cursors = answer["cursors"]
        timed_out = await wire.poll(
            f"/poll?cursor={answer['cursor']}&channel={a}&channel={b}&timeout=0.2"
        )
    finally:
        wire.close()
    assert got[b] == [f"m{n}" for n in range(12) if n % 3 == 0]
    assert got[a] == [f"m{n}" for n in range(12) if n % 3 != 0]
    assert timed_out["messages"] == [] and timed_out["cursors"] == cursors


async def _open_polls(client: httpx.AsyncClient, server: GatewayServer) -> float:
    text = (await client.get(f"{server.url}/metrics")).text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith('gateway_connections{transport="poll"}')
    )
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize("several", [False, True])
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_waiting_poll_whose_client_leaves_is_released_at_once(
    gateway: GatewayServer, channel: str, how: str, several: bool
) -> None:
    cursor = await _joined(gateway, channel)
    path = f"/poll/{channel}?since={cursor}&timeout=25"
    if several:
        other = await _joined(gateway, f"{channel}-b")
        path = f"/poll?channel={channel}@{cursor}&channel={channel}-b@{other}&timeout=25"
    wires = [await Wire.open(gateway.port) for _ in range(5)]
    async with httpx.AsyncClient(timeout=30) as http:
        try:
            before = await _open_polls(http, gateway)
            for wire in wires:
                wire.send(path)
            deadline = time.monotonic() + 10
            while await _open_polls(http, gateway) < before + 5:
                assert time.monotonic() < deadline, "the polls never all waited"
                await anyio.sleep(0.05)
        finally:
            for wire in wires:
                wire.close(how)
        left_at = time.monotonic()
        while await _open_polls(http, gateway) > before:
            assert time.monotonic() - left_at < 2.0, "the places were still held after 2 s"
            await anyio.sleep(0.05)


async def test_a_waiting_poll_holds_no_task(tmp_path: Any) -> None:
    """In this process: uvicorn with the gateway's protocol, and its set of request tasks."""
    app = create_app(Settings.from_env({"REDIS_URL": ""}))
    async with uvicorn_here(app, http=GatewayHttpProtocol) as server:
        await _waits_without_a_task(server, server.config.port)


async def test_the_keep_alive_sweep_holds_only_open_http_connections(tmp_path: Any) -> None:
    """keepalive.py: every HTTP connection is known to the sweep until it closes; one that
    becomes a WebSocket leaves it at the upgrade (it is the WebSocket protocol's then)."""
    import websockets

    from gateway.server.keepalive import HEADER_TIMEOUT_S, idle_connections

    app = create_app(Settings.from_env({"REDIS_URL": ""}))
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=GatewayHttpProtocol, log_level="warning"
    )
    server = uvicorn.Server(config)
    known = idle_connections(
        asyncio.get_running_loop(), config.timeout_keep_alive, HEADER_TIMEOUT_S
    )._connections

    async def settled(count: int) -> None:
        with anyio.fail_after(5):
            while len(known) != count:
                await anyio.sleep(0.02)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        while not server.started:
            await anyio.sleep(0.02)
        try:
            wire = await Wire.open(port)
            wire.send("/healthz")
            assert (await wire.response())[0] == 200
            await settled(1)
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/k", compression=None):
                await settled(1)  # the upgraded one is not there
            wire.close()
            await settled(0)
        finally:
            server.should_exit = True


async def _waits_without_a_task(server: uvicorn.Server, port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        assert (await http.post("/publish/quiet", content=b"a")).status_code == 201
        first = await http.get("/poll/quiet", params={"since": "0"})  # joins (a subscription)
        cursor = first.json()["cursor"]
        wire = await Wire.open(port)
        try:
            wire.send(f"/poll/quiet?since={cursor}&timeout=10")
            await anyio.sleep(0.3)
            assert not server.server_state.tasks, "the waiting poll has a task"
            assert (await http.post("/publish/quiet", content=b"x")).status_code == 201
            answer = json.loads((await wire.response())[2])
            assert [m["data"] for m in answer["messages"]] == ["x"]
            assert not server.server_state.tasks
            await _no_cycles_left(http, wire, answer["cursor"])
            await _several_wait_without_a_task(server, http, wire)
        finally:
            wire.close()


async def _several_wait_without_a_task(
    server: uvicorn.Server, http: httpx.AsyncClient, wire: Wire
) -> None:
    assert (await http.post("/publish/other", content=b"o")).status_code == 201
    await http.get("/poll/other", params={"since": "0"})  # joins it
    wire.send("/poll?channel=quiet&channel=other&timeout=10")
    await anyio.sleep(0.3)
    assert not server.server_state.tasks, "the waiting several-channel poll has a task"
    assert (await http.post("/publish/other", content=b"z")).status_code == 201
    answer = json.loads((await wire.response())[2])
    assert [(m["channel"], m["data"]) for m in answer["messages"]] == [("other", "z")]
    assert not server.server_state.tasks


async def _no_cycles_left(http: httpx.AsyncClient, wire: Wire, cursor: str) -> None:
    """Polls served in the protocol leave no reference cycle (they count so, collector.py)."""
    gc.collect()
    gc.disable()
    try:
        for n in range(20):
            wire.send(f"/poll/quiet?since={cursor}&timeout=10")
            if n % 2:
                await anyio.sleep(0.01)  # waits, or answered from memory at once
            assert (await http.post("/publish/quiet", content=b"y")).status_code == 201
            cursor = json.loads((await wire.response())[2])["cursor"]
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        ours = [o for o in gc.garbage if type(o) in (Poll, Waiter, Connection)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not ours


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(channel: str) -> None:
    """After a poll's answer the connection waits ``--timeout-keep-alive`` (1 s here), then closes."""
    server = GatewayServer(gateway_env("memory", None), args=["--timeout-keep-alive", "1"]).start()
    try:
        cursor = await _joined(server, channel)
        wire = await Wire.open(server.port)
        try:
            for _ in range(3):  # busy for longer than the timeout: kept open
                wire.send(f"/poll/{channel}?since={cursor}&timeout=0.6")
                status, _, content = await wire.response()
                assert status == 200 and json.loads(content)["messages"] == []
            answered_at = time.monotonic()
            assert await asyncio.wait_for(wire.reader.read(), 10) == b""
            idle_s = time.monotonic() - answered_at
            assert 0.9 <= idle_s <= 3.0, idle_s  # the timeout, and at most a sweep later
        finally:
            wire.close()
    finally:
        server.close()


async def test_repeated_headers_and_everything_around_them_on_one_connection(
    gateway: GatewayServer, channel: str
) -> None:
    """A poll with the very headers of the connection's last one is served unparsed
    (protocol.py ``_repeat_served``); other requests with those headers, changed headers,
    a request in two writes, and a framing header all still get their own answers."""
    cursor = await _joined(gateway, channel)
    wire = await Wire.open(gateway.port)
    got: list[str] = []

    async def poll(extra: str = "") -> None:
        nonlocal cursor
        wire.send(f"/poll/{channel}?since={cursor}&timeout=10", extra=extra)
        await anyio.sleep(0.02)
        await publish(gateway.url, channel, f"m{len(got)}")
        answer = json.loads((await wire.response())[2])
        got.extend(message["data"] for message in answer["messages"])
        cursor = answer["cursor"]

    try:
        for _ in range(3):
            await poll()
        wire.send("/healthz")  # the same headers, not a poll
        assert (await wire.response())[0] == 200
        wire.send(f"/poll/{channel}?since=bogus")  # the same headers, a refusal
        assert (await wire.response())[0] == 400
        for _ in range(2):
            await poll(extra="X-Client: 7\r\n")  # other headers, then those again
        for _ in range(2):
            await poll(extra="Content-Length: 0\r\n")  # framing: never taken as a repeat
        await poll()
        request = f"GET /poll/{channel}?since={cursor}&timeout=10 HTTP/1.1\r\nHost: t\r\n\r\n"
        wire.writer.write(request[:30].encode())  # one poll in two writes
        await anyio.sleep(0.05)
        wire.writer.write(request[30:].encode())
        await anyio.sleep(0.02)
        await publish(gateway.url, channel, f"m{len(got)}")
        answer = json.loads((await wire.response())[2])
        got.extend(message["data"] for message in answer["messages"])
        cursor = answer["cursor"]
        await poll()
    finally:
        wire.close()
    assert got == [f"m{n}" for n in range(10)]


async def test_a_repeated_poll_skips_the_parser_and_a_changed_one_does_not() -> None:
    """In this process, the protocol on a transport that keeps its writes: the second
    poll with the same headers never reaches httptools (its URL is not read)."""
    from uvicorn.server import ServerState

    app = create_app(Settings.from_env({"REDIS_URL": ""}))
    config = uvicorn.Config(app, http=GatewayHttpProtocol, log_level="warning")
    config.load()
    async with app.running() as gateway, gateway.hub.subscribe("r"):
        before = (await gateway.hub.publish("r", "message", "0")).cursor
        message = await gateway.hub.publish("r", "message", "a")
        await anyio.sleep(0.05)
        writes: list[bytes] = []
        protocol = GatewayHttpProtocol(config, ServerState(), {})
        protocol.connection_made(_Kept(writes))

        def poll(query: str, extra: str = "") -> None:
            line = f"GET /poll/r?{query} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"
            protocol.data_received(line.encode())

        poll(f"since={before}&limit=5")
        assert protocol.url == f"/poll/r?since={before}&limit=5".encode()
        assert protocol.repeat is not None and len(writes) == 1
        poll(f"since={before}&limit=7")
        assert protocol.url == f"/poll/r?since={before}&limit=5".encode()  # not read by httptools
        assert len(writes) == 2 and b'"data":"a"' in writes[1]
        poll(f"since={before}&limit=9", "X: 1\r\n")
        assert protocol.url == f"/poll/r?since={before}&limit=9".encode() and len(writes) == 3
        poll(f"since={message.cursor}&timeout=5", "X: 1\r\n")
        assert len(writes) == 3  # waits
        await gateway.hub.publish("r", "message", "b")
        with anyio.fail_after(5):
            while len(writes) < 4:
                await anyio.sleep(0.01)
        assert b'"data":"b"' in writes[3]
        protocol.connection_lost(None)


def test_a_poll_target_is_kept_once_served_never_with_a_token_and_bounded_by_bytes() -> None:
    """``poll_target`` reads a line; ``keep_target`` keeps a served one, then read from memory;
    never one with a token however spelled (``tok%65n``), nor one past ``MAX_LINE_BYTES``;
    the record stays under ``TARGETS_BYTES``; not a poll here: None."""
    from gateway.server import protocol

    def target(url: bytes) -> protocol.Target | None:
        return protocol.poll_target(b"GET " + url + b" HTTP/1.1", url)

    def served(url: bytes) -> None:
        line = b"GET " + url + b" HTTP/1.1"
        read = protocol.poll_target(line, url)
        assert read is not None, url
        protocol.keep_target(line, read)

    protocol._TARGETS.clear()
    line = b"GET /poll/a?since=1-0 HTTP/1.1"
    read = protocol.poll_target(line, b"/poll/a?since=1-0")
    assert read == protocol.Target(b"/poll/a", b"since=1-0", "a")
    assert line not in protocol._TARGETS  # read, not served yet: not kept
    protocol.keep_target(line, read)
    assert protocol.poll_target(line, b"/not/read/again") is read
    several = target(b"/poll?channel=a&channel=b")
    assert several is not None and several.channel is None
    for url in (b"/poll/a?since=1-0&token=abc", b"/poll/a?tok%65n=abc", b"/poll/a?%74oken=x"):
        served(url)
    assert [kept for kept in protocol._TARGETS if b"tok" in kept or b"%74" in kept] == []
    for url in (b"/pollx", b"/poll/", b"/poll/a%20b", b"/poll/a?x#y", "/poll/é".encode()):
        assert target(url) is None, url
    assert target(b"/poll/a?since=" + b"1" * protocol.MAX_LINE_BYTES) is None
    for n in range(5000):
        served(b"/poll/a?since=%d-0&pad=%s" % (n, b"x" * 500))
    assert 0 < sum(map(len, protocol._TARGETS)) <= protocol.TARGETS_BYTES


class _Kept(asyncio.Transport):
    """A transport that keeps what is written to it (no socket)."""

    def __init__(self, writes: list[bytes]) -> None:
        super().__init__()
        self.writes = writes
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 9) if name in ("sockname", "peername") else default


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def cross_origin(request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    """A gateway that allows one other origin (CORS), with our protocol and with uvicorn's."""
    env = {"REDIS_URL": "", "GATEWAY_ALLOWED_ORIGINS": "https://app.example"}
    server = GatewayServer(env, http=PROTOCOLS[request.param]).start()
    yield server
    server.close()


@pytest.mark.parametrize("origin", ["https://app.example", "https://elsewhere.example"])
async def test_a_cross_origin_poll_gets_the_cors_headers_on_every_path(
    cross_origin: GatewayServer, channel: str, origin: str
) -> None:
    """With ``Origin`` (a browser on another site): the same CORS headers as Starlette's
    middleware gives through ASGI, answered at once, parked, and repeated (cors.py)."""
    cursor = await _joined(cross_origin, channel)
    wire = await Wire.open(cross_origin.port)
    seen: list[dict[str, str]] = []
    try:
        for n in range(3):  # waits, then the same headers again (the repeat path)
            wire.send(f"/poll/{channel}?since={cursor}&timeout=10", extra=f"Origin: {origin}\r\n")
            await anyio.sleep(0.05)
            await publish(cross_origin.url, channel, f"m{n}")
            status, headers, content = await wire.response()
            assert status == 200
            cursor = json.loads(content)["cursor"]
            seen.append(headers)
        earlier = await publish(cross_origin.url, channel, "behind")
        await publish(cross_origin.url, channel, "behind too")
        wire.send(f"/poll/{channel}?since={earlier}", extra=f"Origin: {origin}\r\n")
        status, headers, content = await wire.response()  # answered at once, from memory
        assert status == 200 and json.loads(content)["messages"][0]["data"] == "behind too"
        seen.append(headers)
    finally:
        wire.close()
    async with httpx.AsyncClient(timeout=10) as http:  # through ASGI: /healthz has no fast path
        asgi = await http.get(
            f"{cross_origin.url}/poll/{channel}?since=0&timeout=0&last=1",
            headers={"Origin": origin},
        )
    cors = {k: v for k, v in asgi.headers.items() if k.startswith("access-control") or k == "vary"}
    if origin == "https://app.example":
        assert cors.get("access-control-allow-origin") == origin
    else:
        assert "access-control-allow-origin" not in cors
    for headers in seen:
        assert {k: v for k, v in headers.items() if k in cors} == cors, headers
        assert not any(k.startswith("access-control") and k not in cors for k in headers)


async def test_a_cross_origin_poll_is_served_in_the_protocol_with_its_cors_headers() -> None:
    """In this process: with ``Origin``, a poll answered at once is written before
    ``data_received`` returns (no ASGI task), the allowed origin named in it."""
    from uvicorn.server import ServerState

    settings = {"REDIS_URL": "", "GATEWAY_ALLOWED_ORIGINS": "https://app.example"}
    app = create_app(Settings.from_env(settings))
    config = uvicorn.Config(app, http=GatewayHttpProtocol, log_level="warning")
    config.load()
    async with app.running() as gateway, gateway.hub.subscribe("o"):
        before = (await gateway.hub.publish("o", "message", "0")).cursor
        await gateway.hub.publish("o", "message", "a")
        await anyio.sleep(0.05)
        writes: list[bytes] = []
        protocol = GatewayHttpProtocol(config, ServerState(), {})
        protocol.connection_made(_Kept(writes))
        for _ in range(2):  # parsed, then repeated
            protocol.data_received(
                f"GET /poll/o?since={before} HTTP/1.1\r\nHost: t\r\n"
                "Origin: https://app.example\r\n\r\n".encode()
            )
        assert len(writes) == 2
        for answer in writes:
            assert b"access-control-allow-origin: https://app.example\r\n" in answer.lower()
            assert b'"data":"a"' in answer
        protocol.connection_lost(None)
