"""Access that ends (SPEC): expiry, refresh, revocation on every node, admin routes.

Each broker runs two gateway nodes once for the module (the embedded broker
has no second node: both are the one server). Tokens live 2-3 s, so a test
waits about that long for an ``exp``; each end is timed against ``exp``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import jwt
import pytest
import websockets

from gateway.publisher import AsyncPublisher, Publisher
from tests.clients import publish
from tests.conftest import gateway_env, redis_for
from tests.servers import GatewayServer
from tests.sse_client import Event, events

pytestmark = pytest.mark.anyio

SECRET = "access-secret-that-is-long-enough-for-hs256"
LATE_MOST_S = 1.0  # SPEC: within 1 s of exp
SLACK_S = 0.5  # this test's own clients' delay on a busy shared machine


def mint(
    channels: list[str],
    user: str | None = "alice",
    ttl: float = 3600,
    pub: list[str] | None = None,
    **claims: Any,
) -> str:
    now = time.time()
    payload: dict[str, Any] = {
        "sub_channels": channels,
        "pub_channels": pub or ["*"],
        "exp": int(now + ttl),
        "iat": round(now, 3),
        **claims,
    }
    if user is not None:
        payload["sub"] = user
    return jwt.encode(payload, SECRET, algorithm="HS256")


def exp_of(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


ADMIN = {"admin": True}


@pytest.fixture(scope="module")
def nodes(
    broker: str, request: pytest.FixtureRequest
) -> Iterator[tuple[GatewayServer, GatewayServer]]:
    """Two nodes of one deployment (one, twice, on the embedded broker)."""
    redis = redis_for(broker, request)
    env = gateway_env(broker, redis, GATEWAY_SECRET=SECRET, GATEWAY_PUBLIC_CHANNELS="pub:*")
    first = GatewayServer(env).start()
    second = GatewayServer(env).start() if broker != "memory" else first
    yield first, second
    first.close()
    if second is not first:
        second.close()


@pytest.fixture
def redis_url(broker: str, request: pytest.FixtureRequest) -> str | None:
    redis = redis_for(broker, request)
    return redis.url if redis is not None else None


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Ended:
    """How a connection ended, and when (wall clock, as ``exp`` is)."""

    def __init__(self) -> None:
        self.at = 0.0
        self.events: list[Event] = []
        self.frames: list[dict[str, Any]] = []
        self.code: int | None = None
        self.reason = ""
        self.status = 0
        self.body: Any = None
        self.ready = anyio.Event()

    def names(self) -> list[str]:
        return [e.event for e in self.events if e.event not in ("", ":")]


async def sse(url: str, token: str | None, ended: Ended, **params: Any) -> None:
    headers = bearer(token) if token else {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as client:
        async with client.stream("GET", url, params=params, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            async for event in events(response):
                ended.events.append(event)
                ended.ready.set()
    ended.at = time.time()


async def ws(url: str, ended: Ended, send: list[dict[str, Any]] | None = None) -> None:
    async with websockets.connect(url, compression=None, max_queue=None) as socket:
        for frame in send or []:
            await socket.send(json.dumps(frame))
        ended.ready.set()
        try:
            while True:
                ended.frames.append(json.loads(await socket.recv()))
        except websockets.ConnectionClosed as exc:
            ended.at = time.time()
            assert exc.rcvd is not None, "closed without a close frame"
            ended.code, ended.reason = exc.rcvd.code, exc.rcvd.reason


async def poll(url: str, token: str, ended: Ended, **params: Any) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        ended.ready.set()
        response = await client.get(url, params={"timeout": 25, **params}, headers=bearer(token))
    ended.at = time.time()
    ended.status, ended.body = response.status_code, response.json()


def on_time(ended: Ended, exp: float) -> None:
    """Ended after ``exp`` and at most a second later (plus the test's own slack)."""
    assert exp - 0.05 <= ended.at <= exp + LATE_MOST_S + SLACK_S, ended.at - exp


async def joined(server: GatewayServer, channel: str) -> None:
    """A message on ``channel``: its node has joined it, and a poll there waits in memory."""
    await publish(server.url, channel, "warm", headers=bearer(mint(["*"])))


async def test_every_transport_ends_within_a_second_of_exp(nodes, channel):
    """SSE, WS and waiting polls, single and several channels, end at exp; a public stream goes on."""
    node = nodes[0]
    a, b, cold = f"{channel}:a", f"{channel}:b", f"{channel}:cold"
    token = mint([f"{channel}:*"], ttl=3)
    exp = exp_of(token)
    ends = {name: Ended() for name in ("sse", "sse2", "ws", "ws2", "poll", "poll2", "cold", "pub")}
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(sse, f"{node.url}/sse/{a}", token, ends["sse"])
        tasks.start_soon(lambda: sse(f"{node.url}/sse", token, ends["sse2"], channel=[a, b]))
        tasks.start_soon(ws, f"{node.ws_url}/ws/{a}?token={token}", ends["ws"])
        tasks.start_soon(ws, f"{node.ws_url}/ws?channel={a}&channel={b}&token={token}", ends["ws2"])
        tasks.start_soon(sse, f"{node.url}/sse/pub:{channel}", None, ends["pub"])
        with anyio.fail_after(10):
            for name in ("sse", "sse2", "ws", "ws2", "pub"):
                await ends[name].ready.wait()
        await joined(node, a)
        await joined(node, b)
        tasks.start_soon(poll, f"{node.url}/poll/{a}", token, ends["poll"])
        tasks.start_soon(lambda: poll(f"{node.url}/poll", token, ends["poll2"], channel=[a, b]))
        tasks.start_soon(poll, f"{node.url}/poll/{cold}", token, ends["cold"])
        with anyio.fail_after(10):
            while not ends["sse"].at:
                await anyio.sleep(0.05)
        await anyio.sleep(1.5)
        await publish(node.url, f"pub:{channel}", "after exp", headers=bearer(mint(["*"])))
        with anyio.fail_after(10):
            while "after exp" not in [e.data for e in ends["pub"].events]:
                await anyio.sleep(0.05)
        tasks.cancel_scope.cancel()
    for name in ("sse", "sse2"):
        on_time(ends[name], exp)
        assert ends[name].events[-1].event == "expired"
        assert ends[name].events[-1].data == "token expired"
    for name in ("ws", "ws2"):
        on_time(ends[name], exp)
        assert (ends[name].code, ends[name].reason) == (4001, "token expired")
    for name in ("poll", "poll2", "cold"):
        on_time(ends[name], exp)
        assert (ends[name].status, ends[name].body) == (401, {"error": "token expired"})
    assert not ends["pub"].at, "a stream opened without a token ended"


async def test_a_websocket_refreshed_before_exp_loses_nothing_and_outlives_it(nodes, channel):
    """refresh -> refreshed with the new exp; messages across the old exp all arrive, in order."""
    node = nodes[0]
    new = mint([f"{channel}*"], ttl=60)
    got: dict[str, list[dict[str, Any]]] = {}
    sent: list[str] = []

    async def refreshed_socket(name: str, url: str) -> None:
        async with websockets.connect(url, compression=None, max_queue=None) as socket:
            frames = got.setdefault(name, [])
            await socket.send(json.dumps({"type": "refresh", "token": new}))
            with anyio.fail_after(30):
                while len([f for f in frames if f["type"] == "message"]) < 6:
                    frames.append(json.loads(await socket.recv()))

    old = mint([f"{channel}*"], ttl=2)
    exp = exp_of(old)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(refreshed_socket, "single", f"{node.ws_url}/ws/{channel}?token={old}")
        tasks.start_soon(
            refreshed_socket, "multi", f"{node.ws_url}/ws?channel={channel}&token={old}"
        )
        await anyio.sleep(0.5)
        while time.time() < exp + 1.5 or len(sent) < 6:  # across the old exp and its sweep
            sent.append(await publish(node.url, channel, f"m{len(sent)}", headers=bearer(new)))
            await anyio.sleep(0.5)
    for name in ("single", "multi"):
        replies = [f for f in got[name] if f["type"] == "refreshed"]
        assert replies == [{"type": "refreshed", "exp": exp_of(new)}]
        ids = [f["id"] for f in got[name] if f["type"] == "message"]
        assert ids == sent[: len(ids)] and len(ids) >= 6


async def test_a_refresh_refused_leaves_the_old_exp_standing(nodes, channel):
    """Another sub, or a channel not allowed: an error frame, and the socket still ends at the old exp."""
    node = nodes[0]
    old = mint([f"{channel}*"], ttl=3)
    exp = exp_of(old)
    other_user = mint([f"{channel}*"], user="mallory", ttl=60)
    narrower = mint(["elsewhere:*"], ttl=60)
    single, multi = Ended(), Ended()
    frames = [{"type": "refresh", "token": other_user}, {"type": "refresh", "token": narrower}]
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: ws(f"{node.ws_url}/ws/{channel}?token={old}", single, frames))
        tasks.start_soon(
            lambda: ws(f"{node.ws_url}/ws?channel={channel}&token={old}", multi, frames)
        )
    for ended in (single, multi):
        errors = [f for f in ended.frames if f["type"] == "error"]
        assert [e["reason"] for e in errors] == [
            "a refreshed token must name the same sub",
            f"token does not allow reading {channel!r}",
        ]
        assert (ended.code, ended.reason) == (4001, "token expired")
        on_time(ended, exp)


async def test_sse_and_poll_refresh_by_reconnecting_with_their_cursor(nodes, channel):
    """After the expired end, the new token and the cursor resume: nothing lost, nothing twice."""
    node = nodes[0]
    writer = bearer(mint(["*"]))
    old, new = mint([channel], ttl=2), mint([channel], ttl=60)
    first = Ended()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(sse, f"{node.url}/sse/{channel}", old, first)
        with anyio.fail_after(10):
            await first.ready.wait()
        sent = [await publish(node.url, channel, "before", headers=writer)]
        with anyio.fail_after(10):
            while not first.at:
                await anyio.sleep(0.05)
    sent.append(await publish(node.url, channel, "between", headers=writer))
    assert first.names() == ["message", "expired"]
    cursor = first.events[-2].id
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.get(
            f"{node.url}/poll/{channel}", params={"since": cursor}, headers=bearer(old)
        )
        assert refused.status_code == 401
        polled = await client.get(
            f"{node.url}/poll/{channel}", params={"since": cursor}, headers=bearer(new)
        )
    assert [m["id"] for m in polled.json()["messages"]] == sent[1:]
    again = Ended()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: sse(f"{node.url}/sse/{channel}", new, again, since=cursor))
        with anyio.fail_after(10):
            while len([e for e in again.events if e.event == "message"]) < 2:
                if again.ready.is_set() and len(sent) < 3:
                    sent.append(await publish(node.url, channel, "after", headers=writer))
                await anyio.sleep(0.05)
        tasks.cancel_scope.cancel()
    assert [e.id for e in again.events if e.event == "message"] == sent[1:]


async def disconnect(
    server: GatewayServer, redis_url: str | None, prefix: str, user: str, **fields: Any
) -> None:
    """Revoke through ``gateway.publisher``: over Redis when there is one, else over HTTP."""
    if redis_url is not None:
        async with AsyncPublisher(redis_url, prefix=prefix) as publisher:
            await publisher.disconnect(user, **fields)
        return
    token = mint([], user="root", **ADMIN)
    async with AsyncPublisher(server.url, token=token) as publisher:
        await publisher.disconnect(user, **fields)


async def test_a_revocation_ends_a_user_on_every_node_and_refuses_older_tokens(nodes, channel):
    """SSE on one node, WS and a waiting poll on the other: all end within 1 s; bob goes on."""
    one, two = nodes
    user = f"u{time.monotonic_ns()}"
    token = mint([f"{channel}*"], user=user)
    bob = mint([f"{channel}*"], user="bob")
    ends = {name: Ended() for name in ("sse", "ws", "poll", "bob")}
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(sse, f"{one.url}/sse/{channel}", token, ends["sse"])
        tasks.start_soon(ws, f"{two.ws_url}/ws?channel={channel}&token={token}", ends["ws"])
        tasks.start_soon(sse, f"{two.url}/sse/{channel}", bob, ends["bob"])
        with anyio.fail_after(10):
            for name in ("sse", "ws", "bob"):
                await ends[name].ready.wait()
        await joined(two, channel)
        tasks.start_soon(poll, f"{two.url}/poll/{channel}", token, ends["poll"])
        await anyio.sleep(0.3)
        admin = bearer(mint([], user="root", **ADMIN))
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(
                f"{one.url}/admin/disconnect",
                json={"user": user, "reason": "banned"},
                headers=admin,
            )
        at = time.time()
        assert answer.status_code == 202, answer.text
        assert answer.json()["user"] == user and answer.json()["reason"] == "banned"
        with anyio.fail_after(10):
            while not all(ends[name].at for name in ("sse", "ws", "poll")):
                await anyio.sleep(0.05)
        await publish(one.url, channel, "bob still reads", headers=bearer(mint(["*"])))
        with anyio.fail_after(10):
            while "bob still reads" not in [e.data for e in ends["bob"].events]:
                await anyio.sleep(0.05)
        tasks.cancel_scope.cancel()
    for name in ("sse", "ws", "poll"):
        assert ends[name].at - at <= LATE_MOST_S + SLACK_S, (name, ends[name].at - at)
    assert (ends["sse"].events[-1].event, ends["sse"].events[-1].data) == ("revoked", "banned")
    assert (ends["ws"].code, ends["ws"].reason) == (4003, "banned")
    assert (ends["poll"].status, ends["poll"].body) == (403, {"error": "banned"})
    assert not ends["bob"].at
    fresh = mint([f"{channel}*"], user=user)
    async with httpx.AsyncClient(timeout=30) as client:
        for node in (one, two):
            old = await client.get(
                f"{node.url}/poll/{channel}", params={"timeout": 0}, headers=bearer(token)
            )
            assert (old.status_code, old.json()) == (403, {"error": "revoked"})
            ok = await client.get(
                f"{node.url}/poll/{channel}", params={"timeout": 0}, headers=bearer(fresh)
            )
            assert ok.status_code == 200, ok.text


async def test_a_revocation_of_some_channels_ends_only_those(nodes, channel, redis_url):
    """WS and SSE carrying a and b: a is revoked with a notice, b goes on; the token is refused for a only."""
    one, two = nodes
    user = f"v{time.monotonic_ns()}"
    a, b = f"{channel}:a", f"{channel}:b"
    token = mint([f"{channel}:*"], user=user)
    socket, stream = Ended(), Ended()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ws, f"{two.ws_url}/ws?channel={a}&channel={b}&token={token}", socket)
        tasks.start_soon(lambda: sse(f"{one.url}/sse", token, stream, channel=[a, b]))
        with anyio.fail_after(10):
            await socket.ready.wait()
            await stream.ready.wait()
        prefix = one.env.get("GATEWAY_REDIS_PREFIX", "gw")
        await disconnect(
            one, redis_url, prefix, user, channels=[f"{channel}:a*"], reason="not here"
        )
        with anyio.fail_after(10):
            while (
                not any(f["type"] == "revoked" for f in socket.frames)
                or "revoked" not in stream.names()
            ):
                await anyio.sleep(0.05)
        writer = bearer(mint(["*"]))
        await publish(one.url, a, "a after", headers=writer)
        await publish(one.url, b, "b after", headers=writer)
        with anyio.fail_after(10):
            while not any(f.get("data") == "b after" for f in socket.frames) or not any(
                "b after" in e.data for e in stream.events
            ):
                await anyio.sleep(0.05)
        await anyio.sleep(0.2)
        tasks.cancel_scope.cancel()
    revoked = [f for f in socket.frames if f["type"] == "revoked"]
    assert revoked == [{"type": "revoked", "channel": a, "reason": "not here"}]
    assert not any(f.get("data") == "a after" for f in socket.frames)
    notices = [json.loads(e.data) for e in stream.events if e.event == "revoked"]
    assert notices == [{"channel": a, "reason": "not here"}]
    assert not any("a after" in e.data for e in stream.events)
    async with httpx.AsyncClient(timeout=30) as client:
        for node in (one, two):
            refused = await client.get(
                f"{node.url}/poll/{a}", params={"timeout": 0}, headers=bearer(token)
            )
            assert (refused.status_code, refused.json()) == (403, {"error": "revoked"})
            allowed = await client.get(
                f"{node.url}/poll/{b}", params={"timeout": 0}, headers=bearer(token)
            )
            assert allowed.status_code == 200


async def test_admin_routes_need_an_admin_token(nodes):
    """No token 401, a token without admin 403, bad bodies 400; an admin token 202."""
    node = nodes[0]
    url = f"{node.url}/admin/disconnect"
    async with httpx.AsyncClient(timeout=30) as client:
        none = await client.post(url, json={"user": "x"})
        plain = await client.post(url, json={"user": "x"}, headers=bearer(mint(["*"])))
        admin = bearer(mint([], user="root", **ADMIN))
        bad = [
            await client.post(url, content=b"not json", headers=admin),
            await client.post(url, json={"channels": ["a"]}, headers=admin),
            await client.post(url, json={"user": "x", "channels": "a"}, headers=admin),
            await client.post(url, json={"user": "x", "reason": "two\nlines"}, headers=admin),
        ]
        ok = await client.post(url, json={"user": "nobody-at-all"}, headers=admin)
    assert (none.status_code, none.json()) == (401, {"error": "token required"})
    assert plain.status_code == 403 and "admin" in plain.json()["error"]
    assert [r.status_code for r in bad] == [400, 400, 400, 400]
    assert ok.status_code == 202


async def test_a_node_started_after_a_revocation_refuses_the_old_token(nodes, broker, channel):
    """The revocation is kept in the control channel's history: a new node reads it at start."""
    if broker == "memory":
        pytest.skip("the embedded broker is one process: nothing outlives it")
    one = nodes[0]
    user = f"w{time.monotonic_ns()}"
    token = mint([f"{channel}*"], user=user)
    admin = bearer(mint([], user="root", **ADMIN))
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(
            f"{one.url}/admin/disconnect", json={"user": user}, headers=admin
        )
        assert answer.status_code == 202
        late = GatewayServer(one.env).start()
        try:
            with anyio.fail_after(10):
                while True:
                    refused = await client.get(
                        f"{late.url}/poll/{channel}", params={"timeout": 0}, headers=bearer(token)
                    )
                    if refused.status_code == 403:
                        break
                    await anyio.sleep(0.1)  # (its follower reads the history just after start)
            assert refused.json() == {"error": "revoked"}
        finally:
            late.close()


@pytest.mark.parametrize("accelerations", ["none", "all"])
async def test_every_transport_ends_at_exp_under_uvicorns_own_protocol(channel, accelerations):
    """Polls through ASGI (a waiter with a task, subscriptions), and with no acceleration every
    write through ASGI: each end as on the fast paths."""
    env = gateway_env("memory", None, GATEWAY_SECRET=SECRET, GATEWAY_ACCELERATIONS=accelerations)
    server = GatewayServer(env, http="httptools").start()
    try:
        a, b = f"{channel}:a", f"{channel}:b"
        token = mint([f"{channel}:*"], ttl=3)
        exp = exp_of(token)
        ends = {name: Ended() for name in ("sse", "sse2", "ws", "ws2", "poll", "poll2")}
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(sse, f"{server.url}/sse/{a}", token, ends["sse"])
            tasks.start_soon(lambda: sse(f"{server.url}/sse", token, ends["sse2"], channel=[a, b]))
            tasks.start_soon(ws, f"{server.ws_url}/ws/{a}?token={token}", ends["ws"])
            tasks.start_soon(
                ws, f"{server.ws_url}/ws?channel={a}&channel={b}&token={token}", ends["ws2"]
            )
            with anyio.fail_after(10):
                for name in ("sse", "sse2", "ws", "ws2"):
                    await ends[name].ready.wait()
            await joined(server, a)
            tasks.start_soon(poll, f"{server.url}/poll/{a}", token, ends["poll"])
            tasks.start_soon(
                lambda: poll(f"{server.url}/poll", token, ends["poll2"], channel=[a, b])
            )
            with anyio.fail_after(10):
                while not all(end.at for end in ends.values()):
                    await anyio.sleep(0.05)
        for name, end in ends.items():
            on_time(end, exp)
            if name.startswith("sse"):
                assert (end.events[-1].event, end.events[-1].data) == ("expired", "token expired")
            elif name.startswith("ws"):
                assert (end.code, end.reason) == (4001, "token expired")
            else:
                assert (end.status, end.body) == (401, {"error": "token expired"})
    finally:
        server.close()


async def test_the_sync_publisher_revokes_too(nodes, channel, redis_url):
    """``Publisher.disconnect`` (Flask, Celery): over Redis, or over HTTP with an admin token."""
    node = nodes[0]
    user = f"s{time.monotonic_ns()}"
    token = mint([f"{channel}*"], user=user)
    if redis_url is not None:
        publisher = Publisher(redis_url, prefix=node.env["GATEWAY_REDIS_PREFIX"])
    else:
        publisher = Publisher(node.url, token=mint([], user="root", **ADMIN))
    with publisher:
        revocation_id = await anyio.to_thread.run_sync(lambda: publisher.disconnect(user))
    assert revocation_id
    async with httpx.AsyncClient(timeout=30) as client:
        with anyio.fail_after(10):
            while True:
                answer = await client.get(
                    f"{node.url}/poll/{channel}", params={"timeout": 0}, headers=bearer(token)
                )
                if answer.status_code == 403:
                    break
                await anyio.sleep(0.05)
    assert answer.json() == {"error": "revoked"}
