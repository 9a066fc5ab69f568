"""Prometheus metrics, defined once per app on the app's own registry.

A registry per app (not the global one) lets tests run several apps in one
process. Counters move per message, never per subscriber: fan-out adds the
subscriber count in one call.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TRANSPORTS = ("websocket", "sse", "poll")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "gateway_connections", "Open client connections", ["transport"], registry=r
        )
        self.connections_total = Counter(
            "gateway_connections_opened", "Client connections opened", ["transport"], registry=r
        )
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
        self.latency = Histogram(
            "gateway_publish_to_deliver_seconds",
            "Time from publish at the broker to fan-out in this process",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        # Each transport's children looked up once: ``labels()`` per request
        # was 8 % of the CPU of 5,000 long-poll clients (py-spy, bench/).
        self._open = {t: self.connections.labels(t) for t in TRANSPORTS}
        self._opened = {t: self.connections_total.labels(t) for t in TRANSPORTS}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def opened(self, transport: str) -> None:
        self._open[transport].inc()
        self._opened[transport].inc()

    def closed(self, transport: str) -> None:
        self._open[transport].dec()

    def value(self, name: str, **labels: str) -> float:
        """The current value of one sample of this registry (0 when absent)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def open_connections(self) -> dict[str, int]:
        return {t: int(self.value("gateway_connections", transport=t)) for t in TRANSPORTS}
