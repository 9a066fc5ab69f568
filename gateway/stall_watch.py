"""A warning when the event loop stops turning, with what holds it, from another thread.

Why: a gateway whose loop is held by synchronous code answers no one and
says nothing. In CI one searched forever for a canary name in a cluster
primary left with no slot (brokers/cluster.py); its log simply stopped,
its clients waited out their read timeouts, and the cause had to be
guessed. Here a thread checks that the loop ran a callback within
``STALL_S``; when it has not, it logs the loop thread's stack, once per
stall, and how long the stall lasted once the loop turns again.

A loop that is merely busy (a fan-out to 10,000 sockets takes ~80 ms, a
full garbage collection over them up to a second) stays well inside it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("gateway")

STALL_S = 5.0  # the loop ran nothing for this long: held
TICK_S = 1.0  # how often the loop stamps, and the thread looks


class StallWatch:
    """One loop's watch: a stamp the loop renews every tick, a thread that reads it."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, stall_s: float = STALL_S, tick_s: float = TICK_S
    ) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()  # (made in the loop's thread)
        self._stall_s = stall_s
        self._tick_s = tick_s
        self._stamp = time.monotonic()
        self._held_since: float | None = None
        self._stop = threading.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._thread = threading.Thread(target=self._watch, name="gateway-stall-watch", daemon=True)

    def start(self) -> None:
        self._renew()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        self._thread.join()

    def _renew(self) -> None:  # in the loop
        self._stamp = time.monotonic()
        self._timer = self._loop.call_later(self._tick_s, self._renew)

    def _watch(self) -> None:  # in the thread
        while not self._stop.wait(self._tick_s):
            stamp = self._stamp
            held = time.monotonic() - stamp
            if held >= self._stall_s and self._held_since is None:
                self._held_since = stamp
                logger.warning(
                    "the event loop has run nothing for %.1f s: every client waits; it is in\n%s",
                    held,
                    self._stack(),
                )
            elif held < self._stall_s and self._held_since is not None:
                logger.warning("the event loop runs again, after %.1f s", stamp - self._held_since)
                self._held_since = None

    def _stack(self) -> str:
        frame = sys._current_frames().get(self._loop_thread)
        return "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)"


@contextmanager
def stall_watched(loop: asyncio.AbstractEventLoop) -> Iterator[StallWatch]:
    """A watch on ``loop`` for the block's duration."""
    watch = StallWatch(loop)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()
