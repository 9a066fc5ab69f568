"""What a server process costs, read from ``/proc/<pid>``: RSS and CPU seconds.

RSS is ``VmRSS`` from ``/proc/<pid>/status`` (resident, shared pages
included); CPU is ``utime + stime`` from ``/proc/<pid>/stat``, in seconds.
Both are read by the load generator around a run, so a figure is charged to
the server process alone, not to the generator or the kernel's softirqs.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    # The command name (field 2) may hold spaces; fields after its ")" are fixed.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def core_busy_s(core: int) -> float:
    """Busy seconds of one core, every process counted (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{core} "):
                user, nice, system, _idle, _iowait, irq, softirq, steal = line.split()[1:9]
                ticks = int(user) + int(nice) + int(system) + int(irq) + int(softirq) + int(steal)
                return ticks / CLOCK_TICKS
    raise ValueError(f"no core {core} in /proc/stat")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """CPU seconds of some processes (and of this one) between start and stop."""

    pids: dict[str, int]
    cores: tuple[int, ...] = ()
    _start: dict[str, float] | None = None

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        assert self._start is not None, "stop() before start()"
        end = self._read()
        return {name: round(end[name] - self._start[name], 3) for name in end}

    def _read(self) -> dict[str, float]:
        readings = {name: cpu_s(pid) for name, pid in self.pids.items()}
        readings["generator"] = own_cpu_s()
        for core in self.cores:
            readings[f"core{core}_busy"] = core_busy_s(core)
        return readings


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE toward ``wanted``; return the new soft limit.

    The hard limit caps it (``ulimit -Hn``); raising that needs CAP_SYS_RESOURCE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
