"""Fixtures: real redis-server and real uvicorn processes on free ports.

``broker`` parametrises the contract suite over the embedded broker, a
single Redis and a Redis Cluster: every test that takes
``gateway`` runs on all three.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator

import pytest

from tests.cluster import RedisCluster
from tests.servers import GatewayServer, RedisServer

BROKERS = ["memory", "redis", "cluster"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Import the modules of hypothesis that its strategies import only once a test runs.

    pytest rewrites the asserts of every module of hypothesis (a pytest
    plugin) when it is first imported, with ``ast.parse``, which CPython
    3.11.5-3.11.7 can fail ("AST constructor recursion depth mismatch",
    fixed in 3.11.8): seen in CI, a test failed importing hypothesis' regex
    strategies deep in its stack. Here the stack is shallow, and .ci/run's
    collection pass leaves them rewritten in pytest's cache. (Not at
    conftest import: hypothesis refuses to read its data that early.)
    """
    import hypothesis.internal.conjecture.optimiser
    import hypothesis.strategies._internal.regex  # noqa: F401


_names = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server shared by tests that do not hurt it."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """One 3-primary, 3-replica Redis Cluster shared by tests that do not hurt it."""
    cluster = RedisCluster().start()
    yield cluster
    cluster.close()


@pytest.fixture
def fresh_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of this test's own, free to fail over, reshard and kill."""
    cluster = RedisCluster().start()
    yield cluster
    cluster.close()


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to kill, pause and restart."""
    server = RedisServer().start()
    yield server
    server.close()


def gateway_env(
    broker: str, redis: RedisServer | RedisCluster | None, **extra: str
) -> dict[str, str]:
    """A gateway's environment on ``broker``: "memory", "redis" or "cluster" (any node's URL);
    "plain": the embedded broker with every acceleration off (the plain ASGI path)."""
    env = {"GATEWAY_HEARTBEAT": "1", "GATEWAY_POLL_TIMEOUT": "25", **extra}
    if broker == "plain":
        env["GATEWAY_ACCELERATIONS"] = "none"
    if broker in ("redis", "cluster"):
        assert redis is not None
        env["REDIS_URL"] = redis.url
        env["GATEWAY_REDIS_PREFIX"] = f"gw{os.getpid()}x{next(_names)}"
    else:
        env["REDIS_URL"] = ""
    return env


@pytest.fixture(scope="module", params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def gateway(broker: str, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    """A gateway shared by one test module, on the broker of this run."""
    redis = redis_for(broker, request)
    server = GatewayServer(gateway_env(broker, redis)).start()
    yield server
    server.close()


def redis_for(broker: str, request: pytest.FixtureRequest) -> RedisServer | RedisCluster | None:
    """The shared Redis (or cluster) of ``broker``; None for the embedded one."""
    fixtures = {"redis": "redis_server", "cluster": "redis_cluster"}
    return request.getfixturevalue(fixtures[broker]) if broker in fixtures else None


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> str:
    """A channel name no other test uses."""
    name = re.sub(r"[^A-Za-z0-9_.:-]", "-", request.node.name)[:60]
    return f"t{next(_names)}:{name}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
