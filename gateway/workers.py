"""The embedded broker serves one process: refuse to start as one of several workers.

Why: ``uvicorn --workers N`` and gunicorn run N processes on one listening
socket. On the embedded broker each would have its own history, epoch and
stream, and a publish would reach only the clients of the worker that
happened to take it. With ``REDIS_URL`` they share one broker and all is
well; without it, the second worker refuses to start and says so.

How a worker knows it may have siblings: workers inherit the server
socket from their supervisor before their lifespan runs (uvicorn's spawned
workers, gunicorn's forks, and ``--reload``'s one child at a time), while a
single uvicorn process binds its socket only after its lifespan started
(so the tests' many single-process gateways in one pytest never meet this
check). The first process to lock that socket's inode serves; the lock is a
Linux abstract-namespace unix socket named after it, which the kernel frees
when its holder dies, however it dies: a ``--reload`` child that replaces
its killed predecessor takes it again. Elsewhere than Linux (no
``/proc/self/fd``), there is no check.

How the refusal stops the deployment instead of looping: the refused
worker's lifespan fails, uvicorn exits it with status 3 (``STARTUP_FAILURE``)
and its 0.54 supervisor then stops every worker instead of restarting it
(``Multiprocess.keep_subprocess_alive``); gunicorn halts with status 3 on a
worker's boot error. uvicorn's supervisor itself then exits 0, which a
process manager (systemd ``Restart=on-failure``, a container's restart
policy, a shell script) reads as success. So the refused worker first tells
the lock's holder (it connects to the lock), and the holder, once the
supervisor stops it, ends that supervisor with SIGABRT on its way out, core
dumps off: the deployment's exit status says it failed. The holder does
this only under uvicorn's supervisor (its ``multiprocessing`` parent);
gunicorn reports the failure itself.

hypercorn's parent (``hypercorn -w N``) has the same flaw by another
road: it stops the workers once one failed, then reports the exit code of
the workers already gone at that instant, none, so 0. Its holder ends it
the same way: hypercorn's parent stops a worker with SIGTERM, at its
default (an immediate death) in the worker, so the gateway takes it there
(server/shutdown.py) and the holder reaches its ``finally``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import resource
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from gateway.errors import ConfigError

logger = logging.getLogger(__name__)

SEVERAL_WORKERS = (
    "several worker processes share this listening socket on the embedded broker: each "
    "would keep its own history and stream, and a publish would reach only one worker's "
    "clients. Set REDIS_URL so that the workers share one Redis, or run one worker."
)
TELL_TIMEOUT_S = 1.0


@asynccontextmanager
async def sole_worker() -> AsyncIterator[None]:
    """Hold the lock on the inherited listening socket for the block; refuse when taken."""
    inodes = server_socket_inodes()
    if not inodes:
        yield  # a single process: it binds its socket after its lifespan starts
        return
    name = f"\0gateway-embedded-{inodes[0]}"
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(name)
    except OSError as exc:
        lock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        _tell_holder(name)
        logger.error("refusing to start: %s", SEVERAL_WORKERS)
        raise ConfigError(SEVERAL_WORKERS) from None
    lock.listen()
    refused: list[str] = []
    server = await asyncio.start_unix_server(lambda r, w: _heard(r, w, refused), sock=lock)
    try:
        yield
    finally:
        server.close()
        if refused:
            _fail_supervisor()


def server_socket_inodes() -> list[int]:
    """Inodes of the server sockets among this process's open files (Linux; else none)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    inodes = []
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor among them)
        if target.startswith("socket:[") and _server_socket(int(name)):
            inodes.append(int(target[len("socket:[") : -1]))
    return sorted(inodes)


def _server_socket(fd: int) -> bool:
    """A stream socket bound to an address and not connected: listening, or about to.

    Not ``SO_ACCEPTCONN``: uvicorn's supervisor binds the socket and each
    worker calls ``listen()`` only after its lifespan, so the first worker
    to start finds it bound, not yet listening.
    """
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            if sock.type != socket.SOCK_STREAM or not _bound(sock):
                return False
            try:
                sock.getpeername()
            except OSError:
                return True  # not connected
            return False
    except (OSError, ValueError):
        return False


def _bound(sock: socket.socket) -> bool:
    address = sock.getsockname()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return bool(address[1])  # a port
    return sock.family == socket.AF_UNIX and bool(address)


def _tell_holder(name: str) -> None:
    """Let the worker that holds the lock know that a sibling was refused (best effort)."""
    with suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TELL_TIMEOUT_S)
        sock.connect(name)
        sock.sendall(str(os.getpid()).encode())


async def _heard(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refused: list[str]
) -> None:
    with suppress(OSError, TimeoutError):
        async with asyncio.timeout(TELL_TIMEOUT_S):
            pid = (await reader.read(32)).decode(errors="replace")
        refused.append(pid)
        logger.error("worker %s refused to start beside this one: %s", pid, SEVERAL_WORKERS)
    writer.close()


def _fail_supervisor() -> None:
    """End uvicorn's supervisor abnormally, so that its exit status says the start failed."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid != os.getppid() or parent.pid is None:
        return  # not uvicorn's supervisor: gunicorn exits non-zero by itself
    logger.error("stopping the supervisor (pid %s) with a failure status", parent.pid)
    with suppress(OSError, ValueError):
        resource.prlimit(parent.pid, resource.RLIMIT_CORE, (0, 0))
    with suppress(OSError):
        os.kill(parent.pid, signal.SIGABRT)
