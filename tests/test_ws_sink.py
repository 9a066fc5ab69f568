"""The WebSocket fan-out's sink (gateway/server/direct.py ``WsSink``) on a real uvicorn socket.

A watched sink reads nothing of uvicorn's protocol per write: the protocol
tells it when the transport pauses and when a close frame is coming. These
check each of those signals on uvicorn's own protocol object, in this
process, and that a sink still reads the protocol where nothing tells it.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import websockets
from starlette.websockets import WebSocket

from gateway.server import accelerations
from gateway.server.direct import RAW_SEND, WsSink, ws_sink
from gateway.server.ws_lean import Inbox, forget_handshake
from tests.servers import uvicorn_here

pytestmark = pytest.mark.anyio


def _app(seen: dict[str, Any], lean: bool, script: Any) -> Any:
    """A raw ASGI app that accepts, takes the sink as the transports do, then runs ``script``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        scope = {**scope, RAW_SEND: send}
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        if lean:
            forget_handshake(websocket)
        sink = ws_sink(scope)
        assert isinstance(sink, WsSink)
        seen["sink"], seen["proto"] = sink, send.__self__
        seen["again"] = ws_sink(scope)
        await script(websocket, sink, send.__self__, seen)

    return app


@pytest.fixture(autouse=True)
def _accelerations_on() -> Any:
    before = dict(accelerations.decide(log=False))
    assert before[accelerations.WS_DIRECT] and before[accelerations.WS_LEAN], before
    yield


async def _run(app: Any, client: Any) -> None:
    async with uvicorn_here(app, ws="websockets-sansio") as server:
        async with websockets.connect(f"ws://127.0.0.1:{server.config.port}/ws") as ws:
            await client(ws)


async def test_a_watched_sink_stops_before_the_apps_close_frame_and_lets_go() -> None:
    seen: dict[str, Any] = {}

    async def script(websocket: WebSocket, sink: WsSink, proto: Any, seen: dict[str, Any]) -> None:
        seen["ready before"] = sink.ready()
        sink.write_bytes(b"\x81\x05hello")
        await websocket.close(1000)
        seen["ready after"], seen["gone after"] = sink.ready(), sink.gone()
        seen["inbox sink"], seen["event sink"] = proto.queue.sink, proto.writable.sink
        seen["after close"] = ws_sink(websocket.scope)

    async def client(ws: Any) -> None:
        assert await ws.recv() == "hello"
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()

    await _run(_app(seen, True, script), client)
    sink = seen["sink"]
    assert type(seen["proto"].queue) is Inbox
    assert sink._watched and seen["again"] is sink  # (one sink a connection)
    assert seen["ready before"] is True
    assert seen["ready after"] is False and seen["gone after"] is True
    assert seen["inbox sink"] is None and seen["event sink"] is None  # (no cycle left)
    assert seen["after close"] is None  # (the socket is closing: no sink at all)


async def test_the_transports_flow_control_pauses_a_watched_sink() -> None:
    seen: dict[str, Any] = {}

    async def script(websocket: WebSocket, sink: WsSink, proto: Any, seen: dict[str, Any]) -> None:
        proto.pause_writing()  # (as uvloop calls it past the high-water mark)
        seen["paused"] = sink.ready()
        waiting = anyio.Event()

        async def drain() -> None:
            await sink.drain()
            waiting.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(drain)
            await anyio.sleep(0.05)
            seen["drained while paused"] = waiting.is_set()
            proto.resume_writing()
            await waiting.wait()
        seen["resumed"] = sink.ready()
        await websocket.close(1000)

    async def client(ws: Any) -> None:
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()

    await _run(_app(seen, True, script), client)
    assert seen["paused"] is False and seen["drained while paused"] is False
    assert seen["resumed"] is True


async def test_a_lost_client_stops_a_watched_sink_and_unties_it() -> None:
    seen: dict[str, Any] = {}

    async def script(websocket: WebSocket, sink: WsSink, proto: Any, seen: dict[str, Any]) -> None:
        message = await websocket.receive()
        seen["message"] = message["type"]
        seen["ready"], seen["gone"] = sink.ready(), sink.gone()
        seen["inbox sink"], seen["event sink"] = proto.queue.sink, proto.writable.sink

    async def client(ws: Any) -> None:
        await anyio.sleep(0.05)
        ws.transport.abort()  # (no close frame: the connection is lost)
        with anyio.fail_after(5):
            while "event sink" not in seen:
                await anyio.sleep(0.01)

    await _run(_app(seen, True, script), client)
    assert seen["message"] == "websocket.disconnect"
    assert seen["ready"] is False and seen["gone"] is True
    assert seen["inbox sink"] is None and seen["event sink"] is None


async def test_an_unwatched_sink_reads_the_protocol() -> None:
    """Without ws-lean's inbox nothing tells the sink: it reads ``close_sent`` and the event."""
    seen: dict[str, Any] = {}

    async def script(websocket: WebSocket, sink: WsSink, proto: Any, seen: dict[str, Any]) -> None:
        seen["ready"] = sink.ready()
        proto.pause_writing()
        seen["paused"] = sink.ready()
        proto.resume_writing()
        proto.close_sent = True  # (what uvicorn's close sets, the transport left open)
        seen["close sent"] = sink.ready()
        proto.close_sent = False
        await websocket.close(1000)

    async def client(ws: Any) -> None:
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()

    await _run(_app(seen, False, script), client)
    assert not seen["sink"]._watched and seen["again"] is not seen["sink"]
    assert seen["ready"] is True and seen["paused"] is False and seen["close sent"] is False


async def test_ws_leans_compacted_protocol_dict_stays_compact_to_the_end() -> None:
    """ws-lean copies uvicorn's grown protocol dict (1,584 bytes for 34 keys, on 3.11)
    into a compact one; nothing uvicorn does later adds a key that would grow it again."""
    import sys

    seen: dict[str, Any] = {}

    async def script(websocket: WebSocket, sink: WsSink, proto: Any, seen: dict[str, Any]) -> None:
        seen["keys at accept"] = set(vars(proto))
        seen["size at accept"] = sys.getsizeof(vars(proto))
        seen["grown size"] = sys.getsizeof(_grown(vars(proto)))
        proto.pause_writing()
        proto.resume_writing()
        seen["echo"] = await websocket.receive_text()
        await websocket.send_text("back")
        await websocket.close(1000)
        await anyio.sleep(0.1)  # (the client's answer to the close, the transport closed)
        seen["keys at end"], seen["size at end"] = set(vars(proto)), sys.getsizeof(vars(proto))

    async def client(ws: Any) -> None:
        await ws.send("hi")
        assert await ws.recv() == "back"
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()

    await _run(_app(seen, True, script), client)
    assert seen["echo"] == "hi"
    assert seen["size at accept"] < seen["grown size"]
    assert seen["keys at end"] == seen["keys at accept"]
    assert seen["size at end"] == seen["size at accept"]


def _grown(items: dict[str, Any]) -> dict[str, Any]:
    """A dict grown key by key, as an instance's attributes grow it."""

    class Grown:
        pass

    grown = Grown()
    for key, value in items.items():
        setattr(grown, key, value)
    return vars(grown)
