"""Real processes for tests: redis-server and the gateway under uvicorn.

Each runs on a free port of its own, so a test may kill, pause or restart it
without touching anyone else's. Nothing here mocks anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 20.0
PORT_ATTEMPTS = 5  # a redis-server whose port was taken meanwhile tries another


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, however it dies.

    A test run killed mid-way (a timeout, ^C) would otherwise leave servers
    running, and their CPU would skew every later test and benchmark.
    """
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _death_pact() -> Callable[[], None] | None:
    """PDEATHSIG follows the *thread* that started the child: only the main one lives long."""
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


def _own_group(pact: Callable[[], None] | None) -> Callable[[], None]:
    """In the child: a process group of its own (its workers too), then the death pact.

    hypercorn, granian and gunicorn run the app in worker processes: killing
    the parent alone left them running, orphaned, each holding a core's slice.
    """

    def preexec() -> None:
        os.setsid()
        if pact is not None:
            pact()

    return preexec


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def uvicorn_here(app: Any, **config: Any) -> AsyncIterator[Any]:
    """``app`` under uvicorn in this process (its tasks and objects inspectable): the
    ``uvicorn.Server``, started; stopped at exit."""
    import anyio
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config)
    )
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        while not server.started:
            await anyio.sleep(0.02)
        try:
            yield server
        finally:
            server.should_exit = True


def wait_until(check, timeout: float = START_TIMEOUT_S, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


class RedisServer:
    """A redis-server of our own, on a free port, in a temporary directory."""

    def __init__(self, *, appendonly: bool = False, tls_dir: str | None = None) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        self.binary = binary
        self.port = free_port()
        self.appendonly = appendonly
        self.tls_dir = tls_dir  # holding cert.pem and key.pem: serve TLS only
        self.dir = tempfile.mkdtemp(prefix="gw-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []
        self.log_path = f"{self.dir}/redis.log"
        self.started = False  # once started, its port is known to clients: never moved

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls_dir else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Spawn and wait until it answers; a first start whose port was taken moves on.

        A port found free may be taken before redis-server binds it (by any
        outgoing connection: ours are in the ephemeral range too), and then
        redis-server exits at once. Waiting 20 s for a PONG that cannot come
        is what CI saw; its log says why, and a first start tries new ports.
        """
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self._spawn()
            failure = self._wait_up()
            if failure is None:
                self.started = True
                return self
            if "Address already in use" not in failure or attempt == PORT_ATTEMPTS:
                raise RuntimeError(f"redis-server on port {self.port} did not start: {failure}")
            if self.started:  # a restart keeps its port (clients know it): wait for it
                time.sleep(0.5)
            else:
                self.move()
        raise AssertionError("unreachable")

    def move(self) -> None:
        """Another port, before the first start."""
        self.port = free_port()

    def _spawn(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--dir",
            self.dir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        if self.tls_dir:
            args[2] = "0"  # no plain port
            args += ["--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += [
                "--tls-cert-file",
                f"{self.tls_dir}/cert.pem",
                "--tls-key-file",
                f"{self.tls_dir}/key.pem",
            ]
        with open(self.log_path, "ab") as log:  # its log and any complaint about its options
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_death_pact()
            )

    def _wait_up(self) -> str | None:
        """None once it answers PING; else why not (its exit and log, or the time out)."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                return f"exited {code}: {self.log()[-1000:]}"
            with contextlib.suppress(OSError):
                if self.ping():
                    return None
            time.sleep(0.05)
        return f"no PONG within {START_TIMEOUT_S}s: {self.log()[-1000:]}"

    def log(self) -> str:
        path = Path(self.log_path)
        return path.read_text(errors="replace") if path.exists() else ""

    def ping(self) -> bool:
        if self.tls_dir:
            cli = ["redis-cli", "-p", str(self.port), "--tls", "--insecure", "ping"]
            return subprocess.run(cli, capture_output=True, text=True).stdout.strip() == "PONG"
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


SERVERS = ("uvicorn", "hypercorn", "granian", "gunicorn")


class GatewayServer:
    """``uvicorn gateway.app:app`` (or ``server``: hypercorn, granian, gunicorn) in a subprocess.

    ``app`` may name another ASGI app (a parent that mounts the gateway at
    ``mount``): ``url`` and ``ws_url`` then lead to the gateway under it,
    and the parent must answer ``/healthz`` itself. ``args`` are more
    options for the server chosen; ``http`` is uvicorn's protocol.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
        app: str = "gateway.app:app",
        mount: str = "",
        http: str | None = None,
        server: str = "uvicorn",
        procfile: bool = False,
    ) -> None:
        assert server in SERVERS, server
        self.server = server
        self.env = dict(env or {})
        self.port = port or free_port()
        self.args = list(args)  # more options for the server
        self.app = app
        self.mount = mount
        # As the Procfile runs it (None), or "httptools" for uvicorn's own.
        self.http = http or "gateway.server.protocol:GatewayHttpProtocol"
        self.http_given = http
        self.procfile = procfile  # uvicorn with every option of the Procfile (procfile_command)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="gw-server-", suffix=".log")[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.origin}{self.mount}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.mount}"

    def start(self, *, wait_ready: bool = True) -> GatewayServer:
        self.spawn()
        try:
            wait_until(self.ready if wait_ready else self.alive)
        except BaseException:
            self.kill()
            raise
        return self

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the server and return at once (``start`` waits until it serves)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        env.setdefault("GATEWAY_SHUTDOWN_GRACE", "3")
        env.setdefault("WEBSOCKETS_MAX_LINE_LENGTH", "65536")  # as the Procfile sets it
        if self.procfile:
            assigned, options = procfile_command(env, http=self.http_given)
            env.update(assigned)
            command = ["uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port),
                       *options, "--log-level", "warning"]  # fmt: skip
        else:
            command = self.command(env["GATEWAY_SHUTDOWN_GRACE"])
        args = [sys.executable, "-m", *command, *self.args]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=log, stderr=log, preexec_fn=_own_group(_death_pact())
        )
        log.close()
        return self.proc

    def command(self, grace: str) -> list[str]:
        """The server's module and options, as the README runs it."""
        port = str(self.port)
        if self.server == "hypercorn":
            bind = f"127.0.0.1:{port}"
            return ["hypercorn", self.app, "--bind", bind, "--graceful-timeout", grace,
                    "--log-level", "warning"]  # fmt: skip
        if self.server == "gunicorn":  # one uvicorn worker
            bind = f"127.0.0.1:{port}"
            return ["gunicorn", self.app, "-k", "uvicorn.workers.UvicornWorker", "-b", bind,
                    "--graceful-timeout", grace, "--log-level", "warning"]  # fmt: skip
        if self.server == "granian":
            return ["granian", "--interface", "asgi", self.app, "--host", "127.0.0.1",
                    "--port", port, "--log-level", "warning"]  # fmt: skip
        return [
            "uvicorn",
            self.app,
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--loop",
            "gateway.server.loop:GreedyAcceptLoop",
            "--http",
            self.http,
            "--ws-per-message-deflate",
            "false",
            "--timeout-graceful-shutdown",
            grace,
            "--log-level",
            "warning",
        ]

    def alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.log()[-2000:]}")
        return httpx.get(f"{self.origin}/healthz", timeout=1).status_code == 200

    def ready(self) -> bool:
        return self.alive() and httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as a platform does on deploy; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        _kill_group(self.proc.pid)  # a worker that outlived its parent
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc.pid)  # the server and its worker processes
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()
        self.log_path.unlink(missing_ok=True)


def procfile_command(
    env: Mapping[str, str], http: str | None = None
) -> tuple[dict[str, str], list[str]]:
    """The Procfile's ``web:`` line: the variables it sets, and its uvicorn options.

    Read from the Procfile itself, so that a test of "the gateway as deployed"
    follows it when it changes; its ``${VAR:-default}`` are read in ``env``.
    ``--host`` and ``--port`` are left out (the caller's); ``http``, when
    given, replaces the Procfile's ``--http`` ("httptools": the plain path,
    every other option the same).
    """
    line = next(
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")
    )

    def expand(match: re.Match[str]) -> str:
        return env.get(match[1]) or match[2] or ""

    words = shlex.split(re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", expand, line.removeprefix("web:")))
    assigned = {}
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        assigned[name] = value
    assert words[:2] == ["uvicorn", "gateway.app:app"], words
    options: list[str] = []
    rest = iter(words[2:])
    for word in rest:
        if word in ("--host", "--port"):
            next(rest)
        elif word == "--http" and http is not None:
            options += [word, http]
            next(rest)
        else:
            options.append(word)
    return assigned, options
