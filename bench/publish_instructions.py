"""Instructions per publish taken inside the HTTP protocol, in-process, embedded broker.

A publish's Python on the gateway's side alone (no socket, no Redis):
``GatewayHttpProtocol.data_received`` fed the same 100-byte publish as
``wrk`` sends (bench/baselines/nchan/post.lua), round-robin over 100
channels, into a transport that keeps nothing. Counted by callgrind,
which counts instructions, not seconds: the same figure on a busy
machine. Run at two counts; the difference per publish is the figure::

    python bench/publish_instructions.py --callgrind     # ~3 min
    python bench/publish_instructions.py 50000           # wall time (noisy), no valgrind
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REQUEST = (
    b"POST /publish/bench-%d HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
)


class _Dropped(asyncio.Transport):
    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 9) if name in ("sockname", "peername") else default


async def publishes(count: int) -> float:
    import uvicorn
    from uvicorn.server import ServerState

    from gateway.app import create_app
    from gateway.server.protocol import GatewayHttpProtocol
    from gateway.settings import Settings

    app = create_app(Settings.from_env({"REDIS_URL": "", "GATEWAY_HISTORY_SIZE": "10"}))
    config = uvicorn.Config(app, http=GatewayHttpProtocol, log_level="warning")
    config.load()
    async with app.running():
        protocol = GatewayHttpProtocol(config, ServerState(), {})
        protocol.connection_made(_Dropped())
        requests = [REQUEST % (n % 100) for n in range(100)]
        started = time.perf_counter()
        for n in range(count):
            protocol.data_received(requests[n % 100])
        return time.perf_counter() - started


def instructions(count: int) -> int:
    out = f"/tmp/publish-instructions.{os.getpid()}.{count}"
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         __file__, str(count)],
        capture_output=True, text=True, check=True,
    )
    os.unlink(out)
    return int(re.search(r"Collected : (\d+)", run.stderr)[1])  # type: ignore[index]


def main() -> None:
    if sys.argv[1:] == ["--callgrind"]:
        low, high = 2000, 7000
        per = (instructions(high) - instructions(low)) / (high - low)
        print(f"{per:,.0f} instructions per publish")
        return
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
    seconds = asyncio.run(publishes(count))
    print(f"{seconds / count * 1e6:.2f} us per publish (wall time)", file=sys.stderr)


if __name__ == "__main__":
    main()
