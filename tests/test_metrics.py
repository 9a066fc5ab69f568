"""``/metrics`` read by prometheus-client's own parser, counters moving with traffic.

(Slow-consumer drops are watched moving in tests/test_limits.py.)
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import TRANSPORTS, publish, reader_for, subscribed
from tests.servers import GatewayServer, RedisServer

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(server: GatewayServer) -> Samples:
    """Every sample of /metrics, keyed by sample name and sorted labels."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def eventually(server: GatewayServer, check, timeout: float = 15) -> Samples:  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while not check(samples := await scrape(server)):
            await anyio.sleep(0.05)
    return samples


async def test_connections_published_delivered_and_latency_move_with_traffic(gateway, channel):
    """Open one client per transport, publish five: every counter says so."""
    before = await scrape(gateway)
    readers = []
    async with subscribed(reader_for("websocket", gateway), channel, 5) as ws, \
            subscribed(reader_for("sse", gateway), channel, 5) as sse:
        readers += [ws, sse]
        during = await eventually(gateway, lambda s: all(
            value(s, "gateway_connections", transport=t) >= 1 for t in ("websocket", "sse")))
        for transport in ("websocket", "sse"):
            assert value(during, "gateway_connections_opened_total", transport=transport) >= \
                value(before, "gateway_connections_opened_total", transport=transport) + 1
        async with httpx.AsyncClient(timeout=30) as client:
            for n in range(5):
                await publish(gateway.url, channel, f"m{n}", client=client)
            answer = await client.get(f"{gateway.url}/poll/{channel}", params={"since": "0"})
            assert len(answer.json()["messages"]) == 5
    # Everyone left: the gauges come back (an idle SSE stream notices its
    # client gone at its next heartbeat, 1 s here).
    after = await eventually(gateway, lambda s: all(
        value(s, "gateway_connections", transport=t) == value(before, "gateway_connections", transport=t)
        for t in TRANSPORTS))
    assert all(len(reader.messages) == 5 for reader in readers)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("gateway_messages_published_total") >= 5
    assert grew("gateway_messages_delivered_total") >= 10  # five messages, two subscribers
    assert grew("gateway_publish_to_deliver_seconds_count") >= 5
    assert grew("gateway_publish_to_deliver_seconds_sum") >= 0
    assert grew("gateway_connections_opened_total", transport="poll") >= 1


async def test_refusals_are_counted_by_status(gateway, channel):
    """A 400 and a 413 show up in gateway_refused_total under their status."""
    before = await scrape(gateway)
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"{gateway.url}/poll/{channel}", params={"since": "junk"})).status_code == 400
        big = b"x" * 70000
        assert (await client.post(f"{gateway.url}/publish/{channel}", content=big)).status_code == 413
    after = await scrape(gateway)
    for status in ("400", "413"):
        assert value(after, "gateway_refused_total", status=status) == \
            value(before, "gateway_refused_total", status=status) + 1


@pytest.fixture
def gateway_on_fresh_redis(fresh_redis: RedisServer) -> Iterator[tuple[GatewayServer, RedisServer]]:
    server = GatewayServer({"REDIS_URL": fresh_redis.url}).start()
    yield server, fresh_redis
    server.close()


async def test_a_broker_reconnect_is_counted(gateway_on_fresh_redis, channel):
    """Restarting Redis moves gateway_broker_reconnects_total once the link is back."""
    server, redis = gateway_on_fresh_redis
    assert value(await scrape(server), "gateway_broker_reconnects_total") == 0
    redis.restart()
    await eventually(server, lambda s: value(s, "gateway_broker_reconnects_total") >= 1, timeout=30)
