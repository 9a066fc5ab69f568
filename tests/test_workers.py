"""Several workers: refused on the embedded broker, served on Redis; ``--reload`` unaffected."""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import anyio
import pytest

from tests.clients import on_every_transport, publish
from tests.conftest import gateway_env
from tests.servers import GatewayServer, wait_until

pytestmark = pytest.mark.anyio

EXIT_WITHIN_S = 30


def stop(server: GatewayServer) -> None:
    """SIGTERM, so that the supervisor stops its workers (SIGKILL would orphan them)."""
    if server.proc is not None and server.proc.poll() is None:
        server.terminate()
    server.close()


def test_two_workers_on_the_embedded_broker_refuse_to_start():
    """``uvicorn --workers 2`` without REDIS_URL exits non-zero, saying to set it; no worker is left serving."""
    server = GatewayServer({"REDIS_URL": ""}, args=["--workers", "2"])
    try:
        code = server.spawn().wait(EXIT_WITHIN_S)
        log = server.log()
        assert code != 0, log[-3000:]
        assert "refusing to start" in log and "Set REDIS_URL" in log, log[-3000:]
        time.sleep(0.5)  # a worker left behind would still accept here
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
            pass
    finally:
        server.close()


async def test_two_workers_on_redis_start_and_serve(redis_server, channel):
    """With REDIS_URL, both workers start (each logs its start) and deliver the stream."""
    server = GatewayServer(gateway_env("redis", redis_server), args=["--workers", "2"]).start()
    try:
        wait_until(lambda: server.log().count("GATEWAY_SECRET is not set") == 2)
        with anyio.fail_after(20):
            async with on_every_transport(server, channel, 1) as readers:
                message_id = await publish(server.url, channel, "two workers")
        for transport, reader in readers.items():
            assert [m["id"] for m in reader.messages] == [message_id], transport
        assert "refusing" not in server.log()
    finally:
        stop(server)


def test_reload_restarts_its_one_child_on_the_embedded_broker():
    """``--reload`` runs one child at a time on the supervisor's socket: each start is allowed."""
    watched = Path(tempfile.mkdtemp(prefix="gw-reload-"))
    (watched / "touched.py").write_text("A = 1\n")
    args = ["--reload", "--reload-dir", str(watched)]
    server = GatewayServer({"REDIS_URL": ""}, args=args).start()
    try:
        starts = server.log().count("GATEWAY_SECRET is not set")
        (watched / "touched.py").write_text("A = 2\n")
        wait_until(lambda: server.log().count("GATEWAY_SECRET is not set") > starts)
        wait_until(server.ready)
        assert "refusing" not in server.log()
    finally:
        stop(server)
