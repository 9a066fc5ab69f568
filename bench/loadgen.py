"""Load generator: N subscribers on one transport, M messages, one JSON line.

    python bench/loadgen.py --url http://127.0.0.1:8000 --transport sse \\
        --clients 1000 --messages 200 --rate 10 --server-pid 1234

A run: measure the server's idle RSS; open the subscribers (at most
``--connect-concurrency`` handshakes at a time); publish warm-up messages
until every open subscriber has one (so none is measured before it is
subscribed); measure RSS again; then publish the measured messages, either
at ``--rate`` per second or, with ``--rate 0``, as fast as the server
delivers them (at most ``--window`` messages not yet delivered to every
subscriber); wait until every delivery arrived or none arrived for
``--stall`` seconds. The server's CPU seconds are read around the
measured part. See tally.py for what "complete" means.

Raise ``ulimit -n`` (the hard limit) for 10,000 clients; this process lifts
its soft limit to the hard one by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import procstats
import uvloop
from httpclients import (
    EngineIoPollSubscriber,
    NchanPollSubscriber,
    PollSubscriber,
    SseMultiSubscriber,
    SseSubscriber,
)
from native import NativeSubscribers
from publishers import HttpPublisher, Publisher, RedisPublisher, SocketIoRedisPublisher
from report import summarize
from tally import WARMUP_SEQ, Subscriber, Tally, payload
from wsclients import EngineIoWsSubscriber, GatewayWsSubscriber, WsSubscriber

PATHS = {
    "sse": "/sse/{channel}",
    # Four channels a connection: the shared one, and three of its own (quiet).
    "sse-multi": "/sse?channel={channel}&channel={channel}-{n}-a&channel={channel}-{n}-b"
    "&channel={channel}-{n}-c",
    "ws": "/ws/{channel}",
    "raw-ws": "/ws/{channel}",
    "poll": "/poll/{channel}?timeout={poll_timeout}&limit=1000",
    "raw-poll": "/poll/{channel}",
    "sio-ws": "/socket.io/?EIO=4&transport=websocket",
    "sio-poll": "/socket.io/?EIO=4&transport=polling",
}
WARMUP_INTERVAL_S = 0.25


def subscribe_path(args: argparse.Namespace) -> str:
    template = args.path or PATHS[args.transport]
    return template.replace("{n}", "0").format(channel=args.channel, poll_timeout=args.poll_timeout)


def make_subscriber(args: argparse.Namespace, tally: Tally) -> Callable[[], Subscriber]:
    host, port = args.host, args.port
    template = args.path or PATHS[args.transport]
    path = subscribe_path(args)
    numbers = itertools.count()

    def own_path() -> str:  # the subscriber's own channels, where the template has {n}
        return template.format(channel=args.channel, n=next(numbers))

    kinds: dict[str, Callable[[], Subscriber]] = {
        "sse": lambda: SseSubscriber(host, port, path, tally),
        "sse-multi": lambda: SseMultiSubscriber(host, port, own_path(), tally),
        "poll": lambda: PollSubscriber(host, port, path, tally),
        "raw-poll": lambda: NchanPollSubscriber(host, port, path, tally),
        "ws": lambda: GatewayWsSubscriber(host, port, path, tally),
        "raw-ws": lambda: WsSubscriber(host, port, path, tally),
        "sio-ws": lambda: EngineIoWsSubscriber(host, port, path, tally, args.channel),
        "sio-poll": lambda: EngineIoPollSubscriber(host, port, path, tally, args.channel),
    }
    return kinds[args.transport]


async def open_all(args: argparse.Namespace, factory: Callable[[], Subscriber]) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(args.connect_concurrency)
    subscribers: list[Subscriber] = []

    async def open_one() -> None:
        async with gate:
            sub = factory()
            subscribers.append(sub)
            try:
                await loop.create_connection(lambda: sub, args.host, args.port)  # type: ignore[arg-type, return-value]
                await asyncio.wait_for(sub.up, args.connect_timeout)  # type: ignore[attr-defined]
            except (OSError, ConnectionError, TimeoutError) as exc:
                sub.tally.error(f"connect: {type(exc).__name__}: {str(exc)[:60]}")

    async with asyncio.TaskGroup() as tasks:
        for _ in range(args.clients):
            tasks.create_task(open_one())
    return subscribers


async def wait_for(tally: Tally, done: Callable[[], bool], stall_s: float, cap_s: float) -> bool:
    """Wait until ``done()``; give up after ``stall_s`` without a delivery, or ``cap_s``."""
    start = last_progress = time.monotonic()
    seen = tally.delivered
    while not done():
        tally.changed.clear()
        try:
            await asyncio.wait_for(tally.changed.wait(), 0.2)
        except TimeoutError:
            pass
        now = time.monotonic()
        if tally.delivered != seen:
            seen, last_progress = tally.delivered, now
        if now - last_progress > stall_s or now - start > cap_s:
            return done()
    return True


async def warm_up(args: argparse.Namespace, all_ready: Callable[[], bool],
                  publisher: Publisher) -> None:
    deadline = time.monotonic() + args.warmup_timeout
    while time.monotonic() < deadline:
        await publisher.publish(payload(WARMUP_SEQ))
        if all_ready():
            break
        await asyncio.sleep(WARMUP_INTERVAL_S)
    # Let the last warm-up messages land before the measured part starts.
    await asyncio.sleep(args.settle)


async def publish_all(args: argparse.Namespace, tally: Tally, publisher: Publisher) -> float:
    """Publish the measured messages in seq order; return when the first one left.

    At a rate, each publish starts on time without waiting for the previous
    answer (tasks start in creation order, and the HTTP publisher pipelines
    on one connection, so the server reads them in order). As fast as
    delivered (rate 0), at most ``--window`` messages are not yet delivered
    to every subscriber.
    """
    first = time.time()
    if args.rate > 0:
        async with asyncio.TaskGroup() as tasks:
            for seq in range(args.messages):
                delay = first + seq / args.rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.create_task(publisher.publish(payload(seq)))
        return first
    for seq in range(args.messages):
        behind = seq - args.window
        if behind >= 0 and not tally.fully_delivered(behind):
            await wait_for(
                tally, lambda b=behind: tally.fully_delivered(b), args.stall, args.max_drain
            )
        await publisher.publish(payload(seq))
    return first


async def make_publisher(args: argparse.Namespace) -> Publisher:
    if args.publisher == "http":
        target = args.publish_path.format(channel=args.channel)
        return await HttpPublisher(args.host, args.port, target).start()
    if args.publisher == "redis-fcall":
        return RedisPublisher.fcall(args.redis_url, args.redis_prefix, args.channel)
    if args.publisher == "sio-redis":
        return SocketIoRedisPublisher(args.redis_url, args.channel)
    return RedisPublisher.plain(args.redis_url, args.channel)


async def run(args: argparse.Namespace) -> dict[str, object]:
    tally = Tally(args.messages)
    server_pids = {"server": args.server_pid} if args.server_pid else {}
    if args.redis_pid:
        server_pids["redis"] = args.redis_pid
    await asyncio.sleep(args.settle)
    rss_before = procstats.rss_kb(args.server_pid) if args.server_pid else 0
    publisher = await make_publisher(args)
    opened_at = time.monotonic()
    native = NativeSubscribers(tally, args.transport) if args.native else None
    subscribers: list[Subscriber] = []
    if native is not None:
        await native.open(args.host, args.port, subscribe_path(args), args.clients,
                          args.messages, args.connect_concurrency)
        server_pids["native"] = native.pid
        all_ready = native.all_ready
    else:
        subscribers = await open_all(args, make_subscriber(args, tally))

        def all_ready() -> bool:
            return all(s.is_ready or s.closed or not s.is_connected for s in subscribers)
    connect_s = time.monotonic() - opened_at
    await warm_up(args, all_ready, publisher)
    rss_after = procstats.rss_kb(args.server_pid) if args.server_pid else 0
    ready_at_start = tally.alive_ready
    meter = procstats.CpuMeter(server_pids, tuple(range(os.cpu_count() or 1)))
    meter.start()
    first = await publish_all(args, tally, publisher)
    published_s = time.time() - first
    await wait_for(tally, lambda: tally.delivered >= tally.alive_ready * args.messages,
                   args.stall, args.max_drain)
    cpu = meter.stop()
    tally.stopping = True
    for sub in subscribers:
        sub.close()  # type: ignore[attr-defined]
    if native is not None:
        cpu["generator"] = round(cpu["generator"] + cpu.pop("native"), 3)
        subscribers = await native.stop()
    await publisher.aclose()
    return summarize(
        args, tally, subscribers,
        first=first, published_s=published_s, connect_s=connect_s, cpu=cpu,
        rss=(rss_before, rss_after), ready_at_start=ready_at_start,
        publish_failures=getattr(publisher, "failures", {}),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--transport", choices=sorted(PATHS), default="sse")
    p.add_argument("--path", help="subscribe path template ({channel}); default per transport")
    p.add_argument("--channel", default=f"bench-{uuid.uuid4().hex[:8]}")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--rate", type=float, default=10.0, help="messages/s; 0: as fast as delivered")
    p.add_argument("--window", type=int, default=8, help="with --rate 0: messages in flight")
    p.add_argument(
        "--publisher", choices=("http", "redis-fcall", "redis-publish", "sio-redis"), default="http"
    )
    p.add_argument("--publish-path", default="/publish/{channel}")
    p.add_argument("--redis-url", default=None)
    p.add_argument("--redis-prefix", default="gw")
    p.add_argument("--server-pid", type=int, default=0, help="pid whose RSS and CPU are measured")
    p.add_argument("--redis-pid", type=int, default=0, help="a Redis whose CPU is measured too")
    p.add_argument("--label", default="", help="free text copied into the JSON line")
    p.add_argument("--connect-concurrency", type=int, default=256)
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--warmup-timeout", type=float, default=20.0)
    p.add_argument("--poll-timeout", type=float, default=20.0)
    p.add_argument("--settle", type=float, default=1.0, help="idle seconds before RSS readings")
    p.add_argument(
        "--stall", type=float, default=5.0, help="give up after this long without a delivery"
    )
    p.add_argument("--max-drain", type=float, default=120.0, help="cap on any one wait")
    p.add_argument("--native", action="store_true",
                   help="ws and raw-ws: subscribers in C (native.py), so the generator is not "
                   "the limit")
    p.add_argument("--out", help="also append the JSON line to this file")
    p.add_argument("--meta", action="append", default=[], help="key=value copied into the line")
    args = p.parse_args(argv)
    if args.native and args.rate <= 0:
        p.error("--native needs --rate > 0: it keeps no count per message for --window")
    url = urlsplit(args.url)
    args.host, args.port = url.hostname or "127.0.0.1", url.port or 80
    return args


def main() -> int:
    args = parse_args()
    limit = procstats.raise_open_files_limit(args.clients + 1024)
    if limit < args.clients + 64:
        print(f"loadgen: open-file limit {limit} is too low for {args.clients} clients; "
              "raise `ulimit -n`", file=sys.stderr)
        return 2
    result = uvloop.run(run(args))
    result["meta"] = dict(item.split("=", 1) for item in args.meta)
    line = json.dumps(result, separators=(",", ":"))
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as out:
            out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
