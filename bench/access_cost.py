"""What watching tokens costs: SSE connections with a token beside the same run without.

    python bench/access_cost.py                          # 10,000 SSE, 100 msgs at 10/s, each way
    python bench/access_cost.py --clients 1000 --messages 30   # a quick look

Each connection opened with a token is one ``access.Grant`` filed under its
exp second and its user (gateway/access.py); one loop every 0.25 s ends
what expired. This script measures that against connections without a
token, all else equal: one gateway configuration (``GATEWAY_SECRET`` set,
the bench channel public), a fresh gateway per run as the Procfile starts
it (core 0, Redis too; the generator on core 1, as run_matrix.py does),
and the loadgen's figures for each: RSS per connection once all are open,
server CPU per delivery while messages flow. The two runs alternate, token
first, ``--rounds`` times.

It also times, in this process, what the registry does per connection:
``watch`` + leave, and ending 10,000 grants that expire in the same second
(the sweep's worst case), with tracemalloc's bytes per grant.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jwt
import servers

from gateway.access import Access
from gateway.auth import Rights
from gateway.revocations import Revocations
from gateway.subscription import CloseReason

SECRET = "bench-secret-that-is-long-enough-for-hs256!"
CHANNEL = "bench-access"


def token() -> str:
    now = time.time()
    claims = {"sub_channels": ["*"], "exp": int(now + 3600), "iat": now, "sub": "bench"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def one_run(args: argparse.Namespace, redis: tuple[str, int], logs: Path, with_token: bool) -> dict:
    env = {
        "GATEWAY_SECRET": SECRET,
        "GATEWAY_PUBLIC_CHANNELS": "bench-*",
        "GATEWAY_MAX_CONNECTIONS": str(args.clients + 100),
    }
    path = "/sse/{channel}" + (f"?token={token()}" if with_token else "")
    label = "sse with token" if with_token else "sse without token"
    with servers.server("gateway", logs, redis[0], env) as (port, pid):
        argv = [
            "taskset", "-c", servers.GENERATOR_CORE, sys.executable, "bench/loadgen.py",
            "--url", f"http://127.0.0.1:{port}", "--transport", "sse", "--path", path,
            "--channel", f"{CHANNEL}-{int(time.time() * 1000)}",
            "--clients", str(args.clients), "--messages", str(args.messages),
            "--rate", str(args.rate), "--server-pid", str(pid), "--redis-pid", str(redis[1]),
            "--publisher", "redis-fcall", "--redis-url", redis[0], "--label", label,
        ]  # fmt: skip
        done = subprocess.run(argv, cwd=servers.ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"loadgen failed: {done.stderr[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class _Holder:
    __slots__ = ()

    def access_ended(self, reason: CloseReason, note: str, patterns: object) -> None:
        pass


def registry(count: int) -> dict[str, float]:
    """In-process: per-grant time to watch and leave, to expire, and bytes held."""
    holder = _Holder()

    def rights(ttl_s: float) -> Rights:
        return Rights(sub=("*",), pub=(), expires_at=time.time() + ttl_s, user="u", issued_at=0.0)

    access = Access(Revocations(3600))
    long_lived = rights(3600)
    gc.collect()
    started = time.perf_counter()
    for _ in range(count):
        access.watch(long_lived, holder).__exit__(None, None, None)
    watch_leave_us = (time.perf_counter() - started) / count * 1e6
    expiring = rights(1)
    held = [access.watch(expiring, holder) for _ in range(count)]
    gc.collect()
    started = time.perf_counter()
    access.expire(time.time() + 2)  # all in one sweep: the worst case
    expire_us = (time.perf_counter() - started) / count * 1e6
    assert access.grants == 0 and len(held) == count
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [access.watch(long_lived, holder) for _ in range(count)]
    bytes_each = (tracemalloc.get_traced_memory()[0] - before) / count
    tracemalloc.stop()
    assert len(kept) == count
    return {"watch_and_leave_us": watch_leave_us, "expire_us": expire_us, "bytes": bytes_each}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = servers.ROOT / "bench" / "results" / f"{stamp}-access-logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    with servers.redis_server(logs) as redis:
        for _ in range(args.rounds):
            for with_token in (True, False):
                row = one_run(args, redis, logs, with_token)
                rows.append(row)
                print(
                    f"{row['label']:>18}: {row['complete']}/{row['clients']} complete, "
                    f"{row['rss_per_conn_kb']} KB/conn, "
                    f"{row['deliveries_per_server_cpu_s']} deliveries/server CPU-s, "
                    f"p99 {row['latency_ms']['p99']} ms",
                    flush=True,
                )
    micro = registry(args.clients)
    print(
        f"registry, per grant: watch+leave {micro['watch_and_leave_us']:.2f} us, "
        f"expire {micro['expire_us']:.2f} us, {micro['bytes']:.0f} bytes held",
        flush=True,
    )
    with open(logs / "rows.jsonl", "w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
