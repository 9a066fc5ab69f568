"""Two gateways for the differential test (tests/test_differential.py): fast path and plain.

One redis-server and two gateways on it with one ``GATEWAY_REDIS_PREFIX``
(every id and cursor the same on both), each with every option of the
Procfile (``GatewayServer(procfile=True)``): one with the gateway's HTTP
protocol, one with uvicorn's ``httptools``. Both with ``--timeout-keep-alive
2`` (uvicorn's default is 5), the one option not the Procfile's, so that a
keep-alive bug shows within a stream's seconds. Their channels are held
joined by SSE streams (the hub then serves polls from memory, the fast
path's case), with messages published before the join (read from Redis)
and after (in the hub's memory).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import jwt

from tests.http_diff import Peer
from tests.http_streams import MAX_MESSAGE_BYTES, WAIT_CEILING_S, World
from tests.servers import GatewayServer, RedisServer, wait_until

SECRET = "differential-test-secret-long-enough-for-hs256"
ORIGIN = "https://app.example"
JOINED = ("pub:a", "pub:b", "priv:c")


def mint(sub: list[str], pub: list[str] | None = None, ttl: float = 3600, key: str = SECRET) -> str:
    payload = {"sub_channels": sub, "pub_channels": pub or [], "exp": int(time.time() + ttl)}
    return jwt.encode(payload, key, algorithm="HS256")


TOKENS = {
    "good": mint(["*"], ["pub:sink"]),
    "public-only": mint(["pub:*"]),
    "expired": mint(["*"], ttl=-60),
    "wrong-key": mint(["*"], key="another-secret-long-enough-for-hs256-keys"),
    "garbage": "not.a.jwt",
}
PUBLISHER = mint(["*"], ["*"])  # setup only: may publish to the channels streams poll


# -- the two servers ---------------------------------------------------------------


class Held:
    """SSE streams held open (the hub keeps their channels joined), read by a thread."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.seen = b""
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.running = True

    def open(self, server: GatewayServer, channel: str) -> None:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(
            f"GET /sse/{channel} HTTP/1.1\r\nHost: t\r\n"
            f"Authorization: Bearer {PUBLISHER}\r\n\r\n".encode()
        )
        opening = b""
        while b": subscribed" not in opening:  # (sent once the hub joined the channel)
            chunk = sock.recv(65536)
            assert chunk, f"an SSE stream did not open: {opening!r}"
            opening += chunk
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ)
        if not self.thread.is_alive():
            self.thread.start()

    def _read(self) -> None:
        while self.running:
            for key, _ in self.selector.select(0.1):
                data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                with self.lock:
                    self.seen = self.seen[-(1 << 20) :] + data

    def wait_for(self, text: str, count: int) -> None:
        """Until ``text`` was seen on ``count`` streams (every server got the message)."""
        deadline = time.monotonic() + 20
        while self.seen.count(text.encode()) < count:
            assert time.monotonic() < deadline, f"{text} never reached the held streams"
            time.sleep(0.02)

    def close(self) -> None:
        self.running = False
        if self.thread.is_alive():
            self.thread.join()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]


@dataclass
class Pair:
    fast: GatewayServer
    plain: GatewayServer
    held: Held
    world: World

    @property
    def peers(self) -> tuple[Peer, Peer]:
        return _peer(self.fast), _peer(self.plain)

    def join(self, channel: str) -> None:
        for server in (self.fast, self.plain):
            self.held.open(server, channel)

    def publish(self, channel: str, data: str) -> str:
        """Published through the fast server: its id."""
        answer = httpx.post(
            f"{self.fast.url}/publish/{channel}",
            content=data.encode(),
            headers={"Authorization": f"Bearer {PUBLISHER}"},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])


def settings_env(redis: RedisServer) -> dict[str, str]:
    return {
        "REDIS_URL": redis.url,
        "GATEWAY_REDIS_PREFIX": f"diff{os.getpid()}",
        "GATEWAY_SECRET": SECRET,
        "GATEWAY_PUBLIC_CHANNELS": "pub:*",
        "GATEWAY_ALLOWED_ORIGINS": ORIGIN,
        "GATEWAY_POLL_TIMEOUT": str(WAIT_CEILING_S),
        "GATEWAY_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
    }


@contextlib.contextmanager
def running_pair() -> Iterator[Pair]:
    """Both gateways (the fixture's; a script may use it too), stopped at the end."""
    redis = RedisServer().start()
    env = settings_env(redis)
    keep_alive = ["--timeout-keep-alive", "2"]
    fast = GatewayServer(env, procfile=True, args=keep_alive)
    plain = GatewayServer(env, procfile=True, args=keep_alive, http="httptools")
    held = Held()
    try:
        for server in (fast, plain):
            server.spawn()
        for server in (fast, plain):
            wait_until(server.ready)
        yield _prepared(fast, plain, held)
    finally:
        held.close()
        for server in (fast, plain):
            server.close()
        redis.close()


def _prepared(fast: GatewayServer, plain: GatewayServer, held: Held) -> Pair:
    """Two messages per channel before the hubs join it (read from Redis), four after (memory)."""
    ids: dict[str, list[str]] = {channel: [] for channel in JOINED}
    pair = Pair(fast, plain, held, World(JOINED, ("pub:cold",), "pub:sink", {}, TOKENS, ORIGIN))
    for channel in JOINED:
        ids[channel] += [pair.publish(channel, f"before {n}") for n in range(2)]
        pair.join(channel)
        for n in range(4):
            ids[channel].append(pair.publish(channel, f"after {n}"))
            held.wait_for(ids[channel][-1], 2)
    known = {channel: tuple(them) for channel, them in ids.items()}
    pair.world = World(JOINED, ("pub:cold",), "pub:sink", known, TOKENS, ORIGIN)
    return pair


def _peer(server: GatewayServer) -> Peer:
    assert server.proc is not None
    return Peer(server.port, server.proc.pid)


def rss(server: GatewayServer) -> int:
    """The server's resident memory, in bytes (/proc/<pid>/status, VmRSS)."""
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024
