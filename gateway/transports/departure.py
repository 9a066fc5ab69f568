"""Noticing a client that left while its request waits, on every ASGI server.

An SSE stream or a waiting poll awaits its subscription, not the client,
so a departure must be told to it (SPEC: a departed client frees its place
within a second or two). Two ways, chosen per request:

* uvicorn's httptools protocol: ``direct.on_http_lost`` hooks the request's
  own event: no task, no timer, nothing per idle connection.
* Anywhere else (uvicorn's h11, hypercorn over HTTP/1.1 and HTTP/2, granian,
  a mount whose parent wraps ``send``): ASGI's own word, ``http.disconnect``
  from ``receive()``, awaited by one watcher task per request. It calls
  ``lost`` and ends; the request's own task never waits on ``receive()``.

The watcher is a task owned by the frame that starts it and cancelled in
its ``finally``: the shape of a task group (the first to finish ends the
other: ``lost`` ends the request's wait), without what an anyio or asyncio
task group adds: an ``ExceptionGroup`` around whatever the request raises
(which would change what the server sees and logs) and a cancel scope per
idle connection (bench/README.md measures what the watcher costs).

A poll's answer sent through ASGI is bounded in time too (``within``): under
hypercorn over HTTP/2 the ``send`` of an answer whose client went away may
wait for flow control that never comes, and the request would hold its
place in ``GATEWAY_MAX_CONNECTIONS`` for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from starlette.types import Message, Receive, Scope, Send

from gateway.server.direct import on_http_lost

T = TypeVar("T")
Lost = Callable[[], None]


async def watching(scope: Scope, receive: Receive, lost: Lost, body: Awaitable[T]) -> T:
    """Await ``body``; meanwhile ``lost`` is called once the client is gone, by whichever
    way this server allows (uvicorn's hook when it is there, else ``http.disconnect``)."""
    unhook = on_http_lost(scope, lost)
    if unhook is None:
        return await while_present(receive, lost, body)
    try:
        return await body
    finally:
        unhook()


async def while_present(receive: Receive, lost: Lost, body: Awaitable[T]) -> T:
    """Await ``body`` while a watcher calls ``lost`` on ``http.disconnect``."""
    watcher = asyncio.ensure_future(_watch(receive, lost))
    try:
        return await body
    finally:
        watcher.cancel()


async def _watch(receive: Receive, lost: Lost) -> None:
    """Until the client is gone (a request's body, if any, is read and dropped meanwhile)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            lost()
            return


def within(send: Send, seconds: float) -> Send:
    """``send`` for one whole answer, given up ``seconds`` after its first message.

    Past the deadline the rest is dropped: the request ends and is uncounted,
    and the server closes a connection whose response never completed.
    """
    deadline = 0.0

    async def send_within(message: Message) -> None:
        nonlocal deadline
        now = time.monotonic()
        if not deadline:
            deadline = now + seconds
        with anyio.move_on_after(deadline - now):
            await send(message)

    return send_within
