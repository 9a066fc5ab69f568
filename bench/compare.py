"""Medians over repeated matrix runs, and the gateway against Nchan in the same run.

    python bench/compare.py bench/results/A.jsonl bench/results/B.jsonl ...

For each run name (``p5000:gateway:poll`` ...): the median over the files
of p50, p99, deliveries per server CPU-second, RSS per connection and
complete/clients; then, per group, the gateway's figures over Nchan's taken
in the same file (p99 ratio, deliveries per CPU-second ratio), each
ratio's median. On a shared machine the ratios within one run are the
figures to quote; absolute latencies move with the other load.
"""

from __future__ import annotations

import collections
import json
import statistics
import sys


def rows(path: str) -> list[dict[str, object]]:
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def group_of(label: str) -> str:
    return label.split(":", 1)[0]


def main() -> None:
    by_name: dict[str, list[dict[str, object]]] = collections.defaultdict(list)
    ratios: dict[str, dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for path in sys.argv[1:]:
        runs = {str(r["label"]): r for r in rows(path)}
        for name, run in runs.items():
            by_name[name].append(run)
        for name, run in runs.items():
            server = name.split(":")[1]
            if server != "gateway":
                continue
            nchan = next((r for n, r in runs.items()
                          if group_of(n) == group_of(name) and n.split(":")[1] == "nchan"), None)
            if nchan is None:
                continue
            for key, value in _ratios(run, nchan).items():
                ratios[group_of(name)][key].append(value)
    print("| run | runs | p50 ms | p99 ms | deliveries / server CPU-s | poll answers / server "
          "CPU-s | messages / answer | RSS KB/conn | complete |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in sorted(by_name):
        runs = by_name[name]
        lat = [r["latency_ms"] for r in runs]
        complete = ", ".join(f"{r['complete']}/{r['clients']}" for r in runs)
        print(f"| {name} | {len(runs)} | {_median([x['p50'] for x in lat]):,.0f} | "  # type: ignore[index]
              f"{_median([x['p99'] for x in lat]):,.0f} | "  # type: ignore[index]
              f"{_median([r['deliveries_per_server_cpu_s'] for r in runs]):,.0f} | "
              f"{_median([r.get('answers_per_server_cpu_s') for r in runs]):,.0f} | "
              f"{_median([r.get('messages_per_answer') for r in runs]):.2f} | "
              f"{_median([r['rss_per_conn_kb'] for r in runs]):.1f} | "
              f"{complete} |")
    print("\n| group | gateway p99 / Nchan p99 (each run) | median | gateway / Nchan "
          "deliveries per CPU-s (each run) | median | RSS ratio |")
    print("|---|---|---|---|---|---|")
    for group in sorted(ratios):
        r = ratios[group]
        print(f"| {group} | {_list(r['p99'])} | {_median(r['p99']):.2f} | "
              f"{_list(r['cpu'])} | {_median(r['cpu']):.2f} | {_median(r['rss']):.2f} |")


def _ratios(ours: dict[str, object], nchan: dict[str, object]) -> dict[str, float]:
    out: dict[str, float] = {}
    p99, n99 = ours["latency_ms"]["p99"], nchan["latency_ms"]["p99"]  # type: ignore[index]
    if p99 == p99 and n99 == n99 and n99:
        out["p99"] = p99 / n99
    cpu, ncpu = ours["deliveries_per_server_cpu_s"], nchan["deliveries_per_server_cpu_s"]
    if cpu and ncpu:
        out["cpu"] = float(cpu) / float(ncpu)  # type: ignore[arg-type]
    rss, nrss = ours["rss_per_conn_kb"], nchan["rss_per_conn_kb"]
    if rss and nrss:
        out["rss"] = float(rss) / float(nrss)  # type: ignore[arg-type]
    return out


def _median(values: list[object]) -> float:
    clean = [float(v) for v in values if v is not None and v == v]  # type: ignore[arg-type]
    return statistics.median(clean) if clean else float("nan")


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) or "-"


if __name__ == "__main__":
    main()
