"""Tokens, public channels, Origin and CORS, on a real server with a secret.

Every refusal is checked for its documented status (or close code) and
reason, while a subscriber on the same channel keeps receiving.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import jwt
import pytest
import websockets

from tests.clients import Reader, reader_for, subscribed
from tests.servers import ROOT, GatewayServer

pytestmark = pytest.mark.anyio

SECRET = "test-secret-that-is-long-enough-for-hs256"
WRONG_SECRET = "another-secret-that-is-long-enough-too!!"
APP_ORIGIN = "https://app.example"


def mint(sub: list[str], pub: list[str] | None = None, ttl: float = 3600,
         secret: str = SECRET, **claims: Any) -> str:
    """A token as a backend would mint it (``exp`` in the past when ttl < 0)."""
    payload: dict[str, Any] = {"sub_channels": sub, "pub_channels": pub or [], **claims}
    if ttl is not None:
        payload["exp"] = int(time.time() + ttl)
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ws_refusal(url: str, **kw: Any) -> tuple[int, str]:
    """Connect, and return the close code and reason the server ended with."""
    async with websockets.connect(url, compression=None, **kw) as ws:
        try:
            with anyio.fail_after(10):
                while True:
                    await ws.recv()
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError("unreachable")


async def still_delivers(server: GatewayServer, channel: str, reader: Reader, token: str) -> None:
    """A publish with a good token reaches ``reader``: the refusals hurt no one else."""
    before = len(reader.messages)
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{server.url}/publish/{channel}", content=b"still here",
                                   headers=bearer(token))
    assert answer.status_code == 201, answer.text
    with anyio.fail_after(10):
        while len(reader.messages) <= before:
            await anyio.sleep(0.02)
    assert reader.messages[-1]["id"] == answer.json()["id"]


@pytest.fixture(scope="module")
def secured() -> Iterator[GatewayServer]:
    env = {
        "REDIS_URL": "", "GATEWAY_HEARTBEAT": "1", "GATEWAY_SECRET": SECRET,
        "GATEWAY_PUBLIC_CHANNELS": "public:*,news", "GATEWAY_ALLOWED_ORIGINS": APP_ORIGIN,
    }
    server = GatewayServer(env).start()
    yield server
    server.close()


EVERYTHING = mint(["*"], ["*"])

BAD_TOKENS = {
    "missing": (None, 401, "token required"),
    "malformed": ("not-a-jwt", 401, "invalid token"),
    "expired": (mint(["*"], ["*"], ttl=-60), 401, "token expired"),
    "wrongly-signed": (mint(["*"], ["*"], secret=WRONG_SECRET), 401, "Signature verification failed"),
    "without-exp": (mint(["*"], ["*"], ttl=None), 401, "exp"),  # type: ignore[arg-type]
    "claims-not-a-list": (mint(["*"], ["*"], sub_channels=7), 401, "sub_channels"),
    "other-channels": (mint(["elsewhere:*"], ["elsewhere:*"]), 403, "does not allow"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_every_http_route_refuses_a_bad_token_with_its_status_and_reason(secured, channel, case):
    """Missing, malformed, expired, wrongly signed or foreign tokens: 401/403 on sse, poll, publish."""
    token, status, reason = BAD_TOKENS[case]
    headers = bearer(token) if token else {}
    async with subscribed(reader_for("websocket", secured), channel, 1,
                          params={"token": EVERYTHING}) as reader:
        async with httpx.AsyncClient(timeout=30) as client:
            for method, route in (("GET", "sse"), ("GET", "poll"), ("POST", "publish")):
                answer = await client.request(method, f"{secured.url}/{route}/{channel}",
                                              headers=headers, params={"timeout": 0}, content=b"x")
                assert answer.status_code == status, (route, answer.text)
                assert reason in answer.json()["error"], route
        await still_delivers(secured, channel, reader, EVERYTHING)


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_a_websocket_with_a_bad_token_is_closed_1008_with_the_reason(secured, channel, case):
    """The WebSocket says the same as HTTP, as a close frame 1008 a browser can read."""
    token, _, reason = BAD_TOKENS[case]
    query = f"?token={token}" if token else ""
    async with subscribed(reader_for("sse", secured), channel, 1,
                          headers=bearer(EVERYTHING)) as reader:
        code, said = await ws_refusal(f"{secured.ws_url}/ws/{channel}{query}")
        assert (code, reason in said) == (1008, True), said
        await still_delivers(secured, channel, reader, EVERYTHING)


@pytest.mark.parametrize("transport", ["sse", "websocket", "poll"])
async def test_a_token_is_taken_from_the_header_or_the_query(secured, channel, transport):
    """Authorization: Bearer works, and so does ?token= (EventSource cannot set headers)."""
    token = mint([channel], [channel])
    read = reader_for(transport, secured)
    published = await _publish(secured, channel, "one", token)
    by_query = await read(channel, Reader(), 1, since="0", params={"token": token})
    assert [m["id"] for m in by_query.messages] == [published]
    if transport != "websocket":  # the websockets client's headers are covered by Origin tests
        extra = {"headers": bearer(token)} if transport == "sse" else {"params": {"token": token}}
        by_header = await read(channel, Reader(), 1, since="0", **extra)
        assert [m["id"] for m in by_header.messages] == [published]


async def test_reading_without_publishing_right_refuses_the_publish_only(secured, channel):
    """A read-only token reads; its publishes are 403 over HTTP and an error frame over WS."""
    reader_token = mint([channel], [])
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.post(f"{secured.url}/publish/{channel}", content=b"no",
                                    headers=bearer(reader_token))
    assert refused.status_code == 403 and "publishing" in refused.json()["error"]
    url = f"{secured.ws_url}/ws/{channel}?token={reader_token}"
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "publish", "data": "no"}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and "publishing" in error["reason"]
        published = await _publish(secured, channel, "yes", EVERYTHING)
        delivered = json.loads(await ws.recv())
    assert delivered["type"] == "message" and delivered["id"] == published


async def test_public_channels_are_readable_without_a_token_but_not_publishable(secured):
    """GATEWAY_PUBLIC_CHANNELS lets anyone read; publishing still needs a right."""
    channel = f"public:{time.monotonic_ns()}"
    published = await _publish(secured, channel, "for all", EVERYTHING)
    for transport in ("sse", "websocket", "poll"):
        reader = await reader_for(transport, secured)(channel, Reader(), 1, since="0")
        assert [m["id"] for m in reader.messages] == [published], transport
    async with httpx.AsyncClient(timeout=30) as client:
        anonymous = await client.post(f"{secured.url}/publish/{channel}", content=b"x")
        assert anonymous.status_code == 401 and anonymous.json()["error"] == "token required"
        exact = await client.get(f"{secured.url}/poll/news", params={"timeout": 0})
        assert exact.status_code == 200
    async with websockets.connect(f"{secured.ws_url}/ws/{channel}", compression=None) as ws:
        await ws.send(json.dumps({"type": "publish", "data": "x"}))
        assert json.loads(await ws.recv()) == {"type": "error", "reason": "token required"}


async def test_a_websocket_from_a_foreign_origin_is_refused(secured, channel):
    """A page of another origin gets close 1008; a listed one and a non-browser are served."""
    url = f"{secured.ws_url}/ws/{channel}?token={EVERYTHING}"
    async with subscribed(reader_for("sse", secured), channel, 4,
                          headers=bearer(EVERYTHING)) as reader:
        code, reason = await ws_refusal(url, origin="https://evil.example")
        assert code == 1008 and "origin" in reason and "evil.example" in reason
        for origin in (APP_ORIGIN, None, f"http://127.0.0.1:{secured.port}"):
            async with websockets.connect(url, origin=origin, compression=None) as ws:
                published = await _publish(secured, channel, "hi", EVERYTHING)
                assert json.loads(await ws.recv())["id"] == published, origin
        await still_delivers(secured, channel, reader, EVERYTHING)


@pytest.mark.parametrize(
    ("origin", "forwarded_proto", "allowed"),
    [
        ("https://gw.example", "https", True),       # TLS ended at the proxy, which said so
        ("https://gw.example:443", "https", True),   # the default port is the same origin
        ("https://gw.example", None, False),         # the proxy did not say https
        ("http://gw.example", "https", False),       # same host, other scheme
        ("https://gw.example:8443", "https", False),  # same host, other port
        ("https://gw.example.evil", "https", False),
        ("null", "https", False),                     # a sandboxed or file: page
    ],
)
async def test_same_origin_compares_scheme_host_and_port_behind_a_proxy(
    gateway, channel, origin, forwarded_proto, allowed
):
    """By default only the same origin may open a WebSocket, as the proxy forwarded it."""
    headers = {"X-Forwarded-Proto": forwarded_proto} if forwarded_proto else {}
    url = f"ws://gw.example/ws/{channel}"
    kw = {"origin": origin, "additional_headers": headers, "host": "127.0.0.1", "port": gateway.port}
    if allowed:
        async with websockets.connect(url, compression=None, **kw) as ws:
            published = await _publish(gateway, channel, "same origin", None)
            assert json.loads(await ws.recv())["id"] == published
    else:
        assert await ws_refusal(url, **kw) == (1008, f"origin {origin!r} not allowed (see GATEWAY_ALLOWED_ORIGINS)")


async def test_cors_answers_listed_origins_only(secured, channel):
    """Preflight and responses carry CORS headers for listed origins; foreign pages cannot publish."""
    async with httpx.AsyncClient(timeout=30) as client:
        preflight = await client.options(f"{secured.url}/publish/{channel}", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        })
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        foreign = await client.options(f"{secured.url}/publish/{channel}", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
        })
        assert "access-control-allow-origin" not in foreign.headers
        poll = await client.get(f"{secured.url}/poll/{channel}", params={"timeout": 0},
                                headers={"Origin": APP_ORIGIN, **bearer(EVERYTHING)})
        assert poll.headers["access-control-allow-origin"] == APP_ORIGIN
        # SSE is served past the router (GatewayApp): CORS must wrap it all the same.
        sse_preflight = await client.options(f"{secured.url}/sse/{channel}", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, last-event-id",
        })
        assert sse_preflight.status_code == 200
        assert sse_preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        async with client.stream("GET", f"{secured.url}/sse/{channel}",
                                 headers={"Origin": APP_ORIGIN, **bearer(EVERYTHING)}) as sse:
            assert sse.status_code == 200
            assert sse.headers["access-control-allow-origin"] == APP_ORIGIN
        simple = await client.post(f"{secured.url}/publish/{channel}", content=b"x", headers={
            "Origin": "https://evil.example", **bearer(EVERYTHING)})
        assert simple.status_code == 403 and "origin" in simple.json()["error"]


async def test_without_allowed_origins_there_are_no_cors_headers(gateway, channel):
    """The default is same origin: no Access-Control-Allow-Origin for anyone."""
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.get(f"{gateway.url}/poll/{channel}", params={"timeout": 0},
                                  headers={"Origin": "https://evil.example"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


async def test_an_open_gateway_says_so_in_its_log(gateway):
    """Without GATEWAY_SECRET the start-up log warns that anyone may read and publish."""
    assert "GATEWAY_SECRET is not set" in gateway.log()


async def test_the_token_command_mints_a_token_the_server_accepts(secured, channel):
    """``python -m gateway token --sub --pub --ttl`` prints a working token."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_SECRET": SECRET, "REDIS_URL": ""}
    args = [sys.executable, "-m", "gateway", "token", "--sub", "t*", "--pub", "t*", "--ttl", "600"]
    done = await anyio.run_process(args, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    token = done.stdout.decode().strip()
    published = await _publish(secured, channel, "minted", token)
    reader = await reader_for("poll", secured)(channel, Reader(), 1, since="0", params={"token": token})
    assert [m["id"] for m in reader.messages] == [published]
    short = await anyio.run_process(args, env={**env, "GATEWAY_SECRET": "short"}, cwd=ROOT,
                                    check=False)
    assert short.returncode == 2 and b"32 bytes" in short.stderr


async def _publish(server: GatewayServer, channel: str, data: str, token: str | None) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{server.url}/publish/{channel}", content=data.encode(),
                                   headers=bearer(token) if token else {})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_a_poll_token_is_verified_once_and_refused_once_it_expires(
    secured: GatewayServer,
) -> None:
    """A poller presents its token with every request: verified once, remembered until its
    ``exp`` (auth.py), then refused as expired, not served from memory."""
    token = mint(["rooms:*"], ttl=2)
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    async with httpx.AsyncClient(base_url=secured.url, timeout=10) as client:
        for _ in range(3):
            r = await client.get("/poll/rooms:a", params={"timeout": 0}, headers=bearer(token))
            assert r.status_code == 200, r.text
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        for _ in range(2):  # a failed check is not remembered either way
            r = await client.get("/poll/rooms:a", params={"timeout": 0}, headers=bearer(forged))
            assert r.status_code == 401
        await anyio.sleep(max(0.0, expires_at - time.time()) + 0.2)
        r = await client.get("/poll/rooms:a", params={"timeout": 0}, headers=bearer(token))
        assert r.status_code == 401 and r.json()["error"] == "token expired"


def test_the_verified_tokens_are_kept_by_digest_and_bounded() -> None:
    from gateway.auth import TOKENS_KEPT, Guard
    from gateway.settings import Settings

    guard = Guard(Settings.from_env({"GATEWAY_SECRET": SECRET}))
    tokens = [mint([f"c{n}"]) for n in range(TOKENS_KEPT + 3)]
    rights = guard.decode(tokens[0])
    assert guard.decode(tokens[0]) is rights  # remembered
    for token in tokens:
        guard.decode(token)
    kept = guard._verified
    assert 0 < len(kept) <= TOKENS_KEPT
    assert all(len(key) == 16 for key in kept)  # digests, not the tokens
