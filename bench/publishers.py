"""Publishers: how a run's messages reach the server under test.

* ``http``: ``POST <publish path>`` with the data as body, over a few
  keep-alive connections (the gateway, the tutorial app, the Socket.IO app
  and Nchan all take this form).
* ``redis-fcall``: straight into Redis through the gateway's atomic Redis
  Function (``FCALL <prefix>_publish 1 <prefix>:{channel} data``), as any
  other service would publish without an HTTP hop.
* ``redis-publish``: a plain ``PUBLISH channel data`` (the tutorial's own
  fan-out path, fire-and-forget).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from httpclients import HttpConnection


class Publisher(Protocol):
    async def publish(self, data: str) -> None: ...

    async def aclose(self) -> None: ...


class _PostConnection(HttpConnection):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.answer: asyncio.Future[int] | None = None
        self.up = asyncio.get_running_loop().create_future()

    def opened(self) -> None:
        self.up.set_result(None)

    def response_done(self, body: bytes) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(self.status)

    def on_lost(self, reason: str) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError(reason))

    async def post(self, target: str, body: bytes) -> int:
        self.answer = asyncio.get_running_loop().create_future()
        self.request("POST", target, body, "\r\nContent-Type: text/plain; charset=utf-8")
        return await self.answer


class HttpPublisher:
    def __init__(self, host: str, port: int, target: str, connections: int = 1) -> None:
        self.host, self.port, self.target = host, port, target
        self.size = connections
        self.idle: asyncio.Queue[_PostConnection] = asyncio.Queue()
        self.all: list[_PostConnection] = []
        self.failures: dict[str, int] = {}

    async def start(self) -> HttpPublisher:
        for _ in range(self.size):
            self.idle.put_nowait(await self._connect())
        return self

    async def _connect(self) -> _PostConnection:
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: _PostConnection(self.host, self.port), self.host, self.port
        )
        await conn.up
        self.all.append(conn)
        return conn

    async def publish(self, data: str) -> None:
        conn = await self.idle.get()
        try:
            if conn.transport is None or conn.transport.is_closing():
                conn = await self._connect()  # the server closed it (after an error, say)
            status = await conn.post(self.target, data.encode())
        except (ConnectionError, OSError):
            self._count("publish: connection lost")
            self.idle.put_nowait(await self._connect())
            return
        if status // 100 != 2:
            self._count(f"publish: http {status}")
        self.idle.put_nowait(conn)

    def _count(self, failure: str) -> None:
        self.failures[failure] = self.failures.get(failure, 0) + 1

    async def aclose(self) -> None:
        for conn in self.all:
            conn.close()


class RedisPublisher:
    def __init__(self, url: str, command: tuple[str | int, ...]) -> None:
        import redis.asyncio

        self.client = redis.asyncio.from_url(url)
        self.command = command
        self.failures: dict[str, int] = {}

    @classmethod
    def fcall(cls, url: str, prefix: str, channel: str) -> RedisPublisher:
        function = "".join(c if c.isalnum() else "_" for c in prefix) + "_publish"
        return cls(url, ("FCALL", function, 1, f"{prefix}:{{{channel}}}"))

    @classmethod
    def plain(cls, url: str, channel: str) -> RedisPublisher:
        return cls(url, ("PUBLISH", channel))

    async def publish(self, data: str) -> None:
        await self.client.execute_command(*self.command, data)

    async def aclose(self) -> None:
        await self.client.aclose()
