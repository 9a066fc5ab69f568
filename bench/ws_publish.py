"""WebSocket publish frames as fast as acks come back: the generator of publish_bench.py.

N connections to ``/ws`` (the several-channel endpoint: it publishes to any
channel without subscribing to it, so no fan-out is measured), each sending
``{"type":"publish","channel":...,"data":<100 bytes>}`` and waiting for its
ack before the next (as a client that wants its ids in order does), the
channel round-robin over C. A bare asyncio protocol with frames built once
(masked with a fixed key, as RFC 6455 allows) keeps the generator's own
cost per frame small. Prints one ``RESULT`` line as post.lua does.

    taskset -c 1 python bench/ws_publish.py --port 8000 --connections 64 --channels 100
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time

MASK = b"\x01\x02\x03\x04"
TEXT, PING, PONG = 0x1, 0x9, 0xA  # opcodes (RFC 6455 section 5.2)


def client_frame(text: bytes, opcode: int = TEXT) -> bytes:
    """A masked frame (client to server): text, or the pong of a ping."""
    size = len(text)
    first = 0x80 | opcode
    head = bytes([first, 0x80 | size]) if size < 126 else bytes([first, 0xFE]) + size.to_bytes(2)
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(text))
    return head + MASK + masked


class Publisher(asyncio.Protocol):
    def __init__(self, frames: list[bytes], offset: int, stats: Stats) -> None:
        self.frames, self.n, self.stats = frames, offset, stats
        self.buffer = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            assert head.startswith(b"HTTP/1.1 101"), head[:80]
            self.buffer = rest
            self.upgraded.set_result(None)
            self.send()
        while len(self.buffer) >= 2:
            size = self.buffer[1] & 0x7F
            start = 2
            if size == 126:
                size, start = int.from_bytes(self.buffer[2:4]), 4
            elif size == 127:
                size, start = int.from_bytes(self.buffer[2:10]), 10
            if len(self.buffer) < start + size:
                return
            opcode = self.buffer[0] & 0x0F
            payload = self.buffer[start : start + size]
            self.buffer = self.buffer[start + size :]
            if opcode == PING:  # the server's keep-alive (every 15 s): answered, not an answer
                assert self.transport is not None
                self.transport.write(client_frame(payload, PONG))
                continue
            self.stats.answered(payload, time.perf_counter() - self.sent_at)
            if not self.stats.stopped:
                self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.n += 1
        self.sent_at = time.perf_counter()
        self.transport.write(self.frames[self.n % len(self.frames)])


class Stats:
    def __init__(self) -> None:
        self.acks = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.stopped = False
        self.measuring = False

    def answered(self, payload: bytes, latency: float) -> None:
        if not self.measuring:
            return
        if payload.startswith(b'{"type":"ack"'):
            self.acks += 1
            self.latencies.append(latency)
        else:
            self.errors += 1


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--channels", type=int, default=100)
    p.add_argument("--duration", type=float, default=10.0)
    args = p.parse_args()
    body = "x" * 100
    frames = [
        client_frame(b'{"type":"publish","channel":"bench-%d","data":"%s"}' % (c, body.encode()))
        for c in range(args.channels)
    ]
    loop = asyncio.get_running_loop()
    stats = Stats()
    publishers = []
    for n in range(args.connections):
        _, proto = await loop.create_connection(
            lambda n=n: Publisher(frames, n, stats), "127.0.0.1", args.port
        )
        key = base64.b64encode(os.urandom(16))
        assert proto.transport is not None
        proto.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        publishers.append(proto)
    await asyncio.gather(*(p.upgraded for p in publishers))
    await asyncio.sleep(0.5)
    stats.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(args.duration)
    stats.measuring = False
    stats.stopped = True
    elapsed = time.perf_counter() - started
    lat = sorted(stats.latencies) or [0.0]
    p50 = lat[len(lat) // 2]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(
        f"RESULT requests={stats.acks + stats.errors} errors_status={stats.errors} "
        f"duration_us={int(elapsed * 1e6)} p50_us={int(p50 * 1e6)} p99_us={int(p99 * 1e6)}",
        flush=True,
    )
    for proto in publishers:
        assert proto.transport is not None
        proto.transport.close()


if __name__ == "__main__":
    asyncio.run(main())
