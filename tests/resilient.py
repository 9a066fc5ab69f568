"""Clients that keep their cursor through faults, and a producer that retries.

``follow`` reads one transport forever, reconnecting with its cursor (to the
next server in its list) whenever the connection drops or is refused. The
producer records the ids the gateway acknowledged; a fault test then checks
every acknowledged id reached every client exactly once, in order.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import websockets

from tests.clients import TRANSPORTS, Reader, reader_for
from tests.servers import ROOT

RETRY_PAUSE_S = 0.05
RESULTS = ROOT / "artifacts" / "fault-recovery.txt"


@dataclass
class Follower(Reader):
    arrivals: list[float] = field(default_factory=list)
    reconnects: int = 0

    def add(self, item: dict[str, Any]) -> None:
        super().add(item)
        self.arrivals.append(time.monotonic())

    @property
    def ids(self) -> list[str]:
        return [m["id"] for m in self.messages]

    def has(self, message_id: str) -> bool:
        return any(m["id"] == message_id for m in reversed(self.messages))

    def longest_silence(self, after: float) -> float:
        """The longest wait between arrivals from ``after`` on (a fault's recovery time)."""
        times = [after] + [t for t in self.arrivals if t >= after]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def follow(
    transport: str, servers: Sequence[Any], channel: str, reader: Follower, since: str
) -> None:
    """Read forever, resuming from the cursor after any drop; cancel to stop."""
    reader.cursor = since
    turn = 0
    while True:
        server = servers[turn % len(servers)]
        read = reader_for(transport, server)
        try:
            kwargs: dict[str, Any] = {"since": reader.cursor}
            if transport == "poll":
                kwargs["timeout"] = 2
            await read(channel, reader, 10**9, **kwargs)
        except (httpx.HTTPError, OSError, websockets.WebSocketException):
            pass
        reader.ready.set()
        reader.reconnects += 1
        turn += 1
        await anyio.sleep(RETRY_PAUSE_S)


@dataclass
class Producer:
    acked: list[str] = field(default_factory=list)
    refused: int = 0

    async def run(self, servers: Sequence[Any], channel: str, count: int) -> None:
        """Publish ``count`` messages, retrying each until some gateway acknowledges it."""
        async with httpx.AsyncClient(timeout=5) as client:
            turn = 0
            for n in range(count):
                while True:
                    server = servers[turn % len(servers)]
                    try:
                        response = await client.post(
                            f"{server.url}/publish/{channel}", content=f"m{n}".encode()
                        )
                        if response.status_code == 201:
                            self.acked.append(response.json()["id"])
                            break
                        assert response.status_code == 503, response.text
                        assert response.headers.get("retry-after")
                    except (httpx.HTTPError, OSError):
                        turn += 1
                    self.refused += 1
                    await anyio.sleep(RETRY_PAUSE_S)


def assert_exactly_once_in_order(reader: Follower, acked: list[str]) -> None:
    ids = reader.ids
    assert len(ids) == len(set(ids)), "a message was delivered twice"
    wanted = set(acked)
    assert [i for i in ids if i in wanted] == acked, "an acknowledged message was lost or reordered"


async def wait_for_all(readers: Sequence[Follower], last_id: str, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while not all(reader.has(last_id) for reader in readers):
            await anyio.sleep(0.05)


def record(name: str, readers: dict[str, Follower], fault_at: float) -> None:
    """Print and append to artifacts/fault-recovery.txt each reader's longest silence after the fault."""
    silences = {t: round(r.longest_silence(fault_at), 3) for t, r in readers.items()}
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {name}: recovery (longest silence after the fault, s) {silences}"
    print(line)
    Path(RESULTS).parent.mkdir(exist_ok=True)
    with Path(RESULTS).open("a") as out:
        out.write(line + "\n")


async def followers(
    servers: Sequence[Any], channel: str, tasks: Any, transports: Sequence[str] = TRANSPORTS
) -> dict[str, Follower]:
    """One follower per transport on ``servers`` (the first, then the next after a drop)."""
    readers = {transport: Follower() for transport in transports}
    for transport, reader in readers.items():
        tasks.start_soon(follow, transport, servers, channel, reader, "0")
    with anyio.fail_after(15):
        for reader in readers.values():
            await reader.ready.wait()
    return readers


async def stream_through_fault(
    read_from: Sequence[Any],
    publish_to: Sequence[Any],
    channel: str,
    count: int,
    fault_after: int,
    fault: Callable[[], Awaitable[None]],
    *,
    check: Callable[[Follower, list[str]], None] | None = None,
    on_each: bool = False,
) -> tuple[dict[str, Follower], Producer, float]:
    """Followers on every transport, a producer of ``count``; ``fault()`` after ``fault_after``
    acks; each reader checked exactly-once-in-order (or by ``check``).

    The followers read from ``read_from[0]`` and move on down the list after a
    drop; ``on_each``: a set of followers starts on each server (``sse@1``
    starts on the second).
    """
    producer = Producer()
    async with anyio.create_task_group() as tasks:
        readers: dict[str, Follower] = {}
        for n, server in enumerate(read_from if on_each else read_from[:1]):
            order = [server, *(s for s in read_from if s is not server)]
            mine = await followers(order, channel, tasks)
            name = f"{{}}@{n}" if on_each else "{}"
            readers |= {name.format(transport): reader for transport, reader in mine.items()}
        async with anyio.create_task_group() as production:
            production.start_soon(producer.run, publish_to, channel, count)
            while len(producer.acked) < fault_after:
                await anyio.sleep(0.01)
            fault_at = time.monotonic()
            await fault()
        await wait_for_all(list(readers.values()), producer.acked[-1])
        tasks.cancel_scope.cancel()
    failures = []
    for name, reader in readers.items():
        try:
            (check or assert_exactly_once_in_order)(reader, producer.acked)
        except AssertionError as failed:
            failures.append(f"{name}: {failed}\n  {what_differs(reader, producer)}")
    assert not failures, "\n".join(failures)  # every reader's, to tell a node's loss from one's
    return readers, producer, fault_at


def what_differs(reader: Follower, producer: Producer) -> str:
    """Which acknowledged messages a reader missed or got twice, by their place in the acks."""
    place = {message_id: n for n, message_id in enumerate(producer.acked)}
    got = [place.get(message_id, -1) for message_id in reader.ids]
    seen = set(got)
    missing = [(n, i) for n, i in enumerate(producer.acked) if n not in seen]
    twice = sorted({n for n in got if got.count(n) > 1})
    order = [n for n in got if n >= 0]
    backwards = [(a, b) for a, b in itertools.pairwise(order) if b <= a]
    runs: list[list[int]] = []  # the missing places as [first, last] runs
    for n, _ in missing:
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return (
        f"{len(producer.acked)} acked, {len(reader.ids)} received, {reader.gaps} gap(s); "
        f"missing places {runs[:20]}, the first (place, id) {missing[:5]}; twice {twice[:20]}; "
        f"out of order {backwards[:10]}; reconnects {reader.reconnects}"
    )
