"""Deliveries per second across 100 channels: a single Redis, a 1-shard and a 3-shard cluster.

    python bench/cluster_bench.py [--gateways 3] [--channels 100] [--duration 10]

For each topology: fresh Redis processes (``tests/cluster.py``; no replicas,
so every Redis process is a shard), ``--gateways`` gateway processes, one
several-channel SSE stream per gateway per ``--readers`` subscribed to all
``--channels`` channels (``GATEWAY_MAX_CHANNELS`` raised to fit), and
``--publishers`` asyncio tasks calling the publish Function straight into
Redis (``RedisCluster`` routes by slot) as fast as Redis answers. A delivery
is one message arriving on one stream; the figure is deliveries per second
at the readers over the run, and publishes per second beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.brokers.functions import publish_call  # noqa: E402
from tests.cluster import RedisCluster  # noqa: E402
from tests.servers import GatewayServer, RedisServer  # noqa: E402

PREFIX = "gwbench"


def start_redis(topology: str) -> RedisServer | RedisCluster:
    if topology == "single":
        return RedisServer().start()
    shards = int(topology.removeprefix("cluster"))
    return RedisCluster(primaries=shards, replicas=0).start()


async def read(url: str, channels: list[str], counts: list[int], index: int) -> None:
    params = [("channel", channel) for channel in channels]
    async with httpx.AsyncClient(timeout=None) as client:
        async with client.stream("GET", f"{url}/sse", params=params) as response:
            async for chunk in response.aiter_bytes():
                counts[index] += chunk.count(b"\nid:") + chunk.startswith(b"id:")


async def clients_by_channel(backend: RedisServer | RedisCluster, channels: list[str]) -> Any:
    """One plain client per Redis process, and the one that owns each channel's slot.

    Routing is done once here, not per call: ``RedisCluster``'s per-call
    routing costs more client CPU than the call itself on this machine.
    """
    if isinstance(backend, RedisServer):
        client = redis.asyncio.Redis.from_url(backend.url)
        return [client], dict.fromkeys(channels, client)
    cluster = redis.asyncio.RedisCluster.from_url(backend.url)
    await cluster.initialize()
    clients: dict[str, Any] = {}
    owners = {}
    for channel in channels:
        node = cluster.get_node_from_key(f"{PREFIX}:{{{channel}}}")
        if node.name not in clients:
            clients[node.name] = redis.asyncio.Redis(host=node.host, port=node.port)
        owners[channel] = clients[node.name]
    await cluster.aclose()
    return list(clients.values()), owners


async def produce(owners: Any, channels: list[str], stop: float, sent: list[int]) -> None:
    for channel in itertools.cycle(channels):
        if time.monotonic() >= stop:
            return
        call = publish_call(PREFIX, channel, "message", "x" * 64, 1000)
        await owners[channel].execute_command(*call)
        sent[0] += 1


async def measure(topology: str, args: argparse.Namespace) -> dict[str, Any]:
    backend = start_redis(topology)
    env = {
        "REDIS_URL": backend.url,
        "GATEWAY_REDIS_PREFIX": PREFIX,
        "GATEWAY_MAX_CHANNELS": str(args.channels),
        "GATEWAY_HEARTBEAT": "15",
    }
    gateways = [GatewayServer(env).start() for _ in range(args.gateways)]
    channels = [f"bench:{n}" for n in range(args.channels)]
    streams = [g.url for g in gateways for _ in range(args.readers)]
    counts = [0] * len(streams)
    clients, owners = await clients_by_channel(backend, channels)
    try:
        async with asyncio.TaskGroup() as tasks:
            readers = [
                tasks.create_task(read(u, channels, counts, i)) for i, u in enumerate(streams)
            ]
            await asyncio.sleep(2)  # every stream subscribed
            before, sent = sum(counts), [0]
            started = time.monotonic()
            stop = started + args.duration
            shares = [channels[n :: args.publishers] for n in range(args.publishers)]
            await asyncio.gather(*(produce(owners, share, stop, sent) for share in shares))
            await asyncio.sleep(1)  # the last messages reach the readers (counted at the end)
            delivered = sum(counts) - before
            for reader in readers:
                reader.cancel()
    except* asyncio.CancelledError:
        pass
    finally:
        for client in clients:
            await client.aclose()
        for gateway in gateways:
            gateway.close()
        backend.close()
    return {
        "topology": topology,
        "gateways": args.gateways,
        "streams": len(streams),
        "channels": args.channels,
        "publishes_per_s": round(sent[0] / args.duration),
        "deliveries_per_s": round(delivered / args.duration),
        "expected_deliveries_per_s": round(sent[0] * len(streams) / args.duration),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--readers", type=int, default=1, help="SSE streams per gateway")
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--topology", action="append", help="single, cluster1, cluster3")
    args = parser.parse_args()
    for topology in args.topology or ["single", "cluster1", "cluster3"]:
        print(json.dumps(asyncio.run(measure(topology, args))), flush=True)


if __name__ == "__main__":
    main()
