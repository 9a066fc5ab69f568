"""An accepted WebSocket, trimmed to what an idle socket needs: about 5 KB less each.

Why: an idle WebSocket cost 19 KB of RSS at 10,000 connections, against
15 KB for an SSE stream and 10 KB in Nchan (bench/README.md). tracemalloc
on 1,000 idle sockets (``bench/ws_memory.py``) showed what uvicorn's
websockets-sansio protocol keeps after the handshake that nothing reads
again, or keeps in a heavier shape than one reader needs:

* websockets' handshake ``Request`` and ``Response`` with their
  ``Headers``, held by uvicorn, by the scope and by Starlette's parsed copy;
  and the ``Request`` once more, as a local variable of the server's
  parser generator (``ServerProtocol.parse``), for the socket's whole life.
  That one cannot be let go, so its ``Headers`` are: the request keeps an
  empty set. (Swapping that generator for the frame parser it runs, at a
  frame boundary, freed the frame too, but a browser test then lost a
  client's frames about one run in five, for no cause found: not done.)
* uvicorn's receive queue, an ``asyncio.Queue`` (two ``deque``s of about
  630 bytes each when empty, its ``join`` event, its putters) for one
  reader and one writer: an ``Inbox`` does what uvicorn asks of it
  (``put_nowait``, ``get``, ``empty``) in a list and one future.
* the waiters ``deque`` of its ``writable`` event, which a list serves.

Everything here only touches uvicorn's ``WebSocketsSansIOProtocol`` (the
one ``--ws auto`` picks); under another server nothing changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.websockets import WebSocket
from websockets.datastructures import Headers
from websockets.http11 import Request

from gateway.server import accelerations
from gateway.server.direct import RAW_SEND


def forget_handshake(websocket: WebSocket) -> None:
    """After ``accept``: drop what the handshake left, slim the receive queue and the parser."""
    if not accelerations.on(accelerations.WS_LEAN):
        return
    proto = getattr(websocket.scope.get(RAW_SEND), "__self__", None)
    if proto is None or type(proto).__name__ != "WebSocketsSansIOProtocol":
        return
    if isinstance(proto.request, Request):
        proto.request.headers = _NO_HEADERS  # (the parser's frame holds the request)
    proto.request = proto.response = None
    websocket.scope["headers"] = []
    vars(websocket).pop("_headers", None)
    writable = proto.writable
    if isinstance(writable, asyncio.Event) and not writable._waiters:
        writable._waiters = []  # type: ignore[assignment]
    queue = proto.queue
    if type(queue) is asyncio.Queue and not queue._getters:  # type: ignore[attr-defined]
        proto.queue = Inbox(queue._queue)  # type: ignore[attr-defined]


_NO_HEADERS = Headers()


class Inbox:
    """A receive queue for one reader: what uvicorn's protocol uses of ``asyncio.Queue``."""

    __slots__ = ("_items", "_waiter")

    def __init__(self, items: Any = ()) -> None:
        self._items: list[Any] = list(items)
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            assert self._waiter is None, "one reader at a time"
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)
