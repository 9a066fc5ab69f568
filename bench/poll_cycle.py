"""The Python cost of one long-poll, in this process, with no socket: µs of CPU per poll.

Why: the side-by-side run (run_matrix.py) measures what users see, but on
a shared 2-core machine its figures move by ±10 % between runs, so a
change worth 3 % of a poll's CPU cannot be seen there. Here the gateway's
own HTTP protocol (protocol.py) gets ``N`` connections whose transport is
a Python object that keeps nothing (no syscall, no kernel), fed request
bytes directly; what is timed is the process CPU (``time.process_time``)
of each round, median of the rounds:

* ``wait``: every connection sends a caught-up poll (parked as a waiter:
  ``park``), then one message is published and every waiter answered
  (``flush``, the publish included);
* ``behind``: one message is published first, then every connection's
  poll is answered at once from the hub's memory.

The memory broker; the channel held joined by one subscription. What this
leaves out is the socket's own work (send, recv, epoll: about half of a
poll's CPU under the real load, bench/README.md); read it as "the Python
part", compare runs of the same machine side by side.

    python bench/poll_cycle.py --clients 5000 --rounds 30
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

import orjson
import uvicorn
import uvloop
from uvicorn.server import ServerState

from gateway.app import create_app
from gateway.server.protocol import GatewayHttpProtocol
from gateway.settings import Settings

CHANNEL = "bench"


class Sink(asyncio.Transport):
    """A transport that takes every write and keeps only the last one."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.last = b""
        self.writes = 0
        self.closing = False

    def write(self, data: Any) -> None:
        if b'"cursor":' in data:  # an answer's body (through ASGI, the head comes apart)
            self.last = data
            self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return ("127.0.0.1", 8000)
        if name == "peername":
            return ("127.0.0.1", self.port)
        return default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def request(cursor: str, origin: str | None) -> bytes:
    target = f"/poll/{CHANNEL}?timeout=20&limit=1000&since={cursor}"
    extra = f"Origin: {origin}\r\n" if origin else ""
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n{extra}\r\n".encode()


async def wait_for(sinks: list[Sink], writes: int) -> None:
    deadline = time.monotonic() + 30
    while sinks[-1].writes < writes or any(sink.writes < writes for sink in sinks):
        if time.monotonic() > deadline:
            raise SystemExit("answers never came: is the poll path served in the protocol?")
        await asyncio.sleep(0.001)


async def run(clients: int, rounds: int, origin: str | None = None) -> dict[str, float]:
    env = {"REDIS_URL": "", **({"GATEWAY_ALLOWED_ORIGINS": origin} if origin else {})}
    app = create_app(Settings.from_env(env))
    config = uvicorn.Config(app, http=GatewayHttpProtocol, log_level="warning")
    config.load()
    state = ServerState()
    async with app.running() as gateway:
        async with gateway.hub.subscribe(CHANNEL):  # the channel joined
            message = await gateway.hub.publish(CHANNEL, "message", "warm")
            await asyncio.sleep(0.05)
            cursor = str(message.cursor)
            protocols = []
            sinks = []
            for n in range(clients):
                sink = Sink(20000 + n)
                protocol = GatewayHttpProtocol(config, state, {})
                protocol.connection_made(sink)
                protocols.append(protocol)
                sinks.append(sink)
            figures: dict[str, list[float]] = {"wait": [], "park": [], "flush": [], "behind": []}
            writes = 0
            gc.collect()
            for _ in range(rounds):
                # wait: park, then one message answers every waiter
                started = time.process_time()
                line = request(cursor, origin)
                for protocol in protocols:
                    protocol.data_received(line)
                parked = time.process_time()
                message = await gateway.hub.publish(CHANNEL, "message", "x" * 80)
                writes += 1
                await wait_for(sinks, writes)
                figures["wait"].append(time.process_time() - started)
                figures["park"].append(parked - started)
                figures["flush"].append(time.process_time() - parked)
                cursor = answered_cursor(sinks[0])
                # behind: the message first, then every poll answered at once
                line = request(cursor, origin)
                message = await gateway.hub.publish(CHANNEL, "message", "y" * 80)
                await asyncio.sleep(0.02)
                started = time.process_time()
                for protocol in protocols:
                    protocol.data_received(line)
                writes += 1
                figures["behind"].append(time.process_time() - started)
                await wait_for(sinks, writes)
                cursor = answered_cursor(sinks[0])
            for protocol in protocols:
                protocol.connection_lost(None)
    return {
        f"{name} {label}": pick(values) / clients * 1e6
        for name, values in figures.items()
        for label, pick in (("median", statistics.median),)
    }


def answered_cursor(sink: Sink) -> str:
    body = bytes(sink.last).split(b"\r\n\r\n", 1)[-1]
    cursor: str = orjson.loads(body)["cursor"]
    return cursor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--origin", help="allow this origin (CORS) and send it with every poll")
    args = parser.parse_args()
    figures = uvloop.run(run(args.clients, args.rounds, args.origin))
    print(
        f"{args.clients} clients, median of {args.rounds} rounds, µs of CPU per poll: "
        + ", ".join(f"{name} {value:.2f}" for name, value in figures.items())
    )


if __name__ == "__main__":
    main()
