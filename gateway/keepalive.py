"""Keep-alive for the connections the gateway's HTTP protocol serves (protocol.py).

uvicorn arms a timer when a response ends and cancels it when the next
request arrives: for a long-poll, once per message per client, 8-11 % of
the CPU of 5,000 pollers (py-spy, bench/README.md). Here a poll's end
stamps its connection (``idle_since``), the next request clears the stamp,
and one sweep a second closes what waited past ``--timeout-keep-alive`` (so
a connection may stay idle up to a second longer). A request touches no
shared structure; the sweep reads every connection of the protocol.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol


class Stamped(Protocol):
    idle_since: float | None  # a response ended, no request since (the loop's time)

    def timeout_keep_alive_handler(self) -> None:
        """uvicorn's: close the connection unless it is closing."""


class IdleConnections:
    """The open connections of one loop and timeout; the ones idle too long are closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
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
        deadline = self._loop.time() - self._timeout_s
        for protocol in list(self._connections):
            since = protocol.idle_since
            if since is not None and since <= deadline:
                protocol.idle_since = None
                protocol.timeout_keep_alive_handler()  # uvicorn's: close unless closing
        if self._connections:
            self._sweep = self._loop.call_later(SWEEP_S, self.sweep)


SWEEP_S = 1.0
_IDLE: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, IdleConnections]] = (
    weakref.WeakKeyDictionary()
)


def idle_connections(loop: asyncio.AbstractEventLoop, timeout_s: float) -> IdleConnections:
    """One sweep per loop and timeout (a server runs on one loop; tests may run several)."""
    sweeps = _IDLE.setdefault(loop, {})
    idle = sweeps.get(timeout_s)
    if idle is None:
        idle = sweeps[timeout_s] = IdleConnections(loop, timeout_s)
    return idle
