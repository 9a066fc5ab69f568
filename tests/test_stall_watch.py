"""A loop held by synchronous code is reported, with where it is held, then its release."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.stall_watch import StallWatch


def _hold_the_loop_in_a_search_that_never_yields() -> None:
    time.sleep(1.2)


def test_a_held_loop_is_reported_with_its_stack_then_its_release(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.WARNING, logger="gateway"):

            async def run() -> None:
                watch = StallWatch(asyncio.get_running_loop(), stall_s=0.5, tick_s=0.1)
                watch.start()
                try:
                    await asyncio.sleep(0.3)  # turning: nothing said
                    assert not caplog.records
                    _hold_the_loop_in_a_search_that_never_yields()
                    await asyncio.sleep(0.4)  # turning again
                finally:
                    watch.stop()

            loop.run_until_complete(run())
        said = [record.getMessage() for record in caplog.records]
        assert len(said) == 2, said
        assert "has run nothing for" in said[0]
        assert "_hold_the_loop_in_a_search_that_never_yields" in said[0]  # where it is held
        assert "runs again, after" in said[1]
        held = float(said[1].rsplit("after ", 1)[1].split(" s")[0])
        assert 0.9 <= held <= 2.0, said[1]
    finally:
        loop.close()
