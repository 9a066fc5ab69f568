"""Subscribers over WebSocket: the gateway's ``/ws``, Engine.IO's, a raw one (Nchan).

A minimal RFC 6455 client on a bare ``asyncio.Protocol``, one per connection:
the handshake by hand, then unmasked server frames parsed at an offset into
the received bytes (no copy per frame); pings are answered with pongs. No
extension is offered, so no server compresses. The ``websockets`` library
would cost a task and a reader per connection; at 10,000 connections and
100,000 frames a second on one generator core that is the difference
between measuring the server and measuring the generator.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

import orjson
from tally import Subscriber, Tally

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 1, 2, 8, 9, 10, 0


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame (a client must mask) with the FIN bit set."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    key = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
    return head + mask + masked


class WsSubscriber(asyncio.Protocol, Subscriber):
    def __init__(self, host: str, port: int, path: str, tally: Tally) -> None:
        Subscriber.__init__(self, tally)
        self.host_header = f"{host}:{port}"
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.fragments: list[bytes] = []
        self.now = 0.0
        self.up: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host_header}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        self.now = time.time()
        buffer = self.buffer + data if self.buffer else data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            status_line = buffer[: buffer.find(b"\r\n")]
            if b" 101 " not in status_line + b" ":
                self.fail(f"handshake {status_line[9:12].decode(errors='replace')}")
                return
            self.upgraded = True
            self.handshake_done()
            buffer = buffer[end + 4 :]
        self.buffer = self.frames(buffer)

    def frames(self, buffer: bytes) -> bytes:
        """Handle every complete frame in ``buffer``; return the incomplete rest."""
        offset, total = 0, len(buffer)
        while total - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            size, start = second & 0x7F, offset + 2
            if size == 126:
                if total - offset < 4:
                    break
                size, start = int.from_bytes(buffer[offset + 2 : offset + 4], "big"), offset + 4
            elif size == 127:
                if total - offset < 10:
                    break
                size, start = int.from_bytes(buffer[offset + 2 : offset + 10], "big"), offset + 10
            if start + size > total:
                break
            offset = start + size
            self.frame(first & 0x80, first & 0x0F, buffer[start:offset])
            if self.closed:
                return b""
        return buffer[offset:]

    def frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (TEXT, BINARY, CONTINUATION):
            if not fin:
                self.fragments.append(payload)
                return
            if self.fragments:
                payload = b"".join([*self.fragments, payload])
                self.fragments = []
            self.text(payload)
        elif opcode == PING:
            self.send(PONG, payload)
        elif opcode == CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.send(CLOSE, payload[:2])
            self.fail(f"ws close {code}")

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost("connection lost")

    def fail(self, reason: str) -> None:
        self.on_lost(reason)
        if self.transport is not None:
            self.transport.close()

    def on_lost(self, reason: str) -> None:
        if not self.up.done():
            self.up.set_exception(ConnectionError(reason))
        self.mark_closed(reason)

    def connected(self) -> None:
        self.mark_connected()
        if not self.up.done():
            self.up.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def handshake_done(self) -> None:
        self.connected()

    def text(self, payload: bytes) -> None:
        self.deliver(payload, self.now)


class GatewayWsSubscriber(WsSubscriber):
    """``{"type":"message",...,"data"}`` frames; the socket opens once subscribed."""

    def text(self, payload: bytes) -> None:
        frame = orjson.loads(payload)
        kind = frame.get("type")
        if kind == "message":
            self.deliver(frame["data"], self.now)
        elif kind == "gap":
            self.tally.error("gap")


class EngineIoWsSubscriber(WsSubscriber):
    """Socket.IO over Engine.IO v4's WebSocket transport (no polling first)."""

    def __init__(self, host: str, port: int, path: str, tally: Tally, channel: str) -> None:
        super().__init__(host, port, path, tally)
        self.auth = orjson.dumps({"channel": channel})

    def handshake_done(self) -> None:
        pass  # connected once Socket.IO says so (``40``)

    def text(self, payload: bytes) -> None:
        if payload.startswith(b"42"):
            self.deliver(orjson.loads(payload[2:])[1], self.now)
        elif payload == b"2":
            self.send(TEXT, b"3")
        elif payload.startswith(b"0"):
            self.send(TEXT, b"40" + self.auth)
        elif payload.startswith(b"40"):
            self.connected()
        elif payload.startswith(b"44"):
            self.fail("socket.io connect refused")
        elif payload in (b"1", b"41"):
            self.fail("socket.io closed")
