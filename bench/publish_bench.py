"""Publishing beside Nchan: publishes per CPU-second (server + Redis), latency p50/p99.

Each cell starts a fresh Redis and a fresh server on core 0 (``taskset``),
then drives ``POST /publish/<channel>`` with ``wrk`` on core 1: a
100-byte body over N keep-alive connections, round-robin over C channels
(``baselines/nchan/post.lua``). Nchan runs Redis-backed (``nchan_use_redis``),
as the gateway does. CPU is ``utime + stime`` of the server and of Redis
(``/proc/<pid>/stat``) over the measured run only (a warm-up run comes
first); latency is wrk's (request sent to answer read, per connection).

    python bench/publish_bench.py --server gateway --server nchan-redis \\
        --connections 64 --channels 100 --duration 10 --repeat 2

``--server gateway-before --gateway-root DIR`` runs the gateway of another
checkout too (a worktree of an older commit: the before/after pairs in
bench/README.md, alternated in one run), by its Procfile, from that
directory. ``--server asgi-floor``: the gateway's Procfile command serving
``baselines/answer_201.py`` (read the body, answer 201), the cost of the
HTTP and ASGI layers alone; its "Redis" column is an idle Redis.
``--transport ws`` publishes by WebSocket frames instead (ws_publish.py,
the generator, also on core 1); Nchan has no WebSocket publisher and is
skipped there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from procstats import cpu_s
from servers import (
    BASELINES,
    GENERATOR_CORE,
    ROOT,
    free_port,
    procfile_argv,
    redis_server,
    server,
    stop,
    wait_until_up,
)

POST_LUA = BASELINES / "nchan" / "post.lua"
RESULT = re.compile(r"RESULT (.*)")
# WebSocket publish frames unthrottled (the default is 50 a second per connection).
GATEWAY_ENV = {"GATEWAY_PUBLISH_RATE": "0"}
SERVERS = ["gateway", "gateway-before", "nchan-redis", "asgi-floor"]


@contextmanager
def gateway_from(root: Path, logs: Path, redis_url: str) -> Iterator[tuple[int, int]]:
    """The gateway of another checkout, as its Procfile starts it (from that directory)."""
    port = free_port()
    env = {**os.environ, **GATEWAY_ENV, "PORT": str(port), "REDIS_URL": redis_url}
    line = (root / "Procfile").read_text().split("web:", 1)[1].strip().splitlines()[0]
    line = line.replace("--host 0.0.0.0", "--host 127.0.0.1")
    with open(logs / "gateway-root.log", "ab") as out:
        proc = subprocess.Popen(["taskset", "-c", "0", "bash", "-c", f"exec env {line}"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env)
    try:
        wait_until_up(port, "/readyz")
        yield port, proc.pid
    finally:
        stop(proc)


@contextmanager
def asgi_floor(logs: Path) -> Iterator[tuple[int, int]]:
    """``baselines/answer_201.py`` under the gateway's Procfile command: the ASGI floor."""
    port = free_port()
    argv = procfile_argv(port)
    argv[-1] = argv[-1].replace(
        "gateway.app:app", f"answer_201:app --app-dir {BASELINES}"
    )
    with open(logs / "asgi-floor.log", "ab") as out:
        proc = subprocess.Popen(["taskset", "-c", "0", *argv], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PORT": str(port), "PYTHONPATH": str(ROOT)})
    try:
        wait_until_up(port, None)
        yield port, proc.pid
    finally:
        stop(proc)


def wrk(port: int, connections: int, channels: int, duration_s: float) -> dict[str, int]:
    argv = ["taskset", "-c", GENERATOR_CORE, "wrk", "-t1", f"-c{connections}",
            f"-d{round(duration_s)}s", "--timeout", "10s", "-s", str(POST_LUA),
            f"http://127.0.0.1:{port}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         env={**os.environ, "CHANNELS": str(channels)}).stdout
    match = RESULT.search(out)
    assert match, out
    return {k: int(v) for k, v in (pair.split("=") for pair in match.group(1).split())}


def ws_run(port: int, connections: int, channels: int, duration_s: float) -> dict[str, int]:
    argv = ["taskset", "-c", GENERATOR_CORE, sys.executable, str(Path(__file__).parent /
            "ws_publish.py"), "--port", str(port), "--connections", str(connections),
            "--channels", str(channels), "--duration", str(duration_s)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    match = RESULT.search(out)
    assert match, out
    return {k: int(v) for k, v in (pair.split("=") for pair in match.group(1).split())}


def cell(args: argparse.Namespace, kind: str, connections: int, channels: int,
         logs: Path) -> dict[str, object]:
    drive = wrk if args.transport == "http" else ws_run
    with redis_server(logs) as (redis_url, redis_pid):
        if kind == "gateway-before":
            started = gateway_from(Path(args.gateway_root), logs, redis_url)
        elif kind == "asgi-floor":
            started = asgi_floor(logs)
        else:
            started = server(kind, logs, redis_url, GATEWAY_ENV)
        with started as (port, pid):
            drive(port, connections, channels, args.warmup)
            before = cpu_s(pid), cpu_s(redis_pid), time.monotonic()
            result = drive(port, connections, channels, args.duration)
            server_s = cpu_s(pid) - before[0]
            redis_s = cpu_s(redis_pid) - before[1]
            wall = time.monotonic() - before[2]
    done = result["requests"] - result.get("errors_status", 0)
    return {
        "server": kind,
        "transport": args.transport, "connections": connections, "channels": channels,
        "publishes": done, "errors": sum(v for k, v in result.items() if k.startswith("errors")),
        "per_s": round(done / (result["duration_us"] / 1e6)),
        "server_us": round(server_s / done * 1e6, 1) if done else None,
        "redis_us": round(redis_s / done * 1e6, 1) if done else None,
        "per_cpu_s": round(done / (server_s + redis_s)) if server_s + redis_s else None,
        "p50_ms": result["p50_us"] / 1000, "p99_ms": result["p99_us"] / 1000,
        "wall_s": round(wall, 1), "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", action="append", choices=SERVERS)
    parser.add_argument("--transport", choices=["http", "ws"], default="http")
    parser.add_argument("--connections", default="64")
    parser.add_argument("--channels", default="100")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--gateway-root", help="the checkout that --server gateway-before runs")
    parser.add_argument("--logs", default=str(ROOT / "bench" / "results" / "publish-logs"))
    args = parser.parse_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    kinds = args.server or ["gateway", "nchan-redis"]
    for _ in range(args.repeat):
        for connections in map(int, args.connections.split(",")):
            for channels in map(int, args.channels.split(",")):
                for kind in kinds:
                    if kind == "nchan-redis" and args.transport == "ws":
                        continue
                    print(json.dumps(cell(args, kind, connections, channels, logs)), flush=True)


if __name__ == "__main__":
    main()
