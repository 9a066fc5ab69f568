"""JSON lines of runs -> one Markdown table (``python bench/table.py results/x.jsonl``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

COLUMNS = (
    "run", "clients (up/ready)", "msgs @ rate", "p50 / p90 / p99 / max ms", "deliveries/s",
    "complete", "lost / dup", "RSS KB/conn", "server CPU", "deliveries / server CPU-s",
    "(+ redis CPU)", "gen CPU", "limited by",
)


def row(r: dict[str, object]) -> list[str]:
    lat = r["latency_ms"]
    assert isinstance(lat, dict)
    rate = r["rate"] or f"max (window {r['window']})"
    cpu = r["cpu_s"]
    assert isinstance(cpu, dict)
    errors = r.get("errors") or {}
    complete = f"{r['complete']}/{r['clients']}"
    if errors:
        complete += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())) + ")"
    return [
        str(r["label"]),
        f"{r['clients']} ({r['connected']}/{r['ready']})",
        f"{r['messages']} @ {rate}",
        " / ".join(str(lat[k]) for k in ("p50", "p90", "p99", "max")),
        f"{r['deliveries_per_s']:,}",
        complete,
        f"{r['lost']} / {r['duplicates']}",
        str(r["rss_per_conn_kb"]),
        f"{cpu.get('server', 0)} s ({r['server_cpu_util']:.0%})",
        f"{r['deliveries_per_server_cpu_s'] or 0:,}",
        f"{r['deliveries_per_server_and_redis_cpu_s'] or 0:,}",
        f"{r['generator_cpu_util']:.0%}",
        str(r["limited_by"]),
    ]


def markdown(runs: Iterable[dict[str, object]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in runs]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as source:
        print(markdown(json.loads(line) for line in source if line.strip()))
