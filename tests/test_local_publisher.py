"""``create_app().publisher``: the app that mounts the gateway publishes in-process, no URL.

In this process, on the embedded broker: each publish is read back through
the gateway's own poll route, and each refusal is compared with what
``POST /publish/{channel}`` answers for the same input.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import GatewayApp, create_app
from gateway.errors import BadRequest, BrokerUnavailable, GatewayError, TooLarge
from gateway.settings import Settings
from gateway.state import NOT_STARTED

pytestmark = pytest.mark.anyio

LIMIT_BYTES = 16


@pytest.fixture
def app() -> GatewayApp:
    return create_app(
        Settings.from_env({"REDIS_URL": "", "GATEWAY_MAX_MESSAGE_BYTES": str(LIMIT_BYTES)})
    )


@pytest.fixture
async def client(app: GatewayApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
        yield client


async def test_a_publish_in_process_reaches_a_reader_with_its_id(app, client):
    """The id returned is the one a reader of the channel gets, with the event and data."""
    async with app.running():
        first = await app.publisher.publish("orders", '{"n":1}', event="status")
        second = await app.publisher.publish("orders", "plain")
        answer = await client.get("/poll/orders", params={"since": "0", "timeout": "0"})
    assert answer.status_code == 200, answer.text
    assert [(m["id"], m["event"], m["data"]) for m in answer.json()["messages"]] == [
        (first, "status", '{"n":1}'),
        (second, "message", "plain"),
    ]


@pytest.mark.parametrize(
    ("channel", "data", "event", "error"),
    [
        ("bad channel", "x", None, BadRequest),
        ("ok", "x", "bad event", BadRequest),
        ("ok", "x" * (LIMIT_BYTES + 1), None, TooLarge),
        ("ok", "é" * (LIMIT_BYTES // 2 + 1), None, TooLarge),  # UTF-8 bytes, not characters
    ],
)
async def test_a_refusal_is_the_http_routes_own(app, client, channel, data, event, error):
    """Bad names and data past the limit raise the class, status and reason the route answers."""
    async with app.running():
        with pytest.raises(error) as refused:
            await app.publisher.publish(channel, data, event)
        params = {"event": event} if event else {}
        answer = await client.post(f"/publish/{channel}", content=data.encode(), params=params)
    assert (refused.value.status, refused.value.reason) == (
        answer.status_code,
        answer.json()["error"],
    )


async def test_before_and_after_its_lifespan_a_publish_is_refused_with_the_reason(app):
    """Not started (or stopped): ``BrokerUnavailable``, 503, saying to run the lifespan."""
    with pytest.raises(BrokerUnavailable, match="not started") as before:
        await app.publisher.publish("orders", "x")
    async with app.running():
        assert await app.publisher.publish("orders", "x")
    with pytest.raises(BrokerUnavailable) as after:
        await app.publisher.publish("orders", "x")
    for refused in (before.value, after.value):
        assert isinstance(refused, GatewayError)
        assert (refused.status, refused.reason) == (503, NOT_STARTED)


async def test_data_that_is_not_text_is_a_programming_error(app):
    """Bytes are refused before anything is published: JSON travels as its text."""
    async with app.running():
        with pytest.raises(TypeError, match="must be str"):
            await app.publisher.publish("orders", b"x")  # type: ignore[arg-type]
