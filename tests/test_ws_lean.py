"""The idle-WebSocket trim (gateway/transports/ws_lean.py): same behaviour, less kept.

The receive queue and the frame parser swapped under uvicorn must behave
as what they replace; the real sockets are in the contract suite (every
WebSocket test runs through them), these check the edges one by one.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from gateway.transports.ws_lean import Inbox, _frames_only

pytestmark = pytest.mark.anyio

HANDSHAKE = (
    b"GET /ws/a HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _masked_text(text: str) -> bytes:
    """A client's text frame, masked, as on the wire."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def _accepted() -> ServerProtocol:
    conn = ServerProtocol()
    conn.receive_data(HANDSHAKE)
    [request] = conn.events_received()
    assert isinstance(request, Request)
    conn.send_response(conn.accept(request))
    conn.data_to_send()
    return conn


def _texts(conn: ServerProtocol) -> list[str]:
    return [
        frame.data.decode()
        for frame in conn.events_received()
        if isinstance(frame, Frame) and frame.opcode is Opcode.TEXT
    ]


def test_the_frame_parser_takes_over_at_a_frame_boundary() -> None:
    conn = _accepted()
    before = conn.parser
    _frames_only(conn)
    assert conn.parser is not before
    assert conn.parser.gi_code.co_name == "parse"
    assert conn.parser.gi_frame.f_locals.get("request") is None  # the handshake is let go
    wire = _masked_text("one") + _masked_text("two")
    for cut in range(0, len(wire), 3):  # in pieces, as TCP may deliver it
        conn.receive_data(wire[cut : cut + 3])
    assert _texts(conn) == ["one", "two"]


def test_the_parser_is_left_alone_in_the_middle_of_a_frame() -> None:
    conn = _accepted()
    wire = _masked_text("split")
    conn.receive_data(wire[:2])  # the frame's header read: its parser is mid-frame
    before = conn.parser
    _frames_only(conn)
    assert conn.parser is before
    conn.receive_data(wire[2:])
    assert _texts(conn) == ["split"]


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
