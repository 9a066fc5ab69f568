"""Gaps, on both brokers: a cursor history no longer covers is said, never skipped."""

from __future__ import annotations

import httpx
import pytest

from tests.clients import TRANSPORTS, Reader, publish, reader_for
from tests.conftest import gateway_env, redis_for
from tests.servers import GatewayServer

pytestmark = pytest.mark.anyio

HISTORY = 10


@pytest.fixture(scope="module")
def small_history(broker: str, request: pytest.FixtureRequest):
    redis = redis_for(broker, request)
    server = GatewayServer(gateway_env(broker, redis, GATEWAY_HISTORY_SIZE=str(HISTORY))).start()
    yield server
    server.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cursor_older_than_history_gets_a_gap_then_what_remains(
    small_history, channel, transport
):
    """History trimmed past the cursor: the gap signal first, then the oldest kept onwards."""
    async with httpx.AsyncClient() as client:
        ids = [
            await publish(small_history.url, channel, f"m{n}", client=client) for n in range(250)
        ]
    reader = await reader_for(transport, small_history)(channel, Reader(), HISTORY, since=ids[0])
    assert reader.items[0] == {"type": "gap"} and reader.gaps == 1
    got = [m["id"] for m in reader.messages]
    start = ids.index(got[0])
    assert start > 1 and got == ids[start : start + len(got)]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cursor_within_history_is_no_gap(small_history, channel, transport):
    """The newest messages, still held, resume without a gap signal."""
    ids = [await publish(small_history.url, channel, f"m{n}") for n in range(20)]
    reader = await reader_for(transport, small_history)(channel, Reader(), 3, since=ids[-4])
    assert reader.gaps == 0 and [m["id"] for m in reader.messages] == ids[-3:]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_cursor_from_a_gone_epoch_gets_a_gap(small_history, channel, transport):
    """A well-formed cursor of an epoch the broker no longer has: gap, then all history."""
    ids = [await publish(small_history.url, channel, f"m{n}") for n in range(3)]
    reader = await reader_for(transport, small_history)(channel, Reader(), 3, since="0ld3p0c4:1-0")
    assert reader.items[0] == {"type": "gap"}
    assert [m["id"] for m in reader.messages] == ids


async def test_a_restarted_embedded_gateway_says_gap_to_old_cursors(channel):
    """The embedded broker's history dies with the process: old cursors get a gap, on every transport."""
    server = GatewayServer(gateway_env("memory", None)).start()
    try:
        old = await publish(server.url, channel, "before")
        server.restart()
        new = await publish(server.url, channel, "after")
        assert old.split(":")[0] != new.split(":")[0]
        for transport in TRANSPORTS:
            reader = await reader_for(transport, server)(channel, Reader(), 1, since=old)
            assert reader.items[0] == {"type": "gap"}, transport
            assert [m["id"] for m in reader.messages] == [new], transport
    finally:
        server.close()
