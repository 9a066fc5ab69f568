"""Real clients of the three transports, each collecting what it receives.

Every reader returns a list of dicts ``{"id","channel","event","data"}`` plus
``{"type": "gap"}`` markers where the gateway said history was lost.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import websockets

from tests.sse_client import events

TRANSPORTS = ["sse", "websocket", "poll"]
GAP = {"type": "gap"}


@dataclass
class Reader:
    """What one subscriber saw; ``ready`` is set once it is subscribed."""

    items: list[dict[str, Any]] = field(default_factory=list)
    ready: anyio.Event = field(default_factory=anyio.Event)
    cursor: str | None = None
    closed_with: tuple[int | None, str] | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [item for item in self.items if item != GAP]

    @property
    def gaps(self) -> int:
        return sum(1 for item in self.items if item == GAP)

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        if item != GAP and item.get("id"):
            self.cursor = item["id"]


def query(since: str | None = None, last: int | None = None, **extra: Any) -> dict[str, Any]:
    params = {key: value for key, value in extra.items() if value is not None}
    if since is not None:
        params["since"] = since
    if last is not None:
        params["last"] = last
    return params


async def read_sse(
    base: str,
    channel: str,
    reader: Reader,
    count: int,
    since: str | None = None,
    last: int | None = None,
    last_event_id: str | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> Reader:
    """Read until ``count`` messages have arrived, or the stream ends."""
    hdrs = dict(headers or {})
    if last_event_id:
        hdrs["Last-Event-ID"] = last_event_id
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as client:
        async with client.stream(
            "GET",
            f"{base}/sse/{channel}",
            params={**query(since, last), **(params or {})},
            headers=hdrs,
        ) as response:
            response.raise_for_status()
            async for event in events(response):
                if event.event in ("", ":"):
                    reader.ready.set()  # the gateway's first words, a comment: subscribed
                    continue
                if event.event == "gap":
                    reader.add(dict(GAP))
                else:
                    reader.add(
                        {
                            "id": event.id,
                            "channel": channel,
                            "event": event.event,
                            "data": event.data,
                        }
                    )
                if len(reader.messages) >= count:
                    break
    return reader


async def read_ws(
    ws_base: str,
    channel: str,
    reader: Reader,
    count: int,
    since: str | None = None,
    last: int | None = None,
    params: dict[str, Any] | None = None,
) -> Reader:
    url = str(httpx.URL(f"{ws_base}/ws/{channel}", params={**query(since, last), **(params or {})}))
    # No client-side flow control (max_queue=None): a reader that stops at ``count``
    # with more queued stopped reading the socket at 16 frames, never read the
    # server's close reply, and waited out websockets' 10 s close_timeout (1006).
    async with websockets.connect(url, max_size=2**22, compression=None, max_queue=None) as ws:
        reader.ready.set()
        try:
            async for raw in ws:
                frame = json.loads(raw)
                if frame["type"] == "gap":
                    reader.add(dict(GAP))
                elif frame["type"] == "message":
                    reader.add({key: frame[key] for key in ("id", "channel", "event", "data")})
                if len(reader.messages) >= count:
                    break
        except websockets.ConnectionClosed as exc:
            reader.closed_with = (
                exc.rcvd.code if exc.rcvd else None,
                exc.rcvd.reason if exc.rcvd else "",
            )
    return reader


async def read_poll(
    base: str,
    channel: str,
    reader: Reader,
    count: int,
    since: str | None = None,
    last: int | None = None,
    timeout: float = 5,
    params: dict[str, Any] | None = None,
) -> Reader:
    """Poll in a loop, carrying the cursor, until ``count`` messages arrived."""
    async with httpx.AsyncClient(timeout=60) as client:
        cursor = since
        first = True
        while len(reader.messages) < count:
            if first and since is None and last is None:
                # Learn the current cursor first, so "ready" means subscribed.
                answer = await _poll(client, base, channel, {**(params or {}), "timeout": 0})
                cursor = answer["cursor"]
                reader.ready.set()
            else:
                p = query(cursor, last if first else None, timeout=timeout, **(params or {}))
                if cursor is None and not first:
                    p.pop("since", None)
                answer = await _poll(client, base, channel, p)
                reader.ready.set()
                if answer["gap"]:
                    reader.add(dict(GAP))
                for message in answer["messages"]:
                    reader.add(message)
                cursor = answer["cursor"]
            first = False
    return reader


async def _poll(client: httpx.AsyncClient, base: str, channel: str, params: dict[str, Any]) -> Any:
    response = await client.get(f"{base}/poll/{channel}", params=params)
    response.raise_for_status()
    return response.json()


Read = Callable[..., Any]


def reader_for(transport: str, server: Any) -> Callable[..., Any]:
    """A ``read(channel, reader, count, **kw)`` for the transport, bound to the server."""
    if transport == "sse":
        return lambda *a, **kw: read_sse(server.url, *a, **kw)
    if transport == "websocket":
        return lambda *a, **kw: read_ws(server.ws_url, *a, **kw)
    assert transport == "poll"
    return lambda *a, **kw: read_poll(server.url, *a, **kw)


async def publish(
    base: str,
    channel: str,
    data: str,
    event: str | None = None,
    client: httpx.AsyncClient | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    params = {"event": event} if event else {}
    if client is None:
        async with httpx.AsyncClient(timeout=30) as own:
            return await publish(base, channel, data, event, own, headers)
    response = await client.post(
        f"{base}/publish/{channel}", content=data.encode(), params=params, headers=headers or {}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@asynccontextmanager
async def subscribed(
    read: Callable[..., Any], channel: str, count: int, **kw: Any
) -> AsyncIterator[Reader]:
    """Start a reader in the background; yield once it is subscribed; wait for it at exit."""
    reader = Reader()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: read(channel, reader, count, **kw))
        with anyio.fail_after(15):
            await reader.ready.wait()
        yield reader


@asynccontextmanager
async def on_every_transport(server: Any, channel: str, count: int) -> AsyncIterator[dict[str, Reader]]:
    """One reader per transport on ``channel``, all subscribed; at exit, wait until each has ``count``."""
    readers = {transport: Reader() for transport in TRANSPORTS}
    async with anyio.create_task_group() as tasks:
        for transport, reader in readers.items():
            read = reader_for(transport, server)
            tasks.start_soon(lambda r=read, rd=reader: r(channel, rd, count))
        with anyio.fail_after(10):
            for reader in readers.values():
                await reader.ready.wait()
        yield readers
