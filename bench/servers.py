"""The servers under test, each started fresh for a run and stopped after it.

Every server process is pinned to core 0 (``taskset -c 0``), as is the
Redis they share; the load generator runs on core 1. Each ``Server`` is a
context manager: whatever happens in the run, the processes it started
(and only those, by pid) are stopped on the way out.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ROOT / "bench" / "baselines"
SERVER_CORE, GENERATOR_CORE = "0", "1"
STOP_GRACE_S = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: by pid, only this process."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_up(port: int, path: str | None, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1.0).status_code == 200:
                return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} not up after {timeout_s} s")


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *argv],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )


@contextmanager
def redis_server(logs: Path) -> Iterator[tuple[str, int]]:
    """A throw-away redis-server on a free port; yields (url, pid)."""
    port = free_port()
    proc = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--maxclients", "20000"], logs / "redis.log")
    try:
        wait_until_up(port, None)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        stop(proc)


def procfile_argv(port: int) -> list[str]:
    """The gateway as deployed: the Procfile's web command, on 127.0.0.1:<port>."""
    line = (ROOT / "Procfile").read_text().split("web:", 1)[1].strip().splitlines()[0]
    line = line.replace("--host 0.0.0.0", "--host 127.0.0.1")
    # (``env``: the line may start with an assignment, WEBSOCKETS_MAX_LINE_LENGTH=…)
    return ["bash", "-c", f"exec env {line}"] if "$" in line else ["env", *shlex.split(line)]


@contextmanager
def server(kind: str, logs: Path, redis_url: str | None, extra_env: dict[str, str]
           ) -> Iterator[tuple[int, int]]:
    """Start one server; yield (port, pid whose RSS and CPU are measured)."""
    port = free_port()
    env = {"PORT": str(port), **extra_env}
    if redis_url:
        env["REDIS_URL"] = redis_url
    if kind == "nchan":
        with nchan(port, logs) as pid:
            yield port, pid
        return
    if kind == "gateway":
        argv, ready = procfile_argv(port), "/readyz"
    else:
        app = {"tutorial": "tutorial_app:app", "socketio": "socketio_app:app"}[kind]
        argv = ["uvicorn", app, "--app-dir", str(BASELINES), "--host", "127.0.0.1",
                "--port", str(port)]
        ready = None
    proc = spawn(argv, logs / f"{kind}.log", env)
    try:
        wait_until_up(port, ready)
        yield port, proc.pid
    finally:
        stop(proc)


@contextmanager
def nchan(port: int, logs: Path) -> Iterator[int]:
    """nginx + Nchan under a temp prefix; yields the (only) worker's pid."""
    with tempfile.TemporaryDirectory(prefix="nchan-") as prefix:
        template = (BASELINES / "nchan" / "nginx.conf.template").read_text()
        conf = Path(prefix) / "nginx.conf"
        conf.write_text(template.replace("@PREFIX@", prefix).replace("@PORT@", str(port)))
        proc = spawn(["nginx", "-p", prefix, "-c", str(conf), "-e", f"{prefix}/error.log"],
                     logs / "nchan.log")
        try:
            wait_until_up(port, None)
            workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                     text=True, check=True).stdout.split()
            yield int(workers[0])
        finally:
            stop(proc)
            error_log = Path(prefix) / "error.log"
            if error_log.exists():
                with open(logs / "nchan.log", "a") as out:
                    out.write(error_log.read_text())
