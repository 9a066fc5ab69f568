"""Clients for the presence tests: members that stay connected, and watchers of join/leave."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import httpx
import websockets

from tests.sse_client import events


@dataclass
class Watcher:
    """The join and leave events one connection received, as ``(type, user)``, with their info."""

    seen: list[tuple[str, str]] = field(default_factory=list)
    infos: dict[str, Any] = field(default_factory=dict)
    ready: anyio.Event = field(default_factory=anyio.Event)

    def add(self, kind: str, user: str, info: Any) -> None:
        self.seen.append((kind, user))
        self.infos[user] = info

    def of(self, user: str) -> list[str]:
        return [kind for kind, who in self.seen if who == user]

    async def until(self, expected: list[str], user: str, timeout: float = 10) -> float:
        """Wait until ``user``'s events are ``expected``; the seconds it took."""
        started = time.monotonic()
        with anyio.fail_after(timeout):
            while self.of(user) != expected:
                assert len(self.of(user)) <= len(expected), (user, self.seen)
                await anyio.sleep(0.02)
        return time.monotonic() - started


async def watch_ws(ws_base: str, channel: str, watcher: Watcher, **params: str) -> None:
    """A ``/ws/{channel}?presence=1`` connection (a member too when ``user`` is given)."""
    url = str(httpx.URL(f"{ws_base}/ws/{channel}", params={"presence": "1", **params}))
    async with websockets.connect(url, compression=None) as ws:
        watcher.ready.set()
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] in ("join", "leave"):
                assert frame["channel"] == channel
                watcher.add(frame["type"], frame["user"], frame["info"])


@asynccontextmanager
async def watching(ws_base: str, channel: str) -> AsyncIterator[Watcher]:
    """A ``watch_ws`` listener running for the block, subscribed before the block starts."""
    watcher = Watcher()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(watch_ws, ws_base, channel, watcher)
        await watcher.ready.wait()
        yield watcher
        tasks.cancel_scope.cancel()


async def watch_ws_multi(ws_base: str, channel: str, watcher: Watcher, **params: str) -> None:
    """A ``/ws`` connection that subscribes ``channel`` with ``"presence": true``."""
    url = str(httpx.URL(f"{ws_base}/ws", params=params))
    async with websockets.connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": channel, "presence": True}))
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "subscribed":
                watcher.ready.set()
            elif frame["type"] in ("join", "leave"):
                watcher.add(frame["type"], frame["user"], frame["info"])


async def watch_sse(base: str, channel: str, watcher: Watcher, multi: bool = False, **params: str) -> None:
    """``/sse/{channel}?presence=1`` (or the several-channel ``/sse``): ``event: join``/``leave``."""
    url = f"{base}/sse" if multi else f"{base}/sse/{channel}"
    query = {"presence": "1", **params, **({"channel": channel} if multi else {})}
    async with httpx.AsyncClient(timeout=None) as client, client.stream("GET", url, params=query) as response:
        assert response.status_code == 200, await response.aread()
        watcher.ready.set()
        async for event in events(response):
            if event.event in ("join", "leave"):
                data = json.loads(event.data)
                assert data.get("channel", channel) == channel and (multi == ("channel" in data))
                watcher.add(event.event, data["user"], data["info"])


@asynccontextmanager
async def members(
    ws_base: str, channel: str, users: list[str], **params: str
) -> AsyncIterator[anyio.abc.TaskGroup]:
    """One WebSocket per entry of ``users`` (repeat a name for several tabs), held for the block."""
    async with anyio.create_task_group() as tasks:
        opened = anyio.Event()
        count = [0]

        async def hold(user: str) -> None:
            url = str(httpx.URL(f"{ws_base}/ws/{channel}", params={"user": user, **params}))
            async with websockets.connect(url, compression=None) as ws:
                count[0] += 1
                if count[0] == len(users):
                    opened.set()
                await ws.wait_closed()

        for user in users:
            tasks.start_soon(hold, user)
        with anyio.fail_after(10):
            await opened.wait()
        yield tasks
        tasks.cancel_scope.cancel()


async def snapshot(base: str, channel: str, **kw: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{base}/presence/{channel}", **kw)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def snapshot_until(base: str, channel: str, users: dict[str, int], timeout: float = 10) -> float:
    """Wait until the snapshot's members are ``users`` (user -> connections); seconds taken."""
    started = time.monotonic()
    with anyio.fail_after(timeout):
        while True:
            found = await snapshot(base, channel)
            have = {m["user"]: m["connections"] for m in found["members"]}
            if have == users:
                assert found["users"] == len(users)
                assert found["connections"] == sum(users.values())
                return time.monotonic() - started
            await anyio.sleep(0.05)
