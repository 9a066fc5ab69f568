"""Presence on real servers: snapshot, join/leave once per user, polls' lease, rights, limits.

Every test here runs on both brokers (the ``broker`` fixture); several
nodes, dead nodes and a wiped Redis are in test_presence_nodes.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import httpx
import jwt
import pytest

from gateway.presence import LEAVE_GRACE_S
from tests.conftest import gateway_env, redis_for
from tests.presence_clients import (
    Watcher,
    members,
    snapshot,
    snapshot_until,
    watch_sse,
    watch_ws,
    watch_ws_multi,
    watching,
)
from tests.servers import GatewayServer
from tests.test_security import SECRET, bearer, mint

pytestmark = pytest.mark.anyio

POLL_TIMEOUT_S = 1  # a poll's member lease is this + 10 s


def as_user(channels: list[str], **claims: object) -> str:
    """A read token carrying presence claims (``sub`` is mint's first parameter's name too)."""
    payload = {"sub_channels": channels, "pub_channels": [], "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def server(broker: str, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    redis = redis_for(broker, request)
    env = gateway_env(
        broker, redis, GATEWAY_POLL_TIMEOUT=str(POLL_TIMEOUT_S), GATEWAY_PRESENCE_MAX_MEMBERS="5"
    )
    gateway = GatewayServer(env).start()
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def secured(broker: str, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    redis = redis_for(broker, request)
    env = gateway_env(broker, redis, GATEWAY_SECRET=SECRET, GATEWAY_PUBLIC_CHANNELS="public:*")
    gateway = GatewayServer(env).start()
    yield gateway
    gateway.close()


async def test_the_snapshot_groups_connections_by_user(server, channel):
    """Two tabs of alice and one of bob: two users, three connections, sorted by user."""
    assert await snapshot(server.url, channel) == {
        "channel": channel, "users": 0, "connections": 0, "members": []
    }
    async with members(server.ws_url, channel, ["bob", "alice", "alice"]):
        await snapshot_until(server.url, channel, {"alice": 2, "bob": 1})
        found = await snapshot(server.url, channel)
        assert [m["user"] for m in found["members"]] == ["alice", "bob"]
        assert found["members"][0]["info"] is None


@pytest.mark.parametrize("watch", ["ws", "ws-multi", "sse", "sse-multi"])
async def test_a_user_joins_at_the_first_tab_and_leaves_after_the_last(server, channel, watch):
    """A second tab is no second join, closing one of two tabs no leave; the last one's close is one leave."""
    watcher = Watcher()
    follow = {
        "ws": lambda: watch_ws(server.ws_url, channel, watcher),
        "ws-multi": lambda: watch_ws_multi(server.ws_url, channel, watcher),
        "sse": lambda: watch_sse(server.url, channel, watcher),
        "sse-multi": lambda: watch_sse(server.url, channel, watcher, multi=True),
    }[watch]
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(follow)
        await watcher.ready.wait()
        async with members(server.ws_url, channel, ["carol"]):
            await watcher.until(["join"], "carol")
            async with members(server.ws_url, channel, ["carol"]):
                await snapshot_until(server.url, channel, {"carol": 2})
            await snapshot_until(server.url, channel, {"carol": 1})
            await anyio.sleep(LEAVE_GRACE_S + 0.5)
            assert watcher.of("carol") == ["join"]
        took = await watcher.until(["join", "leave"], "carol")
        assert took < LEAVE_GRACE_S + 1.5
        await snapshot_until(server.url, channel, {})
        tasks.cancel_scope.cancel()
    assert watcher.infos["carol"] is None


async def test_a_quick_reconnect_is_no_leave_and_join(server, channel):
    """A connection that drops and comes back within the grace is no event for anyone."""
    async with watching(server.ws_url, channel) as watcher:
        async with members(server.ws_url, channel, ["dave"]):
            await watcher.until(["join"], "dave")
        async with members(server.ws_url, channel, ["dave"]):
            await anyio.sleep(LEAVE_GRACE_S + 0.5)
            assert watcher.of("dave") == ["join"]


async def test_the_watcher_itself_is_a_member_when_named(server, channel):
    """A listening connection with ?user= is a member like any other; its own join reaches it."""
    watcher = Watcher()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: watch_ws(server.ws_url, channel, watcher, user="erin"))
        await watcher.until(["join"], "erin")
        await snapshot_until(server.url, channel, {"erin": 1})
        tasks.cancel_scope.cancel()


@pytest.mark.slow
async def test_long_poll_clients_are_members_while_they_poll(server, channel):
    """A poll makes its user a member; one that stops polling leaves after timeout + 10 s."""
    watcher = Watcher()
    async with anyio.create_task_group() as tasks, httpx.AsyncClient(timeout=30) as client:
        tasks.start_soon(watch_ws, server.ws_url, channel, watcher)
        await watcher.ready.wait()
        for _ in range(3):  # consecutive polls: one member, one join
            answer = await client.get(f"{server.url}/poll/{channel}", params={"user": "frank", "timeout": 0.2})
            assert answer.status_code == 200
        answer = await client.get(f"{server.url}/poll", params={"channel": channel, "user": "gina", "timeout": 0.2})
        assert answer.status_code == 200
        stopped = time.monotonic()
        await snapshot_until(server.url, channel, {"frank": 1, "gina": 1})
        await watcher.until(["join"], "frank")
        await watcher.until(["join", "leave"], "frank", timeout=POLL_TIMEOUT_S + 15)
        await watcher.until(["join", "leave"], "gina", timeout=5)
        assert POLL_TIMEOUT_S + 10 - 0.5 < time.monotonic() - stopped < POLL_TIMEOUT_S + 13
        tasks.cancel_scope.cancel()


async def test_past_the_limit_the_snapshot_is_counts_only(server, channel):
    """GATEWAY_PRESENCE_MAX_MEMBERS=5 here: six users are counted, not listed."""
    users = [f"u{n}" for n in range(6)]
    async with members(server.ws_url, channel, users[:5]):
        await snapshot_until(server.url, channel, dict.fromkeys(users[:5], 1))
        async with members(server.ws_url, channel, users[5:]):
            with anyio.fail_after(10):
                while (found := await snapshot(server.url, channel))["users"] != 6:
                    await anyio.sleep(0.05)
            assert found == {"channel": channel, "users": 6, "connections": 6,
                             "members": None, "counts_only": True}


async def test_an_anonymous_reader_is_no_member(server, channel):
    """No token sub, no ?user=: reading, listening, not present."""
    async with watching(server.ws_url, channel):
        await anyio.sleep(0.3)
        assert (await snapshot(server.url, channel))["users"] == 0


async def test_the_token_names_the_member_and_its_info(secured, channel):
    """sub and info from the token; presence readable with the channel's read right only."""
    token = as_user([channel], sub="u-1", info={"name": "Hana", "color": "#c0ffee"})
    watcher = Watcher()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: watch_ws(secured.ws_url, channel, watcher, token=token))
        await watcher.until(["join"], "u-1")
        assert watcher.infos["u-1"] == {"name": "Hana", "color": "#c0ffee"}
        found = await snapshot(secured.url, channel, headers=bearer(mint([channel])))
        assert found["members"] == [{"user": "u-1", "info": {"name": "Hana", "color": "#c0ffee"},
                                     "connections": 1}]
        tasks.cancel_scope.cancel()


async def test_presence_is_refused_as_reading_is(secured, channel):
    """401 without a token, 403 without the right, 400 for a bad name; a public channel needs none."""
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{secured.url}/presence"
        assert (await client.get(f"{url}/{channel}")).status_code == 401
        other = await client.get(f"{url}/{channel}", headers=bearer(mint(["elsewhere:*"])))
        assert other.status_code == 403 and "does not allow" in other.json()["error"]
        bad = await client.get(f"{url}/bad%20name", headers=bearer(mint(["*"])))
        assert bad.status_code == 400 and "invalid channel" in bad.json()["error"]
        assert (await client.get(f"{url}/public:lobby")).status_code == 200


@pytest.mark.parametrize(
    ("claims", "status", "reason"),
    [
        ({"info": "not an object"}, 401, "info must be a JSON object"),
        ({"info": {"bio": "x" * 1100}}, 401, "at most 1024"),
        ({"sub": 42}, 401, "must be a string"),  # PyJWT checks sub itself
    ],
)
async def test_a_bad_identity_in_the_token_is_refused(secured, channel, claims, status, reason):
    """An info that is no object or past 1 KB, a sub that is no string: 401 with the reason."""
    token = as_user([channel], **claims)
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{secured.url}/poll/{channel}", params={"timeout": 0},
                                  headers=bearer(token))
    assert answer.status_code == status and reason in answer.json()["error"]


async def test_user_in_the_query_is_for_an_open_gateway_only(secured, channel):
    """With GATEWAY_SECRET, ?user= would let anyone be anyone: 400."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{secured.url}/poll/{channel}", headers=bearer(mint([channel])),
                                  params={"user": "mallory", "timeout": 0})
    assert answer.status_code == 400 and "open gateway" in answer.json()["error"]
