"""Prometheus metrics, defined once per app on the app's own registry.

A registry per app (not the global one) lets tests run several apps in one
process. Counters move per message, never per subscriber: fan-out adds the
subscriber count in one call.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

TRANSPORTS = ("websocket", "sse", "poll")


class Connections:
    """``gateway_connections`` and ``gateway_connections_opened``: plain counts, read at scrape.

    Why not a ``Gauge`` and a ``Counter``: each ``inc``/``dec`` takes a lock,
    and a long-poll is a connection in and out per message: three of them
    were 5-7 % of the CPU of 5,000 pollers once a poll cost ~25 µs
    (py-spy, bench/README.md). The event loop is the only writer.
    """

    def __init__(self) -> None:
        self.open = dict.fromkeys(TRANSPORTS, 0)
        self.opened = dict.fromkeys(TRANSPORTS, 0)
        self._created = time.time()

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "gateway_connections", "Open client connections", labels=["transport"]
        )
        total = CounterMetricFamily(
            "gateway_connections_opened", "Client connections opened", labels=["transport"]
        )
        for transport in TRANSPORTS:
            gauge.add_metric([transport], self.open[transport])
            total.add_metric([transport], self.opened[transport], created=self._created)
        yield gauge
        yield total


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Connections()
        r.register(self.connections)
        self.published = Counter(
            "gateway_messages_published", "Messages published through this process", registry=r
        )
        self.delivered = Counter(
            "gateway_messages_delivered", "Messages handed to subscribers", registry=r
        )
        self.slow_consumer_drops = Counter(
            "gateway_slow_consumer_drops", "Subscribers cut off for falling behind", registry=r
        )
        self.broker_reconnects = Counter(
            "gateway_broker_reconnects", "Times the broker link was restored", registry=r
        )
        self.refused = Counter(
            "gateway_refused", "Requests refused, by HTTP status", ["status"], registry=r
        )
        self.accelerations = Gauge(
            "gateway_acceleration",
            "Reaches into other libraries on (1) or off (0): gateway/server/accelerations.py",
            ["name"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_publish_to_deliver_seconds",
            "Time from publish at the broker to fan-out in this process",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def opened(self, transport: str) -> None:
        connections = self.connections
        connections.open[transport] += 1
        connections.opened[transport] += 1

    def passed(self, transport: str) -> None:
        """Opened and closed at once (a poll answered from memory)."""
        self.connections.opened[transport] += 1

    def closed(self, transport: str) -> None:
        self.connections.open[transport] -= 1

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample of this registry (0 when absent)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def open_connections(self) -> dict[str, int]:
        return dict(self.connections.open)
