"""The event loop the gateway runs on: uvloop, accepting every waiting connection at once.

Why: libuv (1.45 and later, inside uvloop) accepts *one* connection per
loop iteration. A busy gateway's iterations are long (one fan-out to
thousands of clients, thousands of long-polls answered), so its accept rate
collapses exactly when clients arrive in numbers: measured with 5,000
long-poll clients (``bench/``), the listen queue held 1,800 connections and
drained at 4 a second, and a third of the clients got no answer for 20 s.
asyncio's own loop accepts up to the backlog per wake-up, but delivered a
quarter fewer messages per CPU-second here. So: uvloop for everything, and
for plain TCP listeners our own accept loop, which takes every connection
waiting (up to the backlog) each time the listening socket is readable and
hands each to uvloop (``connect_accepted_socket``).

Use it with uvicorn's ``--loop gateway.server.loop:GreedyAcceptLoop`` (the
Procfile and ``python -m gateway`` do). TLS listeners and Unix sockets keep
uvloop's own server.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

import uvloop

from gateway.server import accelerations

logger = logging.getLogger(__name__)

ACCEPT_RETRY_S = 1.0  # out of file descriptors: stop accepting this long
RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class GreedyAcceptLoop(uvloop.Loop):
    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        **kwargs: Any,
    ) -> Any:
        plain = ssl is not None or (sock is not None and sock.family == socket.AF_UNIX)
        if plain or not accelerations.on(accelerations.ACCEPT_LOOP):
            serve: Any = super().create_server  # uvloop's stubs type only one overload
            return await serve(
                protocol_factory, host, port, sock=sock, backlog=backlog, ssl=ssl, **kwargs
            )
        listeners = [sock] if sock is not None else _bind(host, port)
        return Acceptor(self, protocol_factory, listeners, backlog)


class Acceptor:
    """A listening server that accepts greedily; the parts of ``asyncio.Server`` uvicorn uses."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        listeners: list[socket.socket],
        backlog: int,
    ) -> None:
        self._loop = loop
        self._factory = protocol_factory
        self._backlog = backlog
        self._closed = loop.create_future()
        self.sockets = listeners
        for listener in listeners:
            listener.setblocking(False)
            listener.listen(backlog)
            loop.add_reader(listener.fileno(), self._accept, listener)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(self._backlog):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRORS:
                    raise
                logger.error("cannot accept connections (%s); pausing %.0f s", exc, ACCEPT_RETRY_S)
                self._loop.remove_reader(listener.fileno())
                self._loop.call_later(ACCEPT_RETRY_S, self._resume, listener)
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:
            conn.close()  # the client left before its transport was made

    def _resume(self, listener: socket.socket) -> None:
        if not self._closed.done():
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def is_serving(self) -> bool:
        return not self._closed.done()

    def close(self) -> None:
        if self._closed.done():
            return
        for listener in self.sockets:
            self._loop.remove_reader(listener.fileno())
            listener.close()
        self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


def _bind(host: str | None, port: int | None) -> list[socket.socket]:
    """Listening sockets for ``host`` (every address it resolves to) and ``port``."""
    infos = socket.getaddrinfo(
        host or None, port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in _unique(infos):
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _unique(infos: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One entry per address (getaddrinfo may name one twice)."""
    kept: dict[Any, tuple[Any, ...]] = {}
    for info in infos:
        kept.setdefault(info[4], info)
    return list(kept.values())
