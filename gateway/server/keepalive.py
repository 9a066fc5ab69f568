"""Keep-alive for the connections the gateway's HTTP protocol serves (protocol.py).

uvicorn arms a timer when a response ends and cancels it when the next
request arrives: for a long-poll, once per message per client, 8-11 % of
the CPU of 5,000 pollers (py-spy, bench/README.md). Here a poll's end
stamps its connection (``idle_since``), the next request clears the stamp,
and one sweep a second closes what waited past ``--timeout-keep-alive`` (so
a connection may stay idle up to a second longer). The same sweep closes a
connection that has not sent a whole request head within
``GATEWAY_HEADER_TIMEOUT`` of connecting or of starting a request (a
silent or slow-header client would otherwise hold its socket until the fd
limit). A request touches no shared structure; the sweep reads every
connection of the protocol.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol


class Stamped(Protocol):
    idle_since: float | None  # a response ended, no request since (the loop's time)
    reading_since: float | None  # waiting for a request's head since (connected, or begun)

    def timeout_keep_alive_handler(self) -> None:
        """uvicorn's: close the connection unless it is closing."""

    def header_timeout_handler(self) -> None:
        """No whole request head in time: close (saying why, if a request had begun)."""


class IdleConnections:
    """The open connections of one loop and timeout; the ones idle too long are closed."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, timeout_s: float, header_timeout_s: float
    ) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._header_timeout_s = header_timeout_s
        self._connections: dict[Stamped, None] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def join(self, protocol: Stamped) -> None:
        self._connections[protocol] = None
        if self._sweep is None:
            self._sweep = self._loop.call_later(SWEEP_S, self.sweep)

    def leave(self, protocol: Stamped) -> None:
        self._connections.pop(protocol, None)

    def sweep(self) -> None:
        self._sweep = None
        now = self._loop.time()
        deadline = now - self._timeout_s
        head_deadline = now - self._header_timeout_s
        for protocol in list(self._connections):
            since = protocol.idle_since
            if since is not None and since <= deadline:
                protocol.idle_since = None
                protocol.timeout_keep_alive_handler()  # uvicorn's: close unless closing
            reading = protocol.reading_since
            if reading is not None and reading <= head_deadline:
                protocol.reading_since = None
                protocol.header_timeout_handler()
        if self._connections:
            self._sweep = self._loop.call_later(SWEEP_S, self.sweep)


SWEEP_S = 1.0
HEADER_TIMEOUT_S = 10.0  # GATEWAY_HEADER_TIMEOUT's default (settings.py)
_IDLE: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[float, float], IdleConnections]
] = weakref.WeakKeyDictionary()


def idle_connections(
    loop: asyncio.AbstractEventLoop, timeout_s: float, header_timeout_s: float
) -> IdleConnections:
    """One sweep per loop and timeouts (a server runs on one loop; tests may run several)."""
    sweeps = _IDLE.setdefault(loop, {})
    key = (timeout_s, header_timeout_s)
    idle = sweeps.get(key)
    if idle is None:
        idle = sweeps[key] = IdleConnections(loop, timeout_s, header_timeout_s)
    return idle
