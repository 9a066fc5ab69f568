"""The cost of presence: many members joining one channel, and a reconnect storm.

    python bench/presence.py                      # 10,000 joining, a storm of 5,000
    python bench/presence.py --join 2000 --storm 1000

Starts a throw-away redis-server and one gateway on it (the Procfile's
command, pinned to core 0 like Redis; this generator on core 1), then:

* **join**: ``--join`` SSE members (``?user=u<n>``, one user each) connect to
  one channel as fast as the generator can; a separate listener
  (``/ws/{channel}?presence=1``) counts the join events it receives. Reported:
  the time until ``GET /presence/{channel}`` is right (every user, every
  connection); Redis commands per join (``INFO commandstats``, calls before
  and after, everything the gateway sent: presence functions, and what each
  SSE subscription costs anyway, shown apart); Redis memory per member
  (``MEMORY USAGE`` of the channel's four presence keys / members); the time
  one snapshot takes with every member listed.
* **storm**: ``--storm`` members that each listen too (``?presence=1``: every
  member sees everyone, the worst case: N joins x N listeners), settled;
  then every connection is dropped and opened again at once, as clients do
  after a network blip. Reported: presence events delivered to the members
  during the storm, and the time until the snapshot is right again.

``GATEWAY_PRESENCE_MAX_MEMBERS`` is raised above both sizes (``--max``) so
that events are sent at all: at the default (1,000) a channel of 5,000
users is counts only and sends none.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servers import GENERATOR_CORE, redis_server, server

from gateway.brokers.presence_redis import presence_keys

PREFIX = "gwbench"
CONNECT_AT_ONCE = 200


class Counter:
    def __init__(self) -> None:
        self.events = 0


class Member(asyncio.Protocol):
    """One SSE connection (a member, maybe a listener): counts the presence events it reads."""

    def __init__(self, request: bytes, counter: Counter) -> None:
        self.request = request
        self.counter = counter
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.counter.events += data.count(b"event: join") + data.count(b"event: leave")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # an RST: the gateway sees it at once


async def connect(
    port: int, channel: str, users: range, listen: bool, counter: Counter
) -> list[Member]:
    loop = asyncio.get_running_loop()
    members: list[Member] = []
    listen_q = "&presence=1" if listen else ""
    for start in range(users.start, users.stop, CONNECT_AT_ONCE):
        batch = range(start, min(start + CONNECT_AT_ONCE, users.stop))

        async def one(n: int) -> Member:
            request = (f"GET /sse/{channel}?user=u{n}{listen_q} HTTP/1.1\r\n"
                       f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n").encode()
            made = await loop.create_connection(lambda: Member(request, counter), "127.0.0.1", port)
            return made[1]

        members += await asyncio.gather(*(one(n) for n in batch))
    return members


async def snapshot(base: str, channel: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=30) as client:
        return dict((await client.get(f"{base}/presence/{channel}")).json())


async def until_right(base: str, channel: str, users: int) -> float:
    started = time.monotonic()
    while True:
        found = await snapshot(base, channel)
        if found.get("users") == users and found.get("connections") == users:
            return time.monotonic() - started
        await asyncio.sleep(0.05)


async def commandstats(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


async def join_run(base: str, port: int, redis_url: str, count: int) -> None:
    channel = "bench:join"
    client = aioredis.from_url(redis_url)
    listener = Counter()
    watcher = await connect(port, channel, range(-1, 0), True, listener)  # user u-1, listening
    await until_right(base, channel, 1)
    before = await commandstats(client)
    started = time.monotonic()
    members = await connect(port, channel, range(count), False, Counter())
    connected = time.monotonic() - started
    took = await until_right(base, channel, count + 1) + connected
    await asyncio.sleep(1.0)  # the listener's last events
    used = delta(before, await commandstats(client))
    keys = presence_keys(PREFIX, channel)[1:]
    memory = sum([await client.memory_usage(key) or 0 for key in keys])
    timed = time.monotonic()
    full = await snapshot(base, channel)
    snap_s = time.monotonic() - timed
    calls = sum(v for k, v in used.items() if k == "fcall")
    listed = full.get("members")
    shown = len(listed) if isinstance(listed, list) else "counts only"
    print(f"join: {count} members connected in {connected:.2f} s; "
          f"snapshot right after {took:.2f} s")
    print(f"  listener got {listener.events} join events")
    print(f"  Redis commands during the joins (inside functions too): {used}")
    print(f"  presence update calls (FCALL): {calls} = {calls / count:.4f} per join; "
          f"all commands: {sum(used.values()) / count:.3f} per join")
    print(f"  Redis memory of the presence keys: {memory} bytes = "
          f"{memory / (count + 1):.0f} B per member")
    print(f"  one snapshot: {snap_s * 1000:.0f} ms, {shown} members")
    for member in [*members, *watcher]:
        member.close()
    await client.aclose()


async def storm_run(base: str, port: int, count: int) -> None:
    channel = "bench:storm"
    counter = Counter()
    members = await connect(port, channel, range(count), True, counter)
    settle = await until_right(base, channel, count)
    await asyncio.sleep(3.0)
    print(f"storm: {count} listening members settled {settle:.2f} s after connecting; "
          f"{counter.events} events delivered meanwhile")
    counter.events = 0
    started = time.monotonic()
    for member in members:
        member.close()
    members = await connect(port, channel, range(count), True, counter)
    reconnected = time.monotonic() - started
    took = await until_right(base, channel, count) + reconnected
    await asyncio.sleep(5.0)  # past the leave grace: any leave would have come
    print(f"  every connection dropped and reopened: reconnected in {reconnected:.2f} s, "
          f"snapshot right after {took:.2f} s; {counter.events} presence events delivered "
          f"(without the grace: up to {2 * count * count:,})")
    for member in members:
        member.close()


async def main(args: argparse.Namespace) -> None:
    logs = Path(tempfile.mkdtemp(prefix="bench-presence-"))
    with redis_server(logs) as (redis_url, _):
        env = {"GATEWAY_PRESENCE_MAX_MEMBERS": str(args.max), "GATEWAY_REDIS_PREFIX": PREFIX,
               "GATEWAY_MAX_CONNECTIONS": "30000"}
        with server("gateway", logs, redis_url, env) as (port, _):
            base = f"http://127.0.0.1:{port}"
            if args.join:
                await join_run(base, port, redis_url, args.join)
            if args.storm:
                await storm_run(base, port, args.storm)
    print(f"logs: {logs}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--join", type=int, default=10_000)
    parser.add_argument("--storm", type=int, default=5_000)
    parser.add_argument("--max", type=int, default=20_000, help="GATEWAY_PRESENCE_MAX_MEMBERS")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {int(GENERATOR_CORE)})
    asyncio.run(main(parser.parse_args()))
