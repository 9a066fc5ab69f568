"""Publish from a Python app (Flask, Django, Celery, FastAPI) without knowing the wire.

    from gateway.publisher import Publisher, AsyncPublisher, publish, apublish

    publisher = Publisher("redis://localhost:6379/0")      # or "http://gateway:8000"
    message_id = publisher.publish("chat:lobby", '{"text": "hi"}', event="chat")

    async with AsyncPublisher("redis://localhost:6379/0") as publisher:
        message_id = await publisher.publish("chat:lobby", "hi")

    message_id = publish("chat:lobby", "hi")          # GATEWAY_URL, else REDIS_URL
    message_id = await apublish("chat:lobby", "hi")

Decisions:

* The URL's scheme picks the path: ``redis://``, ``rediss://``, ``unix://``
  call the gateway's Redis Function directly (the gateway's own atomic
  call, built by ``gateway.brokers.functions``; ``prefix`` must be the
  gateway's ``GATEWAY_REDIS_PREFIX``); ``http://``, ``https://`` post to a
  gateway's ``/publish/{channel}`` (with a mount prefix in the URL if it is
  mounted), with ``token`` as ``Authorization: Bearer``.
* A Redis URL that names a node of a Redis Cluster (asked once, by ``INFO
  cluster``, when the publisher is made) is published to through redis-py's
  ``RedisCluster``, which sends the call to the primary of the channel's
  slot and follows ``MOVED``/``ASK``/``TRYAGAIN``. It retries nothing else:
  ``CLUSTERDOWN`` (a failover under way) is ``BrokerUnavailable``; a
  connection lost or timed out is ``OutcomeUnknown``, as on a single Redis.
* Checked before anything is sent, as the HTTP route checks: channel and
  event names (``BadRequest``), the data's size in UTF-8 bytes against
  ``max_message_bytes`` (``TooLarge``). A gateway's refusals come back as
  the same classes (``Unauthorized``, ``Forbidden``, ``TooLarge``, ...),
  each a ``GatewayError`` with ``status`` and ``reason``.
* Nothing is published by half, and nothing silently: one atomic call.
  Failing to connect is ``BrokerUnavailable`` (nothing was sent). Losing
  the connection after the call was sent is ``OutcomeUnknown``: it may
  have been published, so it is never retried automatically (a retry could
  publish twice).
* ``publish()`` keeps one ``Publisher`` per process (re-made after a fork,
  as in Celery or gunicorn workers); it is thread-safe. ``apublish()``
  opens and closes an ``AsyncPublisher`` per call, since an asyncio client
  belongs to one event loop: for many publishes, keep an ``AsyncPublisher``
  in the app's lifespan.
* No usable URL (``GATEWAY_URL`` and ``REDIS_URL`` unset, or a bad one) is
  ``NotConfigured``, a ``ConfigError`` that is also a ``GatewayError``
  (500): ``publish()`` makes its publisher on first use, inside a request
  whose ``except GatewayError`` answers it. An app that mounts the gateway
  needs no URL: ``create_app().publisher`` publishes in-process
  (``gateway.publish.LocalPublisher``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx
import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry

from gateway.brokers import is_cluster
from gateway.errors import ConfigError, NotConfigured
from gateway.publish_target import (
    TIMEOUT_S,
    Target,
    answer,
    message_id,
    over_http,
    reaching_redis,
    sent_to_cluster,
    sent_to_redis,
)
from gateway.settings import Settings

__all__ = ["AsyncPublisher", "Publisher", "apublish", "publish"]


class _Publisher:
    """The arguments both publishers take; each opens its own kind of client."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        prefix: str = "gw",
        max_message_bytes: int = 65536,
        timeout_s: float = TIMEOUT_S,
        ssl_verify: bool = True,
    ) -> None:
        self._target = Target(url, token, prefix, max_message_bytes, timeout_s, ssl_verify)
        self._connect(self._target)

    def _connect(self, target: Target) -> None:
        raise NotImplementedError

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """``GATEWAY_URL`` (with ``GATEWAY_TOKEN``) if set, else ``REDIS_URL``."""
        return cls(**_env_options(environ))


class Publisher(_Publisher):
    """Publish from synchronous code (Flask, Django, a Celery task); thread-safe."""

    _redis: redis.Redis | None = None
    _cluster: redis.RedisCluster | None = None
    _http: httpx.Client | None = None

    def _connect(self, target: Target) -> None:
        if target.over_redis and is_cluster(target.url, ssl_verify=target.ssl_verify):
            retry = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
            self._cluster = redis.RedisCluster.from_url(
                target.url, retry=retry, **target.redis_options
            )
        elif target.over_redis:
            self._redis = redis.Redis.from_url(target.url, **target.redis_options)
        else:
            self._http = httpx.Client(timeout=target.timeout_s, verify=target.ssl_verify)

    def publish(self, channel: str, data: str, event: str | None = None) -> str:
        """Publish one message; returns its id."""
        if self._cluster is not None:
            command = self._target.command(channel, data, event)
            with sent_to_cluster():
                return message_id(self._cluster.execute_command(*command))
        if self._redis is None:
            assert self._http is not None
            with over_http(self._target.url):
                response = self._http.request(**self._target.request(channel, data, event))
            return answer(response)
        command = self._target.command(channel, data, event)
        pool = self._redis.connection_pool
        with reaching_redis():
            conn = pool.get_connection()
        try:
            with sent_to_redis():
                conn.send_command(*command)
                return message_id(conn.read_response())
        finally:
            pool.release(conn)

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
        if self._redis is not None:
            self._redis.close()
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher(_Publisher):
    """Publish from asyncio code (FastAPI, Starlette); one event loop's, like its connections."""

    _redis: redis.asyncio.Redis | None = None
    _cluster: redis.asyncio.RedisCluster | None = None
    _http: httpx.AsyncClient | None = None

    def _connect(self, target: Target) -> None:
        if target.over_redis and is_cluster(target.url, ssl_verify=target.ssl_verify):
            retry = redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0)
            self._cluster = redis.asyncio.RedisCluster.from_url(
                target.url, retry=retry, **target.redis_options
            )
        elif target.over_redis:
            self._redis = redis.asyncio.Redis.from_url(target.url, **target.redis_options)
        else:
            self._http = httpx.AsyncClient(timeout=target.timeout_s, verify=target.ssl_verify)

    async def publish(self, channel: str, data: str, event: str | None = None) -> str:
        """Publish one message; returns its id."""
        if self._cluster is not None:
            command = self._target.command(channel, data, event)
            with sent_to_cluster():
                return message_id(await self._cluster.execute_command(*command))
        if self._redis is None:
            assert self._http is not None
            with over_http(self._target.url):
                response = await self._http.request(**self._target.request(channel, data, event))
            return answer(response)
        command = self._target.command(channel, data, event)
        pool = self._redis.connection_pool
        with reaching_redis():
            conn = await pool.get_connection()
        try:
            with sent_to_redis():
                await conn.send_command(*command)
                return message_id(await conn.read_response())
        finally:
            await pool.release(conn)

    async def aclose(self) -> None:
        if self._cluster is not None:
            await self._cluster.aclose()
        if self._redis is not None:
            await self._redis.aclose()
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _env_options(environ: Mapping[str, str] | None) -> dict[str, Any]:
    """A publisher's arguments from the gateway's own settings (``Settings.from_env``)."""
    try:
        settings = Settings.from_env(environ)
    except ConfigError as exc:
        raise NotConfigured(str(exc)) from None
    url = settings.gateway_url or settings.redis_url
    if not url:
        raise NotConfigured(
            "set GATEWAY_URL (a gateway's base URL) or REDIS_URL (its Redis) to publish,"
            " or publish through a gateway mounted in this app (create_app().publisher)"
        )
    return {
        "url": url,
        "token": settings.gateway_token if settings.gateway_url else None,
        "prefix": settings.redis_prefix,
        "max_message_bytes": settings.max_message_bytes,
        "ssl_verify": settings.redis_ssl_verify,
    }


_default: tuple[int, Publisher] | None = None
_default_lock = threading.Lock()


def publish(channel: str, data: str, event: str | None = None) -> str:
    """Publish with this process's ``Publisher.from_env()``; returns the id."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), Publisher.from_env())
        publisher = _default[1]
    return publisher.publish(channel, data, event)


async def apublish(channel: str, data: str, event: str | None = None) -> str:
    """Publish with an ``AsyncPublisher.from_env()`` opened for this call; returns the id."""
    async with AsyncPublisher.from_env() as publisher:
        return await publisher.publish(channel, data, event)
