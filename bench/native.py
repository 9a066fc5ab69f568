"""WebSocket subscribers in C (native/wsfan.c), kept in the loadgen's ``Tally``.

``loadgen.py --native`` uses these for ``ws`` and ``raw-ws``: the Python
subscribers (wsclients.py) cost ~10 us a frame, and at 10,000 subscribers
and 10 msg/s they held the generator's core at 98 %, so a run measured the
generator's queueing, not the server's. The C program is built here with
the machine's ``cc`` on first use (and again when its source is newer).

The program reports every 100 ms (see its header); this side copies the
counts into the tally, so ``loadgen``'s waits and ``report.summarize`` read
them as they read the Python subscribers'. At the end each client's seq
bookkeeping comes back as a ``Subscriber`` whose fields the summary reads.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from array import array
from pathlib import Path

from tally import Subscriber, Tally

SOURCE = Path(__file__).resolve().parent / "native" / "wsfan.c"
BINARY = SOURCE.with_suffix("")
MODES = {"ws": "gateway", "raw-ws": "raw"}
ERRORS = ("connect", "handshake", "connection lost", "gap", "ws close", "parse")


def build() -> Path:
    if not BINARY.exists() or BINARY.stat().st_mtime < SOURCE.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(BINARY), str(SOURCE)], check=True)
    return BINARY


class NativeSubscribers:
    def __init__(self, tally: Tally, transport: str) -> None:
        if transport not in MODES:
            raise SystemExit(f"loadgen: --native serves {sorted(MODES)}, not {transport!r}")
        self.tally = tally
        self.mode = MODES[transport]
        self.proc: asyncio.subprocess.Process | None = None
        self.opened = asyncio.Event()
        self.open_now = 0
        self.failed: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tail: list[str] = []
        self._latency_file = tempfile.NamedTemporaryFile(prefix="wsfan-", suffix=".bin",
                                                         delete=False).name

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def open(self, host: str, port: int, path: str, clients: int, messages: int,
                   concurrency: int) -> None:
        """Start the program and wait until every connection was tried."""
        binary = build()
        self.proc = await asyncio.create_subprocess_exec(
            str(binary), host, str(port), path, str(clients), str(max(messages, 1)), self.mode,
            self._latency_file, str(concurrency),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        await self.opened.wait()
        if self.failed:
            raise RuntimeError(self.failed)

    def all_ready(self) -> bool:
        return self.open_now == self.tally.alive_ready

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        tally = self.tally
        async for raw in self.proc.stdout:
            line = raw.decode()
            if not line.startswith("status "):
                self._tail.append(line)
                if line == "end\n":
                    return
                continue
            fields = line.split()[1:]
            connected, open_now, ready, alive_ready, delivered = map(int, fields[:5])
            last_at, opened = float(fields[5]), fields[6] == "1"
            errors = dict(zip(ERRORS, map(int, fields[7:]), strict=True))
            changed = (delivered != tally.delivered or alive_ready != tally.alive_ready
                       or ready != tally.ready)
            tally.connected, tally.ready, tally.alive_ready = connected, ready, alive_ready
            tally.delivered, tally.last_delivery_at = delivered, last_at
            self.open_now = open_now
            for kind, count in errors.items():
                if count:
                    tally.errors[kind] = count
            if opened and not self.opened.is_set():
                self.opened.set()
            if changed:
                tally.changed.set()
        self.failed = f"wsfan exited ({await self.proc.wait()})"
        self.opened.set()

    async def stop(self) -> list[Subscriber]:
        """Close every connection; the latencies into the tally; each client's record."""
        assert self.proc is not None and self.proc.stdin is not None and self._reader
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        await self._reader
        code = await self.proc.wait()
        if code:
            raise RuntimeError(f"wsfan exited with {code}")
        self.tally.latencies = _take_latencies(self._latency_file)
        records = []
        for line in self._tail:
            if not line.startswith("client "):
                continue
            is_ready, next_seq, lost, duplicates, closed = map(int, line.split()[1:])
            sub = Subscriber(self.tally)
            sub.is_ready, sub.next_seq, sub.lost = bool(is_ready), next_seq, lost
            sub.duplicates, sub.closed = duplicates, bool(closed)
            records.append(sub)
        return records


def _take_latencies(path: str) -> array[float]:
    """The program's latencies (native doubles, seconds); the file is removed."""
    with open(path, "rb") as data:
        latencies = array("d", data.read())
    os.unlink(path)
    return latencies
