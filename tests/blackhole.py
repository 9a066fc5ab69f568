"""A TCP proxy that can stop forwarding without closing: a network gone silent.

A blocked port, a NAT that forgot the flow, a laptop that roamed: packets
are dropped without a word, and neither end's TCP says anything for
minutes. ``Blackhole.block()`` models the worst of it: every connection
open at that moment, and every one opened while blocked, is frozen for
good (nothing forwarded either way, nothing closed: the retransmissions
never get through), as a client must assume. After ``unblock()`` new
connections are forwarded again. It runs its own event loop in a thread,
so sync tests (Playwright) can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from tests.servers import free_port

CHUNK = 65536
T = TypeVar("T")


class Blackhole:
    """Forwards 127.0.0.1:``port`` to ``upstream_port`` until told to go silent."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.blocked = False
        self.frozen: list[asyncio.StreamWriter] = []  # kept open, never read or written again
        self.writers: set[asyncio.StreamWriter] = set()  # every socket, to close at the end
        self.pumps: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Blackhole:
        self.thread.start()
        self.server = self._call(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        return self

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def block(self) -> None:
        """Go silent: freeze every connection, and those that come, until ``unblock``."""
        self._call(self._block())

    def unblock(self) -> None:
        """Forward new connections again; the frozen ones stay frozen."""
        self._call(self._unblock())

    async def _block(self) -> None:
        self.blocked = True
        for task in list(self.pumps):
            task.cancel()  # the sockets stay open: nothing is said to either end

    async def _unblock(self) -> None:
        self.blocked = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        if self.blocked:
            self.frozen.append(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self.writers.add(up_writer)
        if self.blocked:  # blocked while connecting upstream
            self.frozen += [writer, up_writer]
            return
        for source, sink, other in ((reader, up_writer, writer), (up_reader, writer, up_writer)):
            task = asyncio.ensure_future(self._pump(source, sink, other))
            self.pumps.add(task)
            task.add_done_callback(self.pumps.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, other: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await source.read(CHUNK):
                sink.write(data)
                await sink.drain()
        except asyncio.CancelledError:
            self.frozen += [sink, other]  # blocked: keep both ends open and silent
            raise
        except OSError:
            pass
        # One end closed while forwarding: close the other, as TCP would say.
        with contextlib.suppress(OSError):
            sink.close()

    def close(self) -> None:
        async def stop() -> None:
            if self.server is not None:
                self.server.close()
            for task in list(self.pumps):
                task.cancel()
            await asyncio.sleep(0)
            for writer in self.writers:
                with contextlib.suppress(Exception):
                    writer.transport.abort()
            await asyncio.sleep(0.05)  # let the aborts run their callbacks

        with contextlib.suppress(Exception):
            self._call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@contextlib.contextmanager
def blackhole(upstream_port: int) -> Iterator[Blackhole]:
    proxy = Blackhole(upstream_port).start()
    try:
        yield proxy
    finally:
        proxy.close()
