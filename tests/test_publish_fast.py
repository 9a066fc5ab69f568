"""Publishes answered inside the HTTP protocol answer as plain ASGI does (issue 24).

``POST /publish/{channel}`` is taken by the gateway's protocol
(gateway/server/publishing.py) when it can be: no ASGI task, one write.
Each test sends the same raw bytes to two gateways on one Redis: ours (as
the Procfile runs it) and uvicorn's own httptools protocol (every request
through ASGI); what the plain one answers is the reference, ids aside (each
server publishes its own message). tests/test_differential.py draws
publishes among its generated streams; here each edge has its own test.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import jwt
import pytest
import uvicorn

from gateway.app import create_app
from gateway.message import Cursor
from gateway.server.protocol import GatewayHttpProtocol
from gateway.settings import Settings
from tests.servers import GatewayServer, RedisServer

pytestmark = pytest.mark.anyio

SECRET = "p" * 40
PROTOCOLS = {"ours": "gateway.server.protocol:GatewayHttpProtocol", "plain": "httptools"}
_AWAY = re.compile(rb"(the broker is unavailable: )[^\"]*")
_ID = re.compile(rb'"[0-9a-z]+:[0-9]+-[0-9]+"')  # a message's id, or a cursor


def mint(pub: list[str], **claims: Any) -> str:
    payload = {"sub_channels": ["*"], "pub_channels": pub, "exp": int(time.time()) + 3600}
    return jwt.encode({**payload, **claims}, SECRET, algorithm="HS256")


TOKEN = mint(["*"])


class Pair:
    def __init__(self, redis: RedisServer, **env: str) -> None:
        settings = {
            "REDIS_URL": redis.url,
            "GATEWAY_REDIS_PREFIX": "pubfast",
            "GATEWAY_SECRET": SECRET,
            "GATEWAY_MAX_MESSAGE_BYTES": "100",
            **env,
        }
        self.servers = {
            name: GatewayServer(settings, http=http) for name, http in PROTOCOLS.items()
        }

    def start(self) -> Pair:
        for server in self.servers.values():
            server.start()
        return self

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def pair(redis: RedisServer) -> Iterator[Pair]:
    both = Pair(redis, GATEWAY_ALLOWED_ORIGINS="*").start()
    try:
        yield both
    finally:
        both.close()


def _post(target: str, body: bytes, *headers: str, version: str = "HTTP/1.1") -> bytes:
    lines = [f"POST {target} {version}", "Host: t", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _exchange(port: int, data: bytes, answers: int) -> tuple[list[bytes], bool]:
    """Send ``data`` at once; the ``answers`` read (heads and bodies), and whether it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got: list[bytes] = []
    try:
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = re.search(rb"content-length: (\d+)", head, re.I)  # (none on a 100)
            size = int(length[1]) if length else 0
            got.append(head + await asyncio.wait_for(reader.readexactly(size), 10))
        closed = await _closed(reader)
    finally:
        writer.close()
    return got, closed


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 0.5) == b""
    except TimeoutError:
        return False


def _alike(answer: bytes) -> tuple[str, set[str], bytes]:
    """Status line, headers as a set (date and an id's length aside), body with ids masked,
    and redis-py's words for a broker away (which depend on when each server noticed)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    kept = {line.lower() for line in lines if not line.lower().startswith(("date:", "content-len"))}
    return status, kept, _AWAY.sub(b"\\1<why>", _ID.sub(b'"<id>"', body))


async def _both(pair: Pair, data: bytes, answers: int) -> dict[str, Any]:
    """``data`` to each server; their answers, alike. ``{server}`` in it: the server's name
    (a channel of its own, whose name is masked in the comparison)."""
    seen = {}
    for name, server in pair.servers.items():
        tag = f"-{name}-".encode()
        got, closed = await _exchange(server.port, data.replace(b"{server}", tag), answers)
        seen[name] = ([_alike(a.replace(tag, b"{server}")) for a in got], closed)
    assert seen["ours"] == seen["plain"]
    return seen["ours"]


async def test_a_publish_is_answered_as_through_asgi(pair: Pair) -> None:
    """201 with the id, JSON, the server's headers, kept alive: alike on both."""
    auth = f"Authorization: Bearer {TOKEN}"
    answers, closed = await _both(pair, _post("/publish/news?event=note", b"hello", auth), 1)
    assert answers[0][0] == "HTTP/1.1 201 Created" and not closed
    assert b'"channel":"news"' in answers[0][2]


@pytest.mark.parametrize(
    "case",
    [
        ("no token", "/publish/news", b"x", ()),
        ("not UTF-8", "/publish/news", b"\xff\xfe", ()),
        ("too large", "/publish/news", b"x" * 101, ()),
        ("bad channel", "/publish/bad%20name", b"x", ()),
        ("bad event", "/publish/news?event=a%20b", b"x", ()),
        ("another's channel", "/publish/other", b"x", ()),
        ("token in the query", f"/publish/news?token={TOKEN}", b"x", ()),
        ("connection close", "/publish/news", b"x", ("Connection: close",)),
        ("expect", "/publish/news", b"x", ("Expect: 100-continue",)),
        ("two lengths", "/publish/news", b"x", ("Content-Length: 1",)),
    ],
    ids=lambda case: case[0],
)
async def test_refusals_and_edges_are_answered_as_through_asgi(pair: Pair, case: Any) -> None:
    """Each refusal (status, reason, Retry-After) and each framing edge: alike on both."""
    name, target, body, extra = case
    headers = [] if name == "no token" else [f"Authorization: Bearer {mint(['news'])}"]
    if name == "token in the query":
        headers = []
    interim = 1 if name == "expect" else 0  # (100 Continue first)
    answers, _ = await _both(pair, _post(target, body, *headers, *extra), 1 + interim)
    assert answers[interim][0].startswith("HTTP/1.1 ")


async def test_pipelined_publishes_are_answered_in_order_each_with_its_own_id(pair: Pair) -> None:
    """Three publishes and a poll in one write: four answers in order, ids increasing."""
    auth = f"Authorization: Bearer {TOKEN}"
    data = b"".join(_post("/publish/pipe{server}", f"m{n}".encode(), auth) for n in range(3))
    data += b"GET /poll/pipe{server}?since=0&timeout=0 HTTP/1.1\r\nHost: t\r\n"
    data += auth.encode() + b"\r\n\r\n"
    answers, _ = await _both(pair, data, 4)
    assert [status for status, _, _ in answers] == ["HTTP/1.1 201 Created"] * 3 + [
        "HTTP/1.1 200 OK"
    ]
    assert [m["data"] for m in json.loads(answers[3][2])["messages"]] == ["m0", "m1", "m2"]


async def test_cross_origin_publishes_carry_the_headers_cors_middleware_adds(pair: Pair) -> None:
    """With every origin allowed a publish with ``Origin`` (and a cookie) is taken: the same
    CORS headers as CORSMiddleware's."""
    auth = f"Authorization: Bearer {TOKEN}"
    for extra in (("Origin: https://a.example",), ("Origin: https://b.example", "Cookie: s=1")):
        answers, _ = await _both(pair, _post("/publish/news", b"x", auth, *extra), 1)
        assert any(h.startswith("access-control-allow-origin") for h in answers[0][1])


async def test_an_http_1_0_publish_is_answered_and_closed_as_through_asgi(pair: Pair) -> None:
    """HTTP/1.0 goes through ASGI on ours too: the same answer, then the close."""
    auth = f"Authorization: Bearer {TOKEN}"
    _, closed = await _both(pair, _post("/publish/news", b"x", auth, version="HTTP/1.0"), 1)
    assert closed


async def test_a_publish_whose_client_left_is_still_published_once(pair: Pair) -> None:
    """The body whole, the client gone at once: the message is stored, once, on both paths."""
    async with httpx.AsyncClient(timeout=10) as client:
        for name, server in pair.servers.items():
            channel = f"left-{name}"
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(_post(f"/publish/{channel}", b"gone", f"Authorization: Bearer {TOKEN}"))
            await writer.drain()
            writer.close()
            deadline = time.monotonic() + 10
            while True:
                page = await client.get(
                    f"{server.url}/poll/{channel}",
                    params={"since": "0", "timeout": "0", "token": TOKEN},
                )
                if page.json()["messages"] or time.monotonic() > deadline:
                    break
                await anyio.sleep(0.05)
            assert [m["data"] for m in page.json()["messages"]] == ["gone"]


async def test_a_broker_that_is_away_is_answered_503_as_through_asgi() -> None:
    """Redis stopped: the publish is refused 503 with the same reason and Retry-After."""
    redis = RedisServer().start()
    both = Pair(redis).start()
    try:
        auth = f"Authorization: Bearer {TOKEN}"
        await _both(both, _post("/publish/news", b"x", auth), 1)  # (each link connected)
        redis.stop()
        answers, _ = await _both(both, _post("/publish/news", b"x", auth), 1)
        assert answers[0][0] == "HTTP/1.1 503 Service Unavailable"
        assert "retry-after: 2" in answers[0][1]
    finally:
        both.close()
        redis.close()


async def test_a_publish_is_taken_in_the_protocol_with_no_task() -> None:
    """In this process, embedded broker: the answer is written before ``data_received``
    returns, and no ASGI task was started."""
    from uvicorn.server import ServerState

    from tests.test_protocol import _Kept

    app = create_app(Settings.from_env({"REDIS_URL": ""}))
    config = uvicorn.Config(app, http=GatewayHttpProtocol, log_level="warning")
    config.load()
    async with app.running():
        writes: list[bytes] = []
        state = ServerState()
        protocol = GatewayHttpProtocol(config, state, {})
        protocol.connection_made(_Kept(writes))
        protocol.data_received(_post("/publish/here", b"one"))
        protocol.data_received(_post("/publish/here", b"two"))
        assert not state.tasks
        assert [w.split(b"\r\n")[0] for w in writes] == [b"HTTP/1.1 201 Created"] * 2
        assert writes[0].count(b"\r\n\r\n") == 1 and writes[0].endswith(b'"channel":"here"}')
        protocol.connection_lost(None)


class _Counting:
    """httptools' parser, its ``feed_data`` calls counted."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.fed = 0

    def feed_data(self, data: bytes) -> None:
        self.fed += 1
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


async def test_a_repeated_publish_skips_the_parser_and_anything_else_does_not() -> None:
    """In this process: a publish with the very headers of the connection's last one (its
    body as long) is taken unparsed; another length, or two in one read, are parsed."""
    from uvicorn.server import ServerState

    from tests.test_protocol import _Kept

    app = create_app(Settings.from_env({"REDIS_URL": ""}))
    config = uvicorn.Config(app, http=GatewayHttpProtocol, log_level="warning")
    config.load()
    async with app.running() as gateway:
        writes: list[bytes] = []
        state = ServerState()
        protocol = GatewayHttpProtocol(config, state, {})
        protocol.connection_made(_Kept(writes))
        counting = _Counting(protocol.parser)
        protocol.parser = counting  # type: ignore[assignment]
        sent = [
            (_post("/publish/r1", b"one"), 1),
            (_post("/publish/r2?event=e", b"two"), 0),  # the same headers: unparsed
            (_post("/publish/r1", b"three"), 1),  # another length
            (_post("/publish/r1", b"444") + _post("/publish/r1", b"555"), 1),  # two
            (_post("/publish/r1", b"six") + b"x", 1),  # a byte too many
        ]
        for data, fed in sent:
            before = counting.fed
            protocol.data_received(data)
            assert counting.fed - before == fed, data
        assert [w.count(b"HTTP/1.1 201 Created") for w in writes] == [1, 1, 1, 2, 0]
        assert writes[-1].startswith(b"HTTP/1.1 400 Bad Request")  # (as plain uvicorn: 400)
        assert not state.tasks
        history = await gateway.hub.broker.history("r2", Cursor.parse("0"), 10)
        assert [(m.event, m.data) for m in history.messages] == [("e", "two")]
        protocol.connection_lost(None)
