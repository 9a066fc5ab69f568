"""The app-wide objects, made in the lifespan and reached from each request."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from starlette.requests import HTTPConnection

from gateway.auth import Guard
from gateway.errors import GatewayError, Overloaded
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.presence import Presence
from gateway.settings import Settings

logger = logging.getLogger("gateway.connections")

# What a request to (or a publish through) a gateway whose lifespan has not run gets.
NOT_STARTED = "the gateway is not started: run its lifespan (see docs/embedding.md)"


@dataclass(slots=True)  # one per connection, held for its whole life
class Connection:
    transport: str
    channel: str
    id: int = 0
    reason: str = "client gone"
    started: float = 0.0
    logged: bool = False  # its open line was logged: its close line is too


class Record(Protocol):
    """What counting a connection in and out reads and sets (a ``Connection``, or a poll's own)."""

    transport: str
    channel: str
    id: int
    reason: str
    started: float
    logged: bool


C = TypeVar("C", bound=Record)


@dataclass
class Gateway:
    settings: Settings
    hub: Hub
    metrics: Metrics
    guard: Guard
    presence: Presence
    open_connections: int = 0
    closed_connections: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    # Long-poll queries parsed, by their raw bytes (transports/longpoll.py ``asked_of``).
    poll_queries: dict[bytes, Any] = field(default_factory=dict)

    def check_capacity(self) -> None:
        """Refuse a new connection past ``GATEWAY_MAX_CONNECTIONS`` (503, WS 1013)."""
        if self.open_connections >= self.settings.max_connections:
            raise Overloaded(f"this process holds {self.open_connections} connections, its maximum")

    def connection(self, transport: str, channel: str) -> Counted:
        """Count one client connection; log a line when it opens and one when it closes.

        The close line's reason is what the transport set on ``Connection``
        (lagged, shutting down, answered ...), a refusal's reason when a
        ``GatewayError`` ended it, or ``error`` for a bug.
        """
        return Counted(self, transport, channel)

    def opened(self, transport: str, channel: str) -> Connection:
        """Count a connection in (``connection`` without the context manager: the poll's path)."""
        return self.count_in(Connection(transport, channel))

    def count_in(self, conn: C) -> C:
        """Count in a record made by the caller (a poll served with no task is its own)."""
        conn.id = next(self._ids)
        conn.started = time.monotonic()
        conn.logged = False
        self.open_connections += 1
        transport = conn.transport
        self.metrics.opened(transport)
        # A long-poll is one request per message or timeout: at thousands of
        # clients its two lines a request cost more CPU than the delivery.
        # Polls log at DEBUG, but for an end out of the ordinary (shutdown,
        # a refusal, an error); their counts are in /metrics either way.
        level = _LEVELS.get(transport, logging.INFO)  # (``_level``, without the call)
        if logger.isEnabledFor(level):
            conn.logged = True
            fields = _fields(conn=conn.id, transport=conn.transport, channel=conn.channel)
            logger.log(level, "open %s", fields)
        return conn

    def passed(self, transport: str, channel: str, reason: str) -> None:
        """A connection in and out at once (a poll answered from memory), as ``opened``
        then ``closed`` count it; its record made only when its lines are logged."""
        if logger.isEnabledFor(_LEVELS.get(transport, logging.INFO)):
            conn = self.opened(transport, channel)
            conn.reason = reason
            self.closed(conn, cycles=False)
            return
        self.metrics.passed(transport)

    def closed(self, conn: Record, *, cycles: bool = True) -> None:
        """Count a connection out; its close line unless it is a routine poll end.

        ``cycles=False``: its end leaves no reference cycle for the garbage
        collector (a poll served with no task, protocol.py), so it does not
        count in ``closed_connections``, which tells the collector how much
        cyclic garbage may wait (collector.py).
        """
        self.open_connections -= 1
        if cycles:
            self.closed_connections += 1
        self.metrics.closed(conn.transport)
        routine = conn.transport == "poll" and conn.reason in ROUTINE_POLL_ENDS
        if not routine or conn.logged:
            _log_close(_level(conn.transport) if routine else logging.INFO, conn)


class Counted:
    """``Gateway.connection``'s block; a class, not a generator: a streaming
    connection's task holds it for its whole life (a generator frame is ~0.5 KB)."""

    __slots__ = ("_channel", "_conn", "_gateway", "_transport")

    def __init__(self, gateway: Gateway, transport: str, channel: str) -> None:
        self._gateway = gateway
        self._transport = transport
        self._channel = channel

    def __enter__(self) -> Connection:
        self._conn = self._gateway.opened(self._transport, self._channel)
        return self._conn

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        conn = self._conn
        if isinstance(exc, GatewayError):
            conn.reason = exc.reason
        elif isinstance(exc, Exception):
            conn.reason = f"error: {type(exc).__name__}"
        self._gateway.closed(conn)


def _level(transport: str) -> int:
    return _LEVELS.get(transport, logging.INFO)


_LEVELS = {"poll": logging.DEBUG}


ROUTINE_POLL_ENDS = frozenset({"answered", "timed out", "client gone"})


def _log_close(level: int, conn: Record) -> None:
    fields = _fields(
        conn=conn.id,
        transport=conn.transport,
        channel=conn.channel,
        duration_s=f"{time.monotonic() - conn.started:.3f}",
        reason=conn.reason,
    )
    logger.log(level, "close %s", fields)


def _fields(**fields: object) -> str:
    """``key=value`` pairs (logfmt): a value with spaces or quotes is JSON-quoted."""
    return " ".join(f"{key}={_quote(str(value))}" for key, value in fields.items())


def _quote(value: str) -> str:
    if value and not any(char in value for char in ' "=\\') and value.isprintable():
        return value
    return json.dumps(value)


def gateway_of(conn: HTTPConnection) -> Gateway:
    """The running ``Gateway``, held by the ``GatewayApp`` that is the scope's ``app``.

    Plain reads: not ``conn.state.gateway``, which builds a ``State``
    object per request, 5 % of the CPU of 5,000 long-poll clients (py-spy,
    bench/). ``GatewayApp`` answers 503 itself before it is started, so the
    gateway is always there.
    """
    gateway = conn.scope["app"].gateway
    assert isinstance(gateway, Gateway)
    return gateway
