"""When the garbage collector runs: connections frozen out of its scans.

Why: CPython 3.11 collects its oldest generation in one pass over every
tracked object, and each open connection holds a couple of hundred of them
(uvicorn's protocol, websockets' parser, tasks and their frames). With
10,000 WebSockets one such pass took up to 980 ms (``gc.callbacks``, in
``bench/``), and the automatic collector runs one each time the long-lived
objects grow by a quarter: during a connection storm, and again soon after.
Every client waits that long for its next message.

Policy: every ``FREEZE_EVERY_S`` seconds, collect what is not frozen (only
what was made since the last tick: a short pass) and freeze the survivors
(``gc.freeze``), so that no automatic pass scans long-lived connections
again. The price: reference cycles among frozen objects are not found while
they stay frozen, so a closed connection's cycles wait. Once as many
connections closed since the last full pass as are open (and at least
``RECLAIM_AFTER_CLOSED``), everything is unfrozen and collected in one full
pass: memory stays within about twice the live connections' own, and the
full pause comes after that much churn instead of at each quarter of growth.

The youngest generation is collected after ``YOUNG_THRESHOLD`` new
objects, not CPython's 700: a long-poll allocates a handful per request and
nearly all of them die by reference counting; at 700, with 5,000 pollers,
the young passes (and the middle ones they feed) were 3-4 % of the CPU for
almost nothing found (bench/README.md). Cyclic garbage waits a few
thousand allocations longer.

Short-lived connections defeat this: a long-poll in flight at a tick would
be frozen and its cycles (uvicorn's request cycle is one) kept until the
next full pass. So a tick in which more than ``CHURN_LIMIT`` of the open
connections closed freezes nothing and gives back what was frozen: the
automatic collector then works as it always does. A poll served with no
task (protocol.py) leaves no cycle behind and is not counted here: with
5,000 such pollers, the automatic full passes over every connection were
a fifth of the gateway's CPU (bench/README.md).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

logger = logging.getLogger(__name__)

FREEZE_EVERY_S = 0.5
RECLAIM_AFTER_CLOSED = 1000
CHURN_LIMIT = 0.05  # of the open connections closing within one tick
SLOW_PASS_S = 0.1  # a full pass this long is worth a line in the log
YOUNG_THRESHOLD = 10_000  # new objects between two passes over the youngest generation


class Collector:
    def __init__(self, open_now: Callable[[], int], closed_so_far: Callable[[], int]) -> None:
        self._open_now = open_now
        self._closed_so_far = closed_so_far
        self._closed_at_reclaim = self._closed_at_tick = closed_so_far()
        self.frozen = False

    def tick(self) -> None:
        closed, open_now = self._closed_so_far(), self._open_now()
        churn, self._closed_at_tick = closed - self._closed_at_tick, closed
        if churn > CHURN_LIMIT * open_now:
            if self.frozen:
                self.reclaim(freeze=False)
            return
        if closed - self._closed_at_reclaim >= max(RECLAIM_AFTER_CLOSED, open_now):
            self.reclaim(freeze=True)
            return
        started = time.perf_counter()
        found = gc.collect()
        gc.freeze()  # (not gc.get_freeze_count(): it walks every frozen object)
        self.frozen = True
        logger.debug("gc: %d found in %.3f s", found, _since(started))

    def reclaim(self, freeze: bool) -> None:
        """One full pass over everything, frozen objects included."""
        self._closed_at_reclaim = self._closed_so_far()
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        if freeze:
            gc.freeze()
        self.frozen = freeze
        took = _since(started)
        level = logging.INFO if took > SLOW_PASS_S else logging.DEBUG
        logger.log(level, "gc: full pass found %d objects in %.3f s", found, took)


class _Process:
    """The collector's settings are the process's: several gateways in one
    process (tests, an app mounting two) share them. The first to start
    sets them, the last to stop gives the process back as it was, in
    whatever order they stop."""

    running = 0
    thresholds: tuple[int, ...] = ()


@asynccontextmanager
async def collector_running(collector: Collector) -> AsyncIterator[Collector]:
    if _Process.running == 0:
        _Process.thresholds = gc.get_threshold()
        young, *older = _Process.thresholds
        gc.set_threshold(max(YOUNG_THRESHOLD, young), *older)
    _Process.running += 1
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_tick_forever, collector)
            try:
                yield collector
            finally:
                tasks.cancel_scope.cancel()
    finally:
        _Process.running -= 1
        if _Process.running == 0:
            gc.unfreeze()
            gc.set_threshold(*_Process.thresholds)


async def _tick_forever(collector: Collector) -> None:
    while True:
        await anyio.sleep(FREEZE_EVERY_S)
        collector.tick()


def _since(started: float) -> float:
    return time.perf_counter() - started
