"""The idle-WebSocket trim (gateway/server/ws_lean.py): same behaviour, less kept.

The receive queue swapped under uvicorn must behave as what it replaces;
the real sockets are in the contract suite (every WebSocket test runs
through them), these check the edges one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gateway.server.ws_lean import Inbox
from tests.servers import GatewayServer

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


async def test_arrival_is_one_future_until_an_item_comes_and_survives_a_cancel() -> None:
    """``arrival`` (what a reader that takes directly awaits): the same future until an item
    is put, done then; a cancelled one is replaced; ``get`` still works after both."""
    inbox = Inbox()
    first = inbox.arrival()
    assert inbox.arrival() is first and not first.done()
    inbox.put_nowait("a")
    assert first.done() and await inbox.get() == "a"
    waiting = inbox.arrival()
    waiting.cancel()
    again = inbox.arrival()
    assert again is not waiting and not again.done()
    inbox.put_nowait("b")
    assert again.done() and await asyncio.wait_for(inbox.get(), 1) == "b"


def test_a_receive_that_is_not_uvicorns_own_is_not_read_around() -> None:
    """A parent app's middleware may wrap ``receive``: then the reader goes through it."""
    from starlette.websockets import WebSocket

    from gateway.server.ws_lean import lean_inbox

    async def wrapped() -> dict[str, object]:
        return {"type": "websocket.disconnect"}

    async def send(message: object) -> None:
        pass

    scope = {"type": "websocket", "path": "/ws", "headers": []}
    assert lean_inbox(WebSocket(scope, wrapped, send)) is None


BURST = 300


@pytest.fixture(scope="module", params=["lean", "plain"])
def gateway(request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    """As the Procfile starts it, ws-lean on (frames taken from its inbox), or off."""
    env = {"REDIS_URL": "", "GATEWAY_PUBLISH_RATE": "0"}  # (a burst past 50 a second)
    if request.param == "plain":
        env["GATEWAY_ACCELERATIONS"] = "http-protocol,http-direct,ws-direct,accept-loop"
    server = GatewayServer(env, procfile=True).start()
    try:
        yield server
    finally:
        server.kill()


async def test_a_burst_of_frames_is_answered_in_order_on_ws(gateway: GatewayServer) -> None:
    """300 frames sent at once on ``/ws``: uvicorn pauses reading at each one and the reader
    resumes it when it took the last; every frame answered, in order, then a clean close."""
    import websockets

    async with websockets.connect(f"ws://127.0.0.1:{gateway.port}/ws") as ws:
        for n in range(BURST):
            await ws.send(orjson.dumps({"type": "ping", "n": n}).decode())
        answers = [orjson.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(BURST)]
        assert answers == [{"type": "pong"}] * BURST
        await ws.send('{"type":"subscribe","channel":"burst"}')
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "subscribed"


async def test_a_burst_of_publishes_is_acked_and_delivered_in_order_on_ws_channel(
    gateway: GatewayServer,
) -> None:
    """300 publish frames at once on ``/ws/{channel}``: 300 acks, and the 300 messages back
    in the order sent, each after its ack."""
    import websockets

    url = f"ws://127.0.0.1:{gateway.port}/ws/burst-{gateway.port}"
    async with websockets.connect(url) as ws:
        for n in range(BURST):
            await ws.send(orjson.dumps({"type": "publish", "data": str(n)}).decode())
        acked: list[str] = []
        seen: list[str] = []
        while len(seen) < BURST:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            if frame.get("type") == "ack":
                acked.append(frame["id"])
            else:
                assert frame["id"] in acked, frame  # (its ack first)
                seen.append(frame["data"])
        assert seen == [str(n) for n in range(BURST)] and len(acked) == BURST


async def test_an_idle_reader_waits_on_a_bare_future(tmp_path: Any) -> None:
    """In this process: an idle WebSocket's task awaits the inbox's future, with no coroutine
    of Starlette's or uvicorn's receive in its chain (the ~0.8 KB ws-lean saves per socket)."""
    import anyio
    import websockets

    from gateway.app import create_app
    from gateway.settings import Settings
    from tests.servers import uvicorn_here

    app = create_app(Settings.from_env({"REDIS_URL": ""}))
    async with uvicorn_here(app, ws="websockets-sansio") as server:
        for path in ("/ws/idle", "/ws"):
            async with websockets.connect(f"ws://127.0.0.1:{server.config.port}{path}"):
                await anyio.sleep(0.2)
                chains = [_awaiting(t) for t in asyncio.all_tasks() if _serves_ws(t)]
                assert len(chains) == 1, chains
                names, last = chains[0]
                assert "receive" not in " ".join(names), names
                assert type(last).__name__ in ("Future", "FutureIter"), (names, last)


def _serves_ws(task: asyncio.Task[Any]) -> bool:
    return "WebSocketsSansIOProtocol.run_asgi" in task.get_coro().__qualname__  # type: ignore[union-attr]


def _awaiting(task: asyncio.Task[Any]) -> tuple[list[str], object]:
    """The task's chain of coroutines, and what the innermost awaits."""
    names, awaited = [], task.get_coro()
    while hasattr(awaited, "cr_await"):
        names.append(awaited.__qualname__)  # type: ignore[union-attr]
        awaited = awaited.cr_await  # type: ignore[union-attr]
    return names, awaited
