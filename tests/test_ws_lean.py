"""The idle-WebSocket trim (gateway/server/ws_lean.py): same behaviour, less kept.

The receive queue swapped under uvicorn must behave as what it replaces;
the real sockets are in the contract suite (every WebSocket test runs
through them), these check the edges one by one.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.server.ws_lean import Inbox

pytestmark = pytest.mark.anyio


async def test_the_inbox_hands_over_in_order_and_wakes_its_reader() -> None:
    inbox = Inbox([{"n": 0}])
    inbox.put_nowait({"n": 1})
    assert inbox.qsize() == 2 and not inbox.empty()
    assert [await inbox.get(), await inbox.get()] == [{"n": 0}, {"n": 1}]
    assert inbox.empty()
    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"n": 2})
    assert await asyncio.wait_for(reader, 1) == {"n": 2}


async def test_a_cancelled_read_leaves_the_inbox_usable() -> None:
    inbox = Inbox()
    reader = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    inbox.put_nowait("kept")
    assert await asyncio.wait_for(inbox.get(), 1) == "kept"
