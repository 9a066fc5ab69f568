"""Run the standard matrix; JSON lines and a Markdown table land in bench/results/.

    python bench/run_matrix.py                 # the full matrix (~15 min)
    python bench/run_matrix.py --quick         # smoke: 200 clients, 5 s a run (< 1 min + start-ups)
    python bench/run_matrix.py --only d --clients-d 500 --messages-d 200

The standard matrix (server on core 0, generator on core 1, ~100-byte messages):

    a  SSE subscribers on one channel at 10 msg/s (10,000): gateway, Nchan
    b  WebSocket subscribers, likewise (10,000): gateway, Nchan
    c  long-poll clients at 10 msg/s (5,000): gateway
    d  1,000 subscribers, publishing as fast as delivered (deliveries per
       server CPU-second): gateway sse/ws, tutorial (its default pool,
       and the pool raised), python-socketio ws and polling, Nchan sse
    e  idle SSE connections (10,000), RSS per connection: gateway, Nchan
    f  as a, each subscriber on 4 channels of one /sse stream (the shared
       one and three quiet ones of its own): gateway (--only af: side by side)
    p  long-poll clients at 10 msg/s, at 1,000, 5,000 and 10,000
       (--clients-p): gateway, Nchan (its longpoll subscriber)
    w  idle WebSocket connections (10,000), RSS per connection: gateway, Nchan
    l  waiting long-polls (10,000: each has had its warm-up message and
       polls again), RSS per connection: gateway, Nchan (its longpoll subscriber)

Groups p, w and l are not in the default matrix; the long-poll and WebSocket
comparison beside Nchan is one command:

    python bench/run_matrix.py --only pw

Every server is started fresh for each run, so RSS per connection starts
from an idle process. One Redis (started here, on a free port) serves them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import native
import servers
from table import markdown

RESULTS = servers.ROOT / "bench" / "results"


@dataclass
class Run:
    group: str
    server: str  # gateway | tutorial | tutorial-pool | socketio | nchan
    transport: str
    clients: int
    messages: int
    rate: float
    extra: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        group = f"{self.group}{self.clients}" if self.group == "p" else self.group
        return f"{group}:{self.server}:{self.transport}"


def matrix(args: argparse.Namespace) -> list[Run]:
    stream = max(1, round(args.rate * args.duration))
    a, b, c, d, e = args.clients_a, args.clients_b, args.clients_c, args.clients_d, args.clients_e
    runs = [
        Run("a", "gateway", "sse", a, stream, args.rate),
        Run("a", "nchan", "sse", a, stream, args.rate),
        Run("b", "gateway", "ws", b, stream, args.rate),
        Run("b", "nchan", "raw-ws", b, stream, args.rate),
        Run("c", "gateway", "poll", c, stream, args.rate),
        *(Run("d", server, transport, d, args.messages_d, 0)
          for server, transport in (
              ("gateway", "sse"), ("gateway", "ws"),
              ("tutorial", "sse"), ("tutorial-pool", "sse"),
              ("socketio", "sio-ws"), ("socketio", "sio-poll"), ("nchan", "sse"))),
        Run("e", "gateway", "sse", e, 0, args.rate),
        Run("f", "gateway", "sse-multi", a, stream, args.rate),
        Run("e", "nchan", "sse", e, 0, args.rate),
        *(Run("p", server, transport, int(n), stream, args.rate)
          for n in args.clients_p.split(",")
          for server, transport in (("gateway", "poll"), ("nchan", "raw-poll"))),
        Run("w", "gateway", "ws", e, 0, args.rate),
        Run("w", "nchan", "raw-ws", e, 0, args.rate),
        Run("l", "gateway", "poll", e, 0, args.rate),
        Run("l", "nchan", "raw-poll", e, 0, args.rate),
    ]
    wanted = set(args.only or "abcdef")
    skip = set(args.skip_server or [])
    keep = set(args.server or []) or {r.server for r in runs}
    return [r for r in runs if r.group in wanted and r.server in keep - skip]


def loadgen_argv(run: Run, port: int, pid: int, redis: tuple[str, int], args: argparse.Namespace,
                 out: Path) -> list[str]:
    argv = [
        "taskset", "-c", servers.GENERATOR_CORE, sys.executable, "bench/loadgen.py",
        "--url", f"http://127.0.0.1:{port}", "--transport", run.transport,
        "--clients", str(run.clients), "--messages", str(run.messages), "--rate", str(run.rate),
        "--server-pid", str(pid), "--label", run.name, "--out", str(out),
        "--stall", str(args.stall), "--meta", f"commit={args.commit}",
        "--window", str(args.window), "--settle", str(args.settle),
        *run.extra,
    ]
    if run.transport in native.MODES and run.rate > 0 and not args.python_ws:
        argv += ["--native", "--meta", "subscribers=c"]
    argv += PUBLISHERS[run.server](args, redis[0])
    if run.server != "nchan":
        argv += ["--redis-pid", str(redis[1])]
    return argv


# How each server's messages enter it. Straight into the broker where there is
# one, so that a server busy fanning out cannot slow the publisher below the
# rate (ours then measures the Redis path the issue asks about); the
# tutorial's own publish route shares its exhausted pool, and its producers
# publish into Redis anyway, as the tutorials show.
PUBLISHERS = {
    "gateway": lambda args, url: (["--publisher", args.gateway_publisher]
                                  + (["--redis-url", url] if args.gateway_publisher != "http"
                                     else [])),
    "tutorial": lambda args, url: ["--publisher", "redis-publish", "--redis-url", url],
    "tutorial-pool": lambda args, url: ["--publisher", "redis-publish", "--redis-url", url],
    "socketio": lambda args, url: ["--publisher", "sio-redis", "--redis-url", url],
    "nchan": lambda args, url: ["--publisher", "http"],
}


def server_env(run: Run) -> dict[str, str]:
    if run.server == "tutorial-pool":
        return {"REDIS_MAX_CONNECTIONS": str(run.clients + 100)}
    if run.server == "gateway":
        return {"GATEWAY_MAX_CONNECTIONS": str(max(20000, run.clients + 100))}
    return {}


def execute(run: Run, redis: tuple[str, int], args: argparse.Namespace, out: Path,
            logs: Path) -> None:
    kind = "tutorial" if run.server == "tutorial-pool" else run.server
    broker = None if args.broker == "memory" and kind == "gateway" else redis[0]
    print(f"--- {run.name}: {run.clients} clients, {run.messages} msgs @ "
          f"{run.rate or 'max'}/s", file=sys.stderr, flush=True)
    started = time.monotonic()
    with servers.server(kind, logs, broker, server_env(run)) as (port, pid):
        budget = args.run_timeout + run.messages / max(run.rate, 1.0)
        try:
            done = subprocess.run(loadgen_argv(run, port, pid, redis, args, out), cwd=servers.ROOT,
                                  capture_output=True, text=True, timeout=budget)
        except subprocess.TimeoutExpired:
            print(f"    timed out after {budget:.0f} s", file=sys.stderr)
            return
    print(f"    ({time.monotonic() - started:.1f} s)", file=sys.stderr)
    with open(logs / "loadgen.log", "a") as log:
        log.write(f"--- {run.name}\n{done.stderr}")
    if done.returncode:
        print(f"    loadgen failed ({done.returncode}): {done.stderr[-400:]}", file=sys.stderr)
        return
    row = json.loads(done.stdout.strip().splitlines()[-1])
    lat = row["latency_ms"]
    print(f"    p50 {lat['p50']} ms p99 {lat['p99']} ms, {row['deliveries_per_s']}/s, complete "
          f"{row['complete']}/{row['clients']}, {row['rss_per_conn_kb']} KB/conn, "
          f"{row['deliveries_per_server_cpu_s']}/cpu-s", file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke sizes: 200 clients, 5 s")
    p.add_argument("--only", help="groups to run, e.g. 'ad'")
    p.add_argument("--server", action="append", help="run only these servers; repeatable")
    p.add_argument("--skip-server", action="append", help="e.g. nchan; repeatable")
    p.add_argument("--window", type=int, default=32, help="d: messages in flight")
    p.add_argument("--settle", type=float, default=1.0, help="idle seconds before RSS readings")
    p.add_argument("--broker", choices=("redis", "memory"), default="redis")
    p.add_argument("--gateway-publisher", choices=("http", "redis-fcall"), default="redis-fcall")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of publishing (a, b, c)")
    for group, default in (("a", 10000), ("b", 10000), ("c", 5000), ("d", 1000), ("e", 10000)):
        p.add_argument(f"--clients-{group}", type=int, default=default)
    p.add_argument("--clients-p", default="1000,5000,10000", help="p: client counts, commas")
    p.add_argument("--messages-d", type=int, default=300)
    p.add_argument("--python-ws", action="store_true",
                   help="WebSocket subscribers in Python (wsclients.py), not in C (native.py)")
    p.add_argument("--stall", type=float, default=10.0)
    p.add_argument("--run-timeout", type=float, default=300.0, help="cap per run beyond publishing")
    args = p.parse_args()
    if args.broker == "memory":
        args.gateway_publisher = "http"  # no Redis function to call
    if args.quick:
        args.duration = 4.0
        args.settle = 0.5
        args.messages_d = 100
        args.stall = 5.0
        args.run_timeout = 90.0
        for group in "abcde":
            setattr(args, f"clients_{group}", 200)
        args.clients_p = "200"
    return args


def source_version() -> str:
    """The commit measured, "+dirty" when gateway/ differs from it (others edit this tree)."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=servers.ROOT, capture_output=True,
                              text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "gateway", "Procfile")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so every ``finally`` stops what it started


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args()
    args.commit = source_version()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    logs = RESULTS / f"{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stamp}.jsonl"
    with servers.redis_server(logs) as redis:
        for run in matrix(args):
            execute(run, redis, args, out, logs)
    table = markdown([json.loads(line) for line in out.read_text().splitlines()] if out.exists()
                     else [])
    (RESULTS / f"{stamp}.md").write_text(table)
    print(table)
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
