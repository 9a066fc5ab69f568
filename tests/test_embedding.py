"""The gateway mounted inside a Starlette or a FastAPI app (``tests/embedded_apps.py``).

Real uvicorn processes serve the parent apps; the gateway lives at
``/realtime``, on the embedded broker and on Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest
import websockets

from tests.clients import on_every_transport, publish
from tests.conftest import gateway_env, redis_for
from tests.servers import GatewayServer, wait_until

pytestmark = pytest.mark.anyio

NOT_STARTED = "the gateway is not started: run its lifespan (see docs/embedding.md)"


@pytest.fixture(scope="module", params=["starlette_app", "fastapi_app"])
def parent(broker: str, request: pytest.FixtureRequest) -> Iterator[GatewayServer]:
    """A parent app with the gateway mounted at ``/realtime``, on the broker of this run."""
    redis = redis_for(broker, request)
    app = f"tests.embedded_apps:{request.param}"
    env = gateway_env(broker, redis)  # no GATEWAY_URL: the parent publishes in-process
    server = GatewayServer(env, app=app, mount="/realtime").start()
    yield server
    server.close()


async def test_a_mounted_gateway_delivers_one_message_on_every_transport(parent, channel):
    """Published under the mount prefix, one message reaches SSE, WebSocket and poll with one id."""
    with anyio.fail_after(20):
        async with on_every_transport(parent, channel, 1) as readers:
            message_id = await publish(parent.url, channel, "from inside a parent app")
    for transport, reader in readers.items():
        assert [(m["id"], m["data"]) for m in reader.messages] == [
            (message_id, "from inside a parent app")
        ], transport


async def test_a_route_of_the_parent_publishes_through_the_mounted_gateway(parent, channel):
    """The parent's own route publishes with ``realtime.publisher``, no URL set; subscribers get that id."""
    with anyio.fail_after(20):
        async with on_every_transport(parent, channel, 1) as readers:
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.post(f"{parent.origin}/notify/{channel}", content=b"shipped")
            assert answer.status_code == 200, answer.text
    for transport, reader in readers.items():
        assert [(m["id"], m["event"], m["data"]) for m in reader.messages] == [
            (answer.json()["id"], "notice", "shipped")
        ], transport


async def test_a_mounted_gateway_serves_its_pages_and_probes(parent):
    """/realtime/healthz, /readyz, /metrics and /static/gateway.js answer under the prefix."""
    async with httpx.AsyncClient(base_url=parent.url, timeout=10) as client:
        for path in ("/healthz", "/readyz", "/metrics", "/static/gateway.js"):
            answer = await client.get(path)
            assert answer.status_code == 200, (path, answer.text)
        script = await client.get("/static/gateway.js")
        bad = await client.get("/poll/bad%20channel")
    assert "Gateway" in script.text
    assert bad.status_code == 400 and "invalid channel" in bad.json()["error"]


@pytest.fixture(scope="module")
def not_started() -> Iterator[GatewayServer]:
    env = {"REDIS_URL": ""}
    app = "tests.embedded_apps:not_started_app"
    server = GatewayServer(env, app=app, mount="/realtime").start(wait_ready=False)
    yield server
    server.close()


async def test_a_gateway_never_started_answers_503_with_the_reason(not_started, channel):
    """Mounted without its lifespan: every route answers 503 and says why, the log too; never a 500."""
    async with httpx.AsyncClient(base_url=not_started.url, timeout=10) as client:
        answers = [
            await client.post(f"/publish/{channel}", content=b"x"),
            await client.get(f"/poll/{channel}", params={"timeout": 0}),
            await client.get(f"/sse/{channel}"),
            await client.get("/healthz"),
        ]
    for answer in answers:
        assert (answer.status_code, answer.json()) == (503, {"error": NOT_STARTED})
    async with websockets.connect(f"{not_started.ws_url}/ws/{channel}") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, NOT_STARTED)
    wait_until(lambda: NOT_STARTED in not_started.log(), timeout=5)
