"""Publishers: how a run's messages reach the server under test.

* ``http``: ``POST <publish path>`` with the data as body, over a few
  keep-alive connections (the gateway, the tutorial app, the Socket.IO app
  and Nchan all take this form).
* ``redis-fcall``: straight into Redis through the gateway's atomic Redis
  Function (``FCALL <prefix>_publish_v3 3 <the channel's keys> data``), as any
  other service would publish without an HTTP hop.
* ``redis-publish``: a plain ``PUBLISH channel data`` (the tutorial's own
  fan-out path, fire-and-forget).
* ``sio-redis``: python-socketio's external emitter (a write-only
  ``AsyncRedisManager``), how another process emits to Socket.IO rooms.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

from httpclients import HttpConnection


class Publisher(Protocol):
    async def publish(self, data: str) -> None: ...

    async def aclose(self) -> None: ...


class _PostConnection(HttpConnection):
    """Pipelined POSTs: requests leave in call order, answers come back in that order."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.answers: collections.deque[asyncio.Future[int]] = collections.deque()
        self.up = asyncio.get_running_loop().create_future()

    def opened(self) -> None:
        self.up.set_result(None)

    def response_done(self, body: bytes) -> None:
        if self.answers:
            self.answers.popleft().set_result(self.status)

    def on_lost(self, reason: str) -> None:
        while self.answers:
            self.answers.popleft().set_exception(ConnectionError(reason))

    def post(self, target: str, body: bytes) -> asyncio.Future[int]:
        answer = asyncio.get_running_loop().create_future()
        self.answers.append(answer)
        self.request("POST", target, body, "\r\nContent-Type: text/plain; charset=utf-8")
        return answer


class HttpPublisher:
    """One keep-alive connection, pipelined, so the server sees the messages in seq order.

    A publish does not wait for the previous one's answer (a server busy
    fanning out must not hold the publisher back below its rate), yet
    the server reads them in order, one connection's requests in turn.
    """

    def __init__(self, host: str, port: int, target: str) -> None:
        self.host, self.port, self.target = host, port, target
        self.conn: _PostConnection | None = None
        self.failures: dict[str, int] = {}

    async def start(self) -> HttpPublisher:
        await self._connect()
        return self

    async def _connect(self) -> _PostConnection:
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: _PostConnection(self.host, self.port), self.host, self.port
        )
        await conn.up
        self.conn = conn
        return conn

    async def publish(self, data: str) -> None:
        conn = self.conn
        if conn is None or conn.transport is None or conn.transport.is_closing():
            conn = await self._connect()  # the server closed it (after an error, say)
        try:
            status = await conn.post(self.target, data.encode())
        except (ConnectionError, OSError):
            self._count("publish: connection lost")
            return
        if status // 100 != 2:
            self._count(f"publish: http {status}")

    def _count(self, failure: str) -> None:
        self.failures[failure] = self.failures.get(failure, 0) + 1

    async def aclose(self) -> None:
        if self.conn is not None:
            self.conn.close()


class SocketIoRedisPublisher:
    """python-socketio's own external emitter: a write-only AsyncRedisManager."""

    def __init__(self, url: str, channel: str) -> None:
        import socketio

        self.manager = socketio.AsyncRedisManager(url, write_only=True)
        self.channel = channel
        self.order = asyncio.Lock()  # in call order, as RedisPublisher

    async def publish(self, data: str) -> None:
        async with self.order:
            await self.manager.emit("message", data, namespace="/", room=self.channel)

    async def aclose(self) -> None:
        pass


class RedisPublisher:
    def __init__(self, url: str, command: tuple[str | int, ...]) -> None:
        import redis.asyncio

        self.client = redis.asyncio.from_url(url)
        self.command = command
        # One at a time, in call order (asyncio.Lock wakes its waiters FIFO):
        # concurrent commands on a pool's connections may reach Redis in
        # another order than their seq (seen: 6 swaps in 300 at 10 msg/s).
        self.order = asyncio.Lock()
        self.failures: dict[str, int] = {}

    @classmethod
    def fcall(cls, url: str, prefix: str, channel: str) -> RedisPublisher:
        function = "".join(c if c.isalnum() else "_" for c in prefix) + "_publish_v3"
        base = f"{prefix}:{{{channel}}}"
        return cls(url, ("FCALL", function, 3, base, f"{base}:h", f"{base}:e"))

    @classmethod
    def plain(cls, url: str, channel: str) -> RedisPublisher:
        return cls(url, ("PUBLISH", channel))

    async def publish(self, data: str) -> None:
        async with self.order:
            await self.client.execute_command(*self.command, data)

    async def aclose(self) -> None:
        await self.client.aclose()
