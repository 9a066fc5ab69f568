"""The test harness itself: a redis-server whose port was taken starts elsewhere, at once."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.cluster import ClusterNode
from tests.servers import RedisServer


@contextmanager
def held(port: int) -> Iterator[None]:
    """Something else listening on ``port``, as another process would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


@pytest.mark.parametrize("taken", ["port", "bus port"])
def test_a_redis_server_whose_port_was_taken_moves_to_another(taken):
    """A port taken between the choice and the bind: a new port at once, not 20 s of waiting."""
    server = ClusterNode() if taken == "bus port" else RedisServer()
    chosen = server.port
    started = time.monotonic()
    try:
        with held(chosen + 10000 if taken == "bus port" else chosen):
            server.start()
        assert server.port != chosen and server.ping()
        assert time.monotonic() - started < 10
    finally:
        server.close()


def test_a_redis_server_that_cannot_start_says_why():
    """A redis-server that exits for another reason: its own words in the error, no retry."""
    server = RedisServer()
    server.extra_args = ["--no-such-option", "yes"]
    try:
        with pytest.raises(RuntimeError, match="no-such-option"):
            server.start()
    finally:
        server.close()
