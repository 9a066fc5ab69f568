"""WebSocket keepalive pings: the same with ws-lean's one timer per loop as with uvicorn's own.

ws-lean (gateway/server/ws_lean.py ``Pings``) takes a socket's pings over
from uvicorn's two timers per socket. Each test runs against a gateway as
the Procfile starts it (``GATEWAY_HEARTBEAT`` 1 s: a ping every second, a
pong due within a second) with ws-lean on, and with it off (uvicorn's
timers): a client that answers stays open, one that does not is failed 1011.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time
import weakref
from collections.abc import Iterator

import pytest

from gateway.server.ws_lean import PING_SLICE, PING_TICK_S, Pings
from tests.servers import GatewayServer

PING, PONG, CLOSE = 9, 10, 8
INTERVAL_S = 1.0
ALL_BUT_LEAN = "http-protocol,http-direct,ws-direct,accept-loop"
Frame = tuple[float, int, bytes]  # (seconds since the handshake, opcode, payload)


@pytest.fixture(scope="module", params=["lean", "plain"])
def server(request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    env = {"REDIS_URL": "", "GATEWAY_HEARTBEAT": str(int(INTERVAL_S))}
    if request.param == "plain":
        env["GATEWAY_ACCELERATIONS"] = ALL_BUT_LEAN
    gateway = GatewayServer(env, procfile=True).start()
    try:
        yield gateway
    finally:
        gateway.kill()


def _open(server: GatewayServer) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(
        b"GET /ws/keepalive HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    got = b""
    while b"\r\n\r\n" not in got:
        got += sock.recv(4096)
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def _frames(server: GatewayServer, seconds: float, answer: bool) -> list[Frame]:
    """The frames the server sends in ``seconds`` (until its close frame); pings answered or not."""
    sock, buffer = _open(server)
    start, frames = time.monotonic(), []
    with sock:
        while True:
            while len(buffer) >= 2:
                size, at = buffer[1] & 0x7F, 2
                if size >= 126:
                    at = 4 if size == 126 else 10
                    size = int.from_bytes(buffer[2:at], "big")
                if len(buffer) < at + size:
                    break
                opcode, payload = buffer[0] & 0x0F, buffer[at : at + size]
                buffer = buffer[at + size :]
                frames.append((time.monotonic() - start, opcode, payload))
                if opcode == CLOSE:
                    return frames
                if opcode == PING and answer:  # masked with zeros: the payload as it is
                    sock.sendall(bytes((0x80 | PONG, 0x80 | len(payload))) + bytes(4) + payload)
            left = seconds - (time.monotonic() - start)
            if left <= 0:
                return frames
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return frames
            if not data:
                return frames
            buffer += data


def test_ws_pings_an_answering_client_every_interval_and_keeps_it(server: GatewayServer) -> None:
    """Pings of 4 bytes, about one an interval (at most a tick late); no close."""
    frames = _frames(server, 5 * INTERVAL_S, answer=True)
    assert CLOSE not in [opcode for _, opcode, _ in frames], frames
    pings = [(at, payload) for at, opcode, payload in frames if opcode == PING]
    assert len(pings) >= 3, frames
    assert all(len(payload) == 4 for _, payload in pings)
    assert len({payload for _, payload in pings}) == len(pings)  # a new payload each time
    times = [0.0] + [at for at, _ in pings]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= INTERVAL_S + PING_TICK_S + 0.5, gaps
    assert min(gaps) >= INTERVAL_S - 0.3, gaps


def test_ws_client_that_never_answers_a_ping_is_closed_1011(server: GatewayServer) -> None:
    """No pong within the timeout: a close frame 1011 "keepalive ping timeout", then the end."""
    frames = _frames(server, 8 * INTERVAL_S, answer=False)
    assert frames and frames[-1][1] == CLOSE, frames
    at, _, payload = frames[-1]
    assert struct.unpack("!H", payload[:2])[0] == 1011, payload
    assert b"keepalive ping timeout" in payload
    assert at <= 2 * INTERVAL_S + 2 * PING_TICK_S + 0.5, at
    assert [opcode for _, opcode, _ in frames[:-1]] == [PING], frames


class _Socket:
    """What ``Pings.take_over`` touches of uvicorn's protocol."""

    ping_interval = ping_timeout = 15.0
    ping_sent_at = 0.0

    def stop_keepalive(self) -> None:
        pass


def test_pings_hold_no_socket_once_its_connection_is_gone() -> None:
    """A closed socket is freed at once, not held until its bucket comes due."""
    loop = asyncio.new_event_loop()
    try:
        sock = _Socket()
        Pings.of(loop).take_over(sock)
        gone = weakref.ref(sock)
        del sock
        assert gone() is None
    finally:
        loop.close()


class _Pinged(_Socket):
    """A socket as ``Pings`` visits it: open, its pong in, each ping recorded."""

    ping_interval = ping_timeout = 0.5
    close_sent = disconnected = False
    pending_ping_payload = None

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.transport = self
        self.conn = self

    def is_closing(self) -> bool:
        return False

    def send_ping(self, payload: bytes) -> None:
        self.log.append("ping")

    def data_to_send(self) -> list[bytes]:
        return []

    def write(self, data: bytes) -> None:
        pass


def test_a_crowded_second_is_pinged_in_slices_between_other_work() -> None:
    """Sockets opened in one second come due together: pinged a slice per loop turn, not at once.

    Under load a ping costs 8-30 µs: a second's bucket of 2,560 sockets took
    up to 78 ms in one callback, holding back every message due meanwhile.
    """
    loop = asyncio.new_event_loop()
    try:
        log: list[str] = []
        sockets = [_Pinged(log) for _ in range(1000)]
        pings = Pings.of(loop)
        for sock in sockets:
            pings.take_over(sock)

        def other_work() -> None:  # a message's fan-out, say: ready on every turn
            log.append("other")
            if log.count("ping") < len(sockets):
                loop.call_soon(other_work)

        loop.call_later(0.2, other_work)
        loop.run_until_complete(asyncio.sleep(PING_TICK_S + 1.0))
        assert log.count("ping") == len(sockets)  # each once: due once in this time
        runs = [len(list(run)) for kind, run in itertools.groupby(log) if kind == "ping"]
        assert max(runs) <= 256, runs  # (PING_SLICE: 128)
        assert len(runs) >= len(sockets) // PING_SLICE
    finally:
        loop.close()
