"""rediss:// as a Heroku-style platform gives it: TLS with a self-signed certificate."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import gateway_env
from tests.servers import GatewayServer, RedisServer


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    folder = Path(tmp_path_factory.mktemp("tls"))
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
            "-subj",
            "/CN=redis",
        ],
        check=True,
        capture_output=True,
    )
    server = RedisServer(tls_dir=str(folder)).start()
    yield server
    server.close()


def test_rediss_with_verification_relaxed_serves(tls_redis):
    """GATEWAY_REDIS_SSL_VERIFY=false accepts the platform's self-signed certificate."""
    assert tls_redis.url.startswith("rediss://")
    server = GatewayServer(
        gateway_env("redis", tls_redis, GATEWAY_REDIS_SSL_VERIFY="false")
    ).start()
    try:
        with httpx.Client(timeout=10) as client:
            published = client.post(f"{server.url}/publish/tls:check", content=b"over TLS")
            assert published.status_code == 201
            answer = client.get(
                f"{server.url}/poll/tls:check", params={"since": "0", "timeout": 0}
            ).json()
        assert [m["data"] for m in answer["messages"]] == ["over TLS"]
    finally:
        server.close()


def test_rediss_verifies_certificates_by_default(tls_redis):
    """By default a self-signed certificate is refused: never ready, publishes are 503."""
    server = GatewayServer(gateway_env("redis", tls_redis)).start(wait_ready=False)
    try:
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                assert client.get(f"{server.url}/readyz").status_code == 503
                time.sleep(0.2)
            refused = client.post(f"{server.url}/publish/tls:check", content=b"x")
            assert refused.status_code == 503 and refused.headers["retry-after"]
        assert "certificate" in server.log().lower()
    finally:
        server.close()
