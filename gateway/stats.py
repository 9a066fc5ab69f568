"""The gateway's own live figures, published on its own stream for the dashboard.

Every ``GATEWAY_STATS_INTERVAL`` seconds each process publishes one small
JSON snapshot (event ``stats``) to ``STATS_CHANNEL``: its node id, open
connections by transport, the published / delivered / slow-drop / broker
reconnect totals, and whether its broker link is ready. Totals, not rates:
a reader that misses a snapshot loses nothing, and computes rates from two.
With Redis every node publishes to the same channel, so one dashboard sees
the whole cluster, each node by its id.

Decisions:

* Snapshots go straight to the broker, not through ``Hub.publish``, so they
  are not counted as published messages: the dashboard charts clients'
  traffic, not its own feed.
* History is capped per channel, so a snapshot a second cannot flood it; a
  snapshot is kept to a couple of hundred bytes all the same.
* A publish that fails (broker away, paused) is skipped, never retried: the
  next tick says everything the lost one would have.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import orjson

from gateway.hub import Hub
from gateway.metrics import Metrics

logger = logging.getLogger(__name__)

STATS_CHANNEL = "gateway.stats"
STATS_EVENT = "stats"


def node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def snapshot(node: str, hub: Hub, metrics: Metrics) -> bytes:
    """One stats message's data: small, flat, totals only."""
    return orjson.dumps(
        {
            "node": node,
            "t": round(time.time(), 3),
            "connections": metrics.open_connections(),
            "published": int(metrics.value("gateway_messages_published_total")),
            "delivered": int(metrics.value("gateway_messages_delivered_total")),
            "slow_drops": int(metrics.value("gateway_slow_consumer_drops_total")),
            "broker_reconnects": int(metrics.value("gateway_broker_reconnects_total")),
            "ready": hub.ready,
        }
    )


async def publish_stats(hub: Hub, metrics: Metrics, interval_s: float) -> None:
    """Publish a snapshot every ``interval_s`` seconds, for ever."""
    node = node_id()
    while True:
        await anyio.sleep(interval_s)
        data = snapshot(node, hub, metrics).decode()
        try:
            with anyio.fail_after(max(interval_s, 1.0)):
                await hub.broker.publish(STATS_CHANNEL, STATS_EVENT, data)
        except Exception:
            logger.debug("stats snapshot not published", exc_info=True)


@asynccontextmanager
async def stats_running(hub: Hub, metrics: Metrics, interval_s: float) -> AsyncIterator[None]:
    """The stats loop's lifetime: started on entry, cancelled on exit."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(publish_stats, hub, metrics, interval_s)
        yield
        tasks.cancel_scope.cancel()
