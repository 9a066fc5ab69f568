"""Where an idle WebSocket's memory goes: tracemalloc in a gateway served in this process.

    python bench/ws_memory.py --clients 1000 [--transport ws|sse|poll] [--http h11] [--uvloop]

Starts the gateway (embedded broker) under uvicorn in this process with
the Procfile's WebSocket options, takes a tracemalloc snapshot, lets
``bench/loadgen.py`` (another process) open ``--clients`` idle connections
and hold them, snapshots again, and prints the growth per connection by
allocation site, plus the live objects per connection by type (gc).
Python's own allocations only: RSS adds the allocator's slack and the
kernel's socket buffers. ``--http`` picks uvicorn's HTTP protocol
(``auto``: httptools; ``h11``, where an SSE stream notices its client's
departure through a watcher task, transports/departure.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import logging
import sys
import tracemalloc

import servers
import uvicorn


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--transport", default="ws")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--http", default="auto", help="uvicorn's --http: auto, h11, httptools")
    p.add_argument("--uvloop", action="store_true", help="on uvloop, as the Procfile serves")
    args = p.parse_args()
    port = servers.free_port()
    sys.path.insert(0, str(servers.ROOT))
    from gateway.app import create_app
    from gateway.settings import Settings

    logging.basicConfig(level=logging.WARNING)  # before create_app: no line per connection
    settings = Settings.from_env()
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            ws_per_message_deflate=False, loop="none", lifespan="on", http=args.http)
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    for _ in range(600):  # (uvicorn sets no event when it has started)
        if server.started:
            break
        await asyncio.sleep(0.05)
    tracemalloc.start(1)
    gc.collect()
    before = tracemalloc.take_snapshot()
    gc.unfreeze()  # (the collector freezes survivors: gc.get_objects would not list them)
    types_before = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    gen = await asyncio.create_subprocess_exec(
        sys.executable, "bench/loadgen.py", "--url", f"http://127.0.0.1:{port}",
        "--transport", args.transport, "--clients", str(args.clients), "--messages", "0",
        "--settle", "8", "--connect-timeout", "120",
        cwd=servers.ROOT, stdout=asyncio.subprocess.DEVNULL)
    for _ in range(1200):  # every connection open (tracemalloc slows the connect storm)
        await asyncio.sleep(0.1)
        if app.gateway is not None and app.gateway.open_connections >= args.clients:
            break
    await asyncio.sleep(1.0)
    gc.unfreeze()
    gc.collect()
    after = tracemalloc.take_snapshot()
    types_after = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    assert app.gateway is not None
    n = app.gateway.open_connections
    gen.terminate()
    await gen.wait()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"{args.transport} ({args.http}): {total / n / 1024:.2f} KB per connection (Python allocations), "
          f"{n} of {args.clients} open at the snapshot\n")
    for stat in stats[: args.top]:
        frame = stat.traceback[0]
        print(f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.1f}  "
              f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}")
    print("\nobjects per connection, by type:")
    grown = types_after - types_before
    for name, count in grown.most_common(args.top):
        print(f"{count / n:6.2f}  {name}")
    server.should_exit = True
    await serving


if __name__ == "__main__":
    if "--uvloop" in sys.argv:  # (before the loop starts: the Procfile's loop is uvloop's)
        import uvloop

        uvloop.install()
    asyncio.run(main())
