"""Noticing that the server was asked to stop, before it stops waiting for connections.

No ASGI server tells an app "stopping" while connections are open: the
lifespan's shutdown comes once every connection ended (uvicorn, granian) or
once the server's own grace ran out and cancelled them (hypercorn). A
gateway that waited for it would hold SSE streams, polls and WebSockets
until then, and then lose them without a word. So the hub and presence
watch for the request to stop (``wait_for_exit_signal``), each server's own
way, and tell every client to reconnect at once:

* uvicorn (also gunicorn's uvicorn worker): its SIGTERM handler is bound to
  its ``Server``, whose ``should_exit`` it sets (found as sse-starlette
  finds it).
* hypercorn: with workers (its default: one worker process, which never
  sees the signal), the ``shutdown_event`` its parent sets and the worker
  polls, found in the worker process's own arguments; with ``-w 0`` the
  signal reaches this process's event loop, as below.
* granian: its worker's handler in the event loop is replaced by ours,
  which tells every client to reconnect and hands the signal to granian's
  ``DEFER_S`` later: granian drops every WebSocket once its handler ran.
* Any other server whose signal reaches this process (hypercorn ``-w 0``):
  our own handler for SIGTERM and SIGINT, ahead of the server's, which it
  calls next (``signals_watched``). The loop still sees the signal:
  Python's handler does not replace the event loop's wakeup descriptor.

Each is checked against what it touches and stays quiet when it does not
fit; a server none of them fits drains at its lifespan's shutdown only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType, FunctionType
from typing import Any

import anyio

logger = logging.getLogger("gateway")
POLL_S = 0.1
DEFER_S = 0.5  # granian's handler after ours: the clients' last words leave first
SIGNALS = (signal.SIGTERM, signal.SIGINT)
Handler = Callable[[int, FrameType | None], Any] | int | None
Now = Callable[[], None] | None


class _ServerStop:
    """What this process knows of its server's request to stop: one per process, as signals are."""

    def __init__(self) -> None:
        self.signalled = False
        self._users = 0
        self._previous: dict[int, Handler] = {}
        self._waiting: set[tuple[asyncio.AbstractEventLoop, asyncio.Event, Now]] = set()
        self._granian: tuple[asyncio.AbstractEventLoop, Callable[..., Any]] | None = None

    def requested(self) -> bool:
        if self.signalled or _uvicorn_should_exit():
            return True
        event = _hypercorn_shutdown_event()
        return event is not None and bool(event.is_set())

    @contextmanager
    def watched(self) -> Iterator[None]:
        """Our signal handlers, while at least one gateway of this process runs."""
        if self._users == 0:
            self._install()
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                self._restore()

    def _install(self) -> None:
        if _uvicorn_should_exit() is not None:
            logger.info("shutdown: watching uvicorn's exit flag")
            return
        if threading.current_thread() is not threading.main_thread():
            return  # (an app run in a thread: a test client) signals are not ours to take
        granian = _granian_handler()
        if granian is not None:
            self._defer(granian)
            logger.info("shutdown: granian's signal handler runs %.1f s after ours", DEFER_S)
            return
        hypercorn = _hypercorn_shutdown_event() is not None
        self._chain(hypercorn)
        if hypercorn:
            logger.info("shutdown: watching hypercorn's shutdown event")
        elif self._previous:
            logger.info("shutdown: watching SIGTERM and SIGINT ahead of the server's handler")
        else:
            logger.warning(
                "shutdown: no way found to notice SIGTERM before the server stops waiting "
                "for connections; clients are told to reconnect only at lifespan shutdown"
            )

    def _chain(self, hypercorn: bool) -> None:
        """Our handler ahead of the server's, for each signal the server handles.

        A hypercorn worker leaves SIGTERM at its default: its parent sends
        it only after the shutdown event, to end a worker at once. Taken
        here, the worker ends as the event says, its lifespan's ``finally``
        blocks included (workers.py tells the parent of a refused start there).
        """
        for number in SIGNALS:
            previous = signal.getsignal(number)
            take_default = hypercorn and number == signal.SIGTERM and previous == signal.SIG_DFL
            if not callable(previous) and not take_default:
                continue  # ignored, default (not the server's to handle) or set from C
            self._previous[number] = previous
            signal.signal(number, self._handle)

    def _defer(self, granian: Callable[..., Any]) -> None:
        """Ours in the loop instead of granian's, which runs ``DEFER_S`` later.

        granian drops every WebSocket as soon as its handler ran, before
        any close frame (emmett-framework/granian#796); ours first tells
        every client to reconnect, then hands the signal on.
        """
        loop = asyncio.get_running_loop()
        for number in SIGNALS:
            loop.add_signal_handler(number, self._deferring, number, granian)
        self._granian = (loop, granian)

    def _deferring(self, number: int, granian: Callable[..., Any]) -> None:
        self.signalled = True
        for _, woken, now in list(self._waiting):
            _wake(woken, now)
        asyncio.get_running_loop().call_later(DEFER_S, granian, number, None)

    def _restore(self) -> None:
        if self._granian is not None:
            loop, granian = self._granian
            self._granian = None
            if not loop.is_closed():
                for each in SIGNALS:
                    loop.add_signal_handler(each, granian, each, None)
        for number, previous in self._previous.items():
            if signal.getsignal(number) == self._handle:
                signal.signal(number, previous)
        self._previous.clear()
        self.signalled = False  # (a process that runs gateways one after another: tests)

    async def wait(self, now: Now = None) -> None:
        """Until the server is asked to stop: within POLL_S, and on a signal we handle at
        once, ``now`` first (synchronous, in the loop's next turn: the hub's close)."""
        woken = asyncio.Event()
        waiting = (asyncio.get_running_loop(), woken, now)
        self._waiting.add(waiting)
        try:
            while not self.requested():
                with anyio.move_on_after(POLL_S):
                    await woken.wait()
        finally:
            self._waiting.discard(waiting)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.signalled = True
        # The loop runs the server's own handler from its wakeup descriptor, after this
        # Python handler: what is scheduled here runs first. granian drops every
        # WebSocket once its handler ran; close frames sent before that get through.
        for loop, woken, now in list(self._waiting):
            loop.call_soon_threadsafe(_wake, woken, now)
        previous = self._previous.get(number)
        if callable(previous):
            previous(number, frame)


SERVER_STOP = _ServerStop()


def _wake(woken: asyncio.Event, now: Now) -> None:
    if now is not None:
        now()
    woken.set()


def _uvicorn_should_exit() -> bool | None:
    """uvicorn's ``should_exit``; None when SIGTERM is not handled by a uvicorn ``Server``."""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    if server is None or not hasattr(server, "should_exit"):
        return None
    return bool(server.should_exit)


def _granian_handler() -> Callable[..., Any] | None:
    """granian's worker signal handler (``granian._signals.set_loop_signals``), if any."""
    if "granian._signals" not in sys.modules:
        return None
    for found in gc.get_objects():  # (once, at start: it lives only in the loop's handle)
        if (
            isinstance(found, FunctionType)
            and found.__module__ == "granian._signals"
            and found.__qualname__ == "set_loop_signals.<locals>.signal_handler"
        ):
            return found
    return None


def _hypercorn_shutdown_event() -> Any:
    """The event a hypercorn parent sets to stop this worker process; None elsewhere."""
    process = multiprocessing.current_process()
    target = getattr(process, "_target", None)
    if not getattr(target, "__module__", "").startswith("hypercorn."):
        return None
    event = getattr(process, "_kwargs", {}).get("shutdown_event")
    return event if callable(getattr(event, "is_set", None)) else None


signals_watched = SERVER_STOP.watched


wait_for_exit_signal = SERVER_STOP.wait
