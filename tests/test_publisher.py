"""``gateway.publisher``: sync and async, over Redis and over HTTP, against real servers.

Every publish is checked where it matters: a gateway subscriber receives it
with the id the publisher returned. Every refusal is checked for its class.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import gateway.publisher
from gateway.errors import (
    BadRequest,
    BrokerUnavailable,
    ConfigError,
    Forbidden,
    GatewayError,
    OutcomeUnknown,
    TooLarge,
    Unauthorized,
)
from gateway.publisher import AsyncPublisher, Publisher, apublish, publish
from tests.clients import Reader, read_poll, subscribed
from tests.conftest import gateway_env
from tests.servers import GatewayServer, RedisServer, free_port
from tests.test_security import SECRET, mint

pytestmark = pytest.mark.anyio

WIRES = ["redis", "http"]


@pytest.fixture(scope="module")
def node(redis_server: RedisServer) -> Iterator[GatewayServer]:
    """A gateway on the shared redis-server: the publishers' target and the subscribers' node."""
    server = GatewayServer(gateway_env("redis", redis_server)).start()
    yield server
    server.close()


def target(wire: str, node: GatewayServer, **options: Any) -> dict[str, Any]:
    """A publisher's arguments for ``node`` over ``wire``."""
    if wire == "redis":
        return {"url": node.env["REDIS_URL"], "prefix": node.env["GATEWAY_REDIS_PREFIX"], **options}
    return {"url": node.url, **options}


async def published_and_received(node: GatewayServer, channel: str, send: Any) -> tuple[str, dict[str, Any]]:
    """Run ``send()`` (it returns an id) while a poll subscriber waits; what it received."""
    async with subscribed(lambda *a, **kw: read_poll(node.url, *a, **kw), channel, 1) as reader:
        with anyio.fail_after(10):
            message_id = await send()
    assert isinstance(reader, Reader)
    return message_id, reader.messages[0]


@pytest.mark.parametrize("wire", WIRES)
async def test_a_sync_publish_reaches_a_subscriber_with_its_id(node, channel, wire):
    """``Publisher.publish`` (from a worker thread, as Flask would) returns the id subscribers see."""
    with Publisher(**target(wire, node)) as publisher:
        send = lambda: anyio.to_thread.run_sync(publisher.publish, channel, '{"n": 1}', "created")  # noqa: E731
        message_id, received = await published_and_received(node, channel, send)
    assert received == {"id": message_id, "channel": channel, "event": "created", "data": '{"n": 1}'}


@pytest.mark.parametrize("wire", WIRES)
async def test_an_async_publish_reaches_a_subscriber_with_its_id(node, channel, wire):
    """``await AsyncPublisher.publish`` returns the id subscribers see; the event defaults to message."""
    async with AsyncPublisher(**target(wire, node)) as publisher:
        message_id, received = await published_and_received(
            node, channel, lambda: publisher.publish(channel, "héllo")
        )
    assert received == {"id": message_id, "channel": channel, "event": "message", "data": "héllo"}


@pytest.mark.parametrize("wire", WIRES)
async def test_publish_and_apublish_take_their_target_from_the_environment(
    node, channel, wire, monkeypatch
):
    """``publish()``/``apublish()``: ``GATEWAY_URL`` if set, else ``REDIS_URL`` (and the prefix)."""
    monkeypatch.setattr(gateway.publisher, "_default", None)
    monkeypatch.setenv("REDIS_URL", node.env["REDIS_URL"])
    monkeypatch.setenv("GATEWAY_REDIS_PREFIX", node.env["GATEWAY_REDIS_PREFIX"])
    if wire == "http":
        monkeypatch.setenv("GATEWAY_URL", node.url)
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # would fail: proves the choice
    sync_id, received = await published_and_received(
        node, channel, lambda: anyio.to_thread.run_sync(publish, channel, "sync")
    )
    assert received["id"] == sync_id
    async_id, received = await published_and_received(node, channel, lambda: apublish(channel, "async"))
    assert received["id"] == async_id and async_id != sync_id
    gateway.publisher._default[1].close()


@pytest.mark.parametrize(
    "environ",
    [{}, {"GATEWAY_URL": "ftp://gw.example"}, {"REDIS_URL": "redis://x", "GATEWAY_HEARTBEAT": "often"}],
)
async def test_no_usable_url_is_a_gateway_error_a_route_can_answer(environ, monkeypatch):
    """No URL, a bad one, a bad setting: ``NotConfigured``, a ``ConfigError`` that ``except GatewayError`` catches (500)."""
    for make in (Publisher.from_env, AsyncPublisher.from_env):
        with pytest.raises(GatewayError) as refused:
            make(environ)
        assert isinstance(refused.value, ConfigError) and refused.value.status == 500
    monkeypatch.setattr(gateway.publisher, "_default", None)
    for name in ("GATEWAY_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(GatewayError, match=r"set GATEWAY_URL .* or REDIS_URL .*create_app"):
        publish("orders", "the Flask snippet's call, with nothing set")


BAD = {
    "too large": (TooLarge, {"data": "é" * 40}),  # 80 UTF-8 bytes, 40 characters
    "bad channel": (BadRequest, {"channel": "no spaces"}),
    "bad event": (BadRequest, {"event": "bad\nevent"}),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("wire", ["redis", "http"])
async def test_bad_input_is_refused_before_anything_is_sent(case, wire):
    """Size in UTF-8 bytes, channel and event names: checked first (the target does not even exist)."""
    error, bad = BAD[case]
    url = "redis://127.0.0.1:1/0" if wire == "redis" else "http://127.0.0.1:1"
    call = {"channel": "ok", "data": "fine", "event": None, **bad}
    with Publisher(url, max_message_bytes=64) as publisher, pytest.raises(error):
        publisher.publish(**call)
    async with AsyncPublisher(url, max_message_bytes=64) as apublisher:
        with pytest.raises(error):
            await apublisher.publish(**call)


async def test_the_gateways_own_limit_comes_back_as_too_large(node, channel):
    """Over HTTP, a gateway's 413 is ``TooLarge`` with its reason."""
    async with AsyncPublisher(node.url, max_message_bytes=10**6) as publisher:
        with pytest.raises(TooLarge, match="larger than 65536"):
            await publisher.publish(channel, "x" * 70_000)


@pytest.mark.parametrize("wire", WIRES)
async def test_a_broker_away_is_broker_unavailable(fresh_redis, channel, wire):
    """A stopped redis-server, or no gateway at the URL: ``BrokerUnavailable`` (503), sync and async."""
    url = fresh_redis.url if wire == "redis" else f"http://127.0.0.1:{free_port()}"
    fresh_redis.stop()
    with Publisher(url, timeout_s=2) as publisher, pytest.raises(BrokerUnavailable) as sync_error:
        publisher.publish(channel, "lost?")
    async with AsyncPublisher(url, timeout_s=2) as apublisher:
        with pytest.raises(BrokerUnavailable):
            await apublisher.publish(channel, "lost?")
    assert sync_error.value.status == 503 and "nothing was published" in sync_error.value.reason


async def test_a_redis_without_the_gateways_functions_says_so(fresh_redis, channel):
    """No gateway ever loaded its functions there: 503 that says to start one."""
    async with AsyncPublisher(fresh_redis.url) as publisher:
        with pytest.raises(BrokerUnavailable, match="not loaded"):
            await publisher.publish(channel, "anyone?")


async def test_a_publish_whose_answer_is_lost_is_outcome_unknown_and_not_retried(
    fresh_redis, channel
):
    """Redis frozen after the call was sent: ``OutcomeUnknown``; it did happen later, exactly once."""
    server = GatewayServer(gateway_env("redis", fresh_redis)).start()
    try:
        url, prefix = fresh_redis.url, server.env["GATEWAY_REDIS_PREFIX"]
        with Publisher(url, prefix=prefix, timeout_s=0.5) as publisher:
            publisher.publish(channel, "first")  # connected, functions there
            fresh_redis.pause()
            try:
                with pytest.raises(OutcomeUnknown):
                    publisher.publish(channel, "second")
            finally:
                fresh_redis.resume()
        reader = await read_poll(server.url, channel, Reader(), 2, since="0", timeout=1)
        assert [m["data"] for m in reader.messages] == ["first", "second"]
    finally:
        server.close()


@pytest.fixture(scope="module")
def secured_node(redis_server: RedisServer) -> Iterator[GatewayServer]:
    server = GatewayServer(gateway_env("redis", redis_server, GATEWAY_SECRET=SECRET)).start()
    yield server
    server.close()


async def test_tokens_over_http_map_to_unauthorized_and_forbidden(secured_node, channel):
    """No token 401 ``Unauthorized``, a token without the right 403 ``Forbidden``, the right one publishes."""
    url = secured_node.url
    with Publisher(url) as anonymous, pytest.raises(Unauthorized, match="token required"):
        anonymous.publish(channel, "x")
    async with AsyncPublisher(url, token=mint([channel], [])) as reader_only:
        with pytest.raises(Forbidden, match="does not allow publishing"):
            await reader_only.publish(channel, "x")
    async with AsyncPublisher(url, token=mint([channel], [channel])) as allowed:
        assert (await allowed.publish(channel, "x")).count(":") == 1
