"""publish_bench.py's JSON lines -> one Markdown table, each figure the median of its repeats.

    python bench/publish_table.py results.jsonl [more.jsonl ...]

The ratio column divides a server's publishes per CPU-second (server +
Redis) by Nchan's in the same cell (connections, channels), when Nchan ran.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def main() -> None:
    cells: dict[tuple[str, int, int, str], list[dict[str, float]]] = defaultdict(list)
    for path in sys.argv[1:]:
        with open(path) as lines:
            for line in lines:
                row = json.loads(line)
                key = (row["transport"], row["connections"], row["channels"], row["server"])
                cells[key].append(row)
    nchan = {
        (t, c, ch): statistics.median(r["per_cpu_s"] for r in rows)
        for (t, c, ch, s), rows in cells.items()
        if s == "nchan-redis"
    }
    print(
        "| transport | conns | channels | server | runs | publishes/s | server µs | Redis µs"
        " | per CPU-s | x Nchan | p50 ms | p99 ms |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (transport, conns, channels, server), rows in sorted(cells.items()):

        def med(name: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[name] for r in rows)

        yardstick = nchan.get(("http", conns, channels))
        ratio = f"{med('per_cpu_s') / yardstick:.2f}" if yardstick else "-"
        print(
            f"| {transport} | {conns} | {channels} | {server} | {len(rows)} | {med('per_s'):,.0f}"
            f" | {med('server_us'):.0f} | {med('redis_us'):.1f} | {med('per_cpu_s'):,.0f}"
            f" | {ratio} | {med('p50_ms'):.1f} | {med('p99_ms'):.0f} |"
        )


if __name__ == "__main__":
    main()
