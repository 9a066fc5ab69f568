"""One run's figures, as the dict that becomes its JSON line."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Sequence

from tally import Subscriber, Tally

BUSY = 0.85  # a core busier than this share of the run is what limited it


def percentile(ordered: Sequence[float], share: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summarize(
    args: argparse.Namespace,
    tally: Tally,
    subscribers: list[Subscriber],
    *,
    first: float,
    published_s: float,
    connect_s: float,
    cpu: dict[str, float],
    rss: tuple[int, int],
    ready_at_start: int,
    publish_failures: dict[str, int],
) -> dict[str, object]:
    ordered = sorted(tally.latencies)
    wall_s = max(tally.last_delivery_at - first, published_s, 1e-9)
    server_cpu = cpu.get("server", 0.0)
    broker_cpu = server_cpu + cpu.get("redis", 0.0)
    expected = ready_at_start * args.messages
    rss_per_conn = (rss[1] - rss[0]) / tally.connected if tally.connected else None
    ready = [s for s in subscribers if s.is_ready]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "label": args.label,
        "transport": args.transport,
        "publisher": args.publisher,
        "clients": args.clients,
        "connected": tally.connected,
        "ready": ready_at_start,
        "messages": args.messages,
        "rate": args.rate,
        "window": args.window if args.rate <= 0 else None,
        "connect_s": round(connect_s, 2),
        "publish_rate": round(args.messages / published_s, 1) if published_s > 0 else None,
        "latency_ms": {
            name: round(percentile(ordered, share) * 1000, 1)
            for name, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        "deliveries": tally.delivered,
        "expected": expected,
        "delivered_share": round(tally.delivered / expected, 5) if expected else None,
        "deliveries_per_s": round(tally.delivered / wall_s),
        "complete": (complete := sum(1 for s in ready if s.complete())),
        # The headline: the share of *all* requested clients that got every message.
        "complete_share": round(complete / args.clients, 4) if args.clients else None,
        "incomplete": sum(1 for s in ready if not s.complete()),
        "not_ready": tally.connected - ready_at_start,
        "lost": sum(s.lost + max(0, args.messages - s.next_seq) for s in ready),
        # Of those, the ones at the end: still missing when deliveries stopped for --stall s.
        "lost_at_end": sum(max(0, args.messages - s.next_seq) for s in ready),
        "duplicates": sum(s.duplicates for s in ready),
        "rss_idle_kb": rss[0],
        "rss_loaded_kb": rss[1],
        "rss_per_conn_kb": round(rss_per_conn, 1) if rss_per_conn is not None else None,
        "wall_s": round(wall_s, 2),
        "cpu_s": cpu,
        "server_cpu_util": round(server_cpu / wall_s, 2),
        "generator_cpu_util": round(cpu.get("generator", 0.0) / wall_s, 2),
        "deliveries_per_server_cpu_s": round(tally.delivered / server_cpu) if server_cpu else None,
        # Polls: answers that carried measured messages; the cost of a poll is
        # server CPU over them (a slower server packs more messages per answer).
        "poll_answers": tally.answers,
        "messages_per_answer": round(tally.delivered / tally.answers, 2) if tally.answers else None,
        "answers_per_server_cpu_s": (
            round(tally.answers / server_cpu) if server_cpu and tally.answers else None
        ),
        "deliveries_per_server_and_redis_cpu_s": (
            round(tally.delivered / broker_cpu) if broker_cpu else None
        ),
        "limited_by": limited_by(server_cpu / wall_s, cpu.get("generator", 0.0) / wall_s),
        "loadavg": _loadavg(),
        "errors": {**tally.errors, **publish_failures},
    }


def limited_by(server_util: float, generator_util: float) -> str:
    busy = [name for name, util in (("server cpu", server_util), ("generator cpu", generator_util))
            if util > BUSY]
    return " + ".join(busy) if busy else "neither core saturated (rate-bound)"


def _loadavg() -> float:
    """The machine's 1-minute load average: other work shares these two cores."""
    with open("/proc/loadavg") as loadavg:
        return float(loadavg.read().split()[0])
