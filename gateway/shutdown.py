"""Noticing SIGTERM before uvicorn stops waiting for connections.

uvicorn runs the lifespan's shutdown only after every connection has ended,
so a gateway that waited for it would hold SSE streams and WebSockets open
until the grace timeout. Instead a loop watches uvicorn's ``should_exit``
(found, like sse-starlette does, through the SIGTERM handler bound to the
Server) and the hub tells every client to reconnect as soon as it flips.
"""

from __future__ import annotations

import signal

import anyio

POLL_S = 0.1


def _exit_requested() -> bool:
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


async def wait_for_exit_signal() -> None:
    # uvicorn offers no event to await, only a flag its signal handler sets.
    while not _exit_requested():  # noqa: ASYNC110
        await anyio.sleep(POLL_S)
