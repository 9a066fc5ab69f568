"""Deep resumes, on both brokers and every transport: all that history holds, then live.

A Redis stream capped with ``MAXLEN ~`` keeps more than the history size (it
trims whole macro nodes). A resume that read one page of the history size
delivered a part of what was held and then jumped to live messages: a
silent skip. The invariant checked here, against what ``poll`` paging says
history holds after the cursor: a resume delivers exactly that, in order,
once, then the next live message; with the gap signal first when (and only
when) the poll says history lost messages after the cursor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.clients import TRANSPORTS, publish, reader_for, subscribed
from tests.conftest import gateway_env, redis_for
from tests.servers import GatewayServer

SIZES = (1, 7, 20)
PAGE = 7  # the paging poll's limit: pages never line up with the history size


@pytest.fixture(scope="module")
def servers(broker: str, request: pytest.FixtureRequest) -> Iterator[dict[int, GatewayServer]]:
    """One gateway per history size, on this module's broker."""
    redis = redis_for(broker, request)
    started = {
        size: GatewayServer(gateway_env(broker, redis, GATEWAY_HISTORY_SIZE=str(size))).start()
        for size in SIZES
    }
    yield started
    for server in started.values():
        server.close()


async def held_after(server: GatewayServer, channel: str, cursor: str) -> tuple[list[str], bool]:
    """What history holds after ``cursor``, paged by poll; and whether it said a gap."""
    ids: list[str] = []
    gap = False
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            response = await client.get(
                f"{server.url}/poll/{channel}", params={"since": cursor, "limit": PAGE, "timeout": 0}
            )
            answer = response.raise_for_status().json()
            if answer["gap"]:
                assert not ids, "a gap reported on a later page"
                gap = True
            if not answer["messages"]:
                return ids, gap
            ids += [message["id"] for message in answer["messages"]]
            cursor = answer["cursor"]


async def check_resume(
    server: GatewayServer, size: int, transport: str, channel: str, published: int, back: int
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        ids = [await publish(server.url, channel, f"m{n}", client=client) for n in range(published)]
    cursor = ids[-1 - back] if back < published else "0"
    held, gap = await held_after(server, channel, cursor)
    # What the poll says is a tail of what was published, at least the history size long.
    assert held == ids[len(ids) - len(held) :]
    assert len(held) >= min(size, published - (ids.index(cursor) + 1 if cursor != "0" else 0))
    if cursor != "0" and not gap:
        assert held == ids[ids.index(cursor) + 1 :], "no gap said, yet messages are missing"
    read = reader_for(transport, server)
    with anyio.fail_after(20):  # a skipped message would leave the reader waiting
        async with subscribed(read, channel, len(held) + 1, since=cursor) as reader:
            live = await publish(server.url, channel, "live")
    got = [item.get("id", "gap") for item in reader.items]
    assert got == ["gap"] * gap + held + [live], (transport, size, published, back)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_deep_resume_gets_everything_history_holds_then_live(
    servers: dict[int, GatewayServer], channel: str, transport: str
) -> None:
    """History 20, 270 published, resume after message 215: 216...269 and then the live one."""
    await check_resume(servers[20], 20, transport, channel, 270, 270 - 216)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_resume_older_than_history_gets_the_gap_then_all_that_is_held(
    servers: dict[int, GatewayServer], channel: str, transport: str
) -> None:
    """A cursor trimmed away: the gap signal, then every held message (not one page of it)."""
    await check_resume(servers[20], 20, transport, channel, 270, 260)


_names = iter(range(10**9))

EXAMPLES = settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
@EXAMPLES
@given(
    size=st.sampled_from(SIZES),
    published=st.integers(min_value=1, max_value=240),
    back=st.integers(min_value=0, max_value=260),
)
def test_any_resume_delivers_what_history_holds_exactly_once(
    servers: dict[int, GatewayServer],
    broker: str,
    transport: str,
    size: int,
    published: int,
    back: int,
) -> None:
    """Property: any history size, publish count and cursor (in the trimmed tail too)."""
    channel = f"deep{next(_names)}:{broker}:{transport}"
    args: Any = (servers[size], size, transport, channel, published, back)
    anyio.run(check_resume, *args)
