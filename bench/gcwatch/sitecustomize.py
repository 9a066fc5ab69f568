"""Log the garbage collector's long passes in the server under test.

    PYTHONPATH=bench/gcwatch python bench/run_matrix.py --only b --server gateway
    grep GCWATCH bench/results/<stamp>-logs/gateway.log

Python imports ``sitecustomize`` at start in every process that has this
folder on its path: run_matrix, the generator and the servers alike. Only a
process started as uvicorn installs the callback. Each pass over 10 ms is
one line on stderr (the server's log): unix time, generation, duration,
objects collected. ``GCWATCH_THRESHOLDS=700,10,1000000000`` sets
``gc.set_threshold`` in the server too (that one turns automatic full
passes off: an experiment, never a setting).
"""

from __future__ import annotations

import gc
import os
import sys
import time

LONG_PASS_S = 0.010


def _watch() -> None:
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
            return
        took = time.perf_counter() - (started[0] if started else time.perf_counter())
        if took > LONG_PASS_S:
            sys.stderr.write(
                f"GCWATCH {time.time():.1f} gen={info['generation']} {took * 1000:.0f}ms "
                f"collected={info['collected']}\n"
            )

    gc.callbacks.append(callback)
    thresholds = os.environ.get("GCWATCH_THRESHOLDS")
    if thresholds:
        gc.set_threshold(*(int(value) for value in thresholds.split(",")))


if "uvicorn" in " ".join(sys.argv):
    _watch()
