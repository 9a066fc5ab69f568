"""Profile the gateway under one load: a fresh Redis and gateway, the generator, py-spy.

    python bench/profile_run.py --transport poll --clients 5000 --rate 10 --messages 400 \
        --delay 20 --duration 12 -o poll.raw
    python bench/profile_top.py poll.raw --top 30

Server and Redis on core 0, generator on core 1 (servers.py). py-spy starts
``--delay`` seconds after the generator (connects and warm-up done) and
samples the gateway for ``--duration`` seconds at 200 Hz; the generator's
JSON line is printed when it ends.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import servers


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--transport", default="poll")
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--messages", type=int, default=400)
    p.add_argument("--delay", type=float, default=20.0)
    p.add_argument("--duration", type=float, default=12.0)
    p.add_argument("-o", "--out", default="profile.raw")
    p.add_argument("--native", action="store_true",
                   help="C frames too (uvloop, httptools); pauses the server at each sample")
    args = p.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="profile-"))
    env = {"GATEWAY_MAX_CONNECTIONS": str(max(20000, args.clients + 100))}
    with servers.redis_server(logs) as (redis_url, redis_pid), \
            servers.server("gateway", logs, redis_url, env) as (port, pid):
        gen = subprocess.Popen(
            ["taskset", "-c", servers.GENERATOR_CORE, sys.executable, "bench/loadgen.py",
             "--url", f"http://127.0.0.1:{port}", "--transport", args.transport,
             "--clients", str(args.clients), "--messages", str(args.messages),
             "--rate", str(args.rate), "--server-pid", str(pid), "--redis-pid", str(redis_pid),
             "--publisher", "redis-fcall", "--redis-url", redis_url, "--stall", "10"],
            cwd=servers.ROOT, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(args.delay)
            subprocess.run(["py-spy", "record", "--pid", str(pid), "--duration",
                            str(int(args.duration)), "--rate", "200", "--format", "raw",
                            "-o", args.out,
                            *(["--native"] if args.native else ["--nonblocking"])], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out, _ = gen.communicate(timeout=args.messages / max(args.rate, 1) + 300)
        finally:
            if gen.poll() is None:
                gen.terminate()
                gen.wait()
    print(out.strip().splitlines()[-1] if out.strip() else "(no result)")
    print(f"profile: {args.out}; logs: {logs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
