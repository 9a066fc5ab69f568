"""The app-wide objects, made in the lifespan and reached from each request."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from gateway.auth import Guard
from gateway.errors import Overloaded
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.settings import Settings

logger = logging.getLogger("gateway.connections")


@dataclass
class Connection:
    transport: str
    channel: str
    reason: str = "client gone"


@dataclass
class Gateway:
    settings: Settings
    hub: Hub
    metrics: Metrics
    guard: Guard
    open_connections: int = 0
    draining: bool = field(default=False)

    def check_capacity(self) -> None:
        """Refuse a new connection past ``GATEWAY_MAX_CONNECTIONS`` (503, WS 1013)."""
        if self.open_connections >= self.settings.max_connections:
            raise Overloaded(
                f"this process holds {self.open_connections} connections, its maximum"
            )

    @contextmanager
    def connection(self, transport: str, channel: str) -> Iterator[Connection]:
        """Count and log one client connection."""
        conn = Connection(transport, channel)
        self.open_connections += 1
        self.metrics.opened(transport)
        started = time.monotonic()
        logger.info("open transport=%s channel=%s", transport, channel)
        try:
            yield conn
        finally:
            self.open_connections -= 1
            self.metrics.closed(transport)
            logger.info(
                "close transport=%s channel=%s duration_s=%.3f reason=%s",
                transport,
                channel,
                time.monotonic() - started,
                conn.reason,
            )


def gateway_of(conn: HTTPConnection) -> Gateway:
    gateway = conn.state.gateway
    assert isinstance(gateway, Gateway)
    return gateway
