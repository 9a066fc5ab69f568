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
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx
import redis
import redis.asyncio
from redis.exceptions import RedisError, ResponseError

from gateway.brokers.functions import missing_function, publish_call
from gateway.errors import (
    BadRequest,
    BrokerUnavailable,
    ConfigError,
    Forbidden,
    GatewayError,
    NotServed,
    OutcomeUnknown,
    RateLimited,
    TooLarge,
    Unauthorized,
)
from gateway.message import check_channel, check_event
from gateway.settings import Settings

__all__ = ["AsyncPublisher", "Publisher", "apublish", "publish"]

TIMEOUT_S = 5.0
REDIS_SCHEMES = ("redis", "rediss", "unix")
HTTP_SCHEMES = ("http", "https")
STATUS_ERRORS: dict[int, type[GatewayError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotServed,
    413: TooLarge,
    429: RateLimited,
    503: BrokerUnavailable,
}


class _Target:
    """What both publishers share: the URL's kind, the limits, and every check and mapping."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        scheme = url.partition("://")[0].lower()
        if scheme not in REDIS_SCHEMES + HTTP_SCHEMES:
            raise ConfigError(
                f"publish to a redis://, rediss://, unix:// or http(s):// URL: {url!r}"
            )
        self.url = url.rstrip("/")
        self.over_redis = scheme in REDIS_SCHEMES
        self.token: str | None = options["token"]
        self.prefix: str = options["prefix"]
        self.max_message_bytes: int = options["max_message_bytes"]
        self.timeout_s: float = options["timeout_s"]
        self.redis_options: dict[str, Any] = {
            "socket_connect_timeout": self.timeout_s,
            "socket_timeout": self.timeout_s,
        }
        if scheme == "rediss" and not options["ssl_verify"]:
            self.redis_options["ssl_cert_reqs"] = "none"

    def command(self, channel: str, data: str, event: str | None) -> tuple[str | int, ...]:
        """The Redis call, after the checks the HTTP route makes."""
        channel, event = self.check(channel, data, event)
        return publish_call(self.prefix, channel, event, data)

    def request(self, channel: str, data: str, event: str | None) -> dict[str, Any]:
        """``httpx`` arguments of the HTTP call, after the same checks."""
        channel, event = self.check(channel, data, event)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {
            "method": "POST",
            "url": f"{self.url}/publish/{channel}",
            "params": {"event": event},
            "content": data.encode(),
            "headers": {**headers, "Content-Type": "text/plain; charset=utf-8"},
        }

    def check(self, channel: str, data: str, event: str | None) -> tuple[str, str]:
        if not isinstance(data, str):
            raise TypeError("data must be str (a JSON payload travels as its text)")
        check_channel(channel)
        checked_event = check_event(event)
        try:
            size = len(data.encode())
        except UnicodeEncodeError:
            raise BadRequest("data is not valid UTF-8 text") from None
        if size > self.max_message_bytes:
            raise TooLarge(f"message larger than {self.max_message_bytes} bytes")
        return channel, checked_event


def _unreachable(where: str, exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"{where} is unreachable, nothing was published: {exc}")


def _unknown(exc: BaseException) -> OutcomeUnknown:
    return OutcomeUnknown(
        f"the connection failed after the publish was sent; it may have happened: {exc}"
    )


def _redis_refusal(exc: ResponseError) -> GatewayError:
    """Redis answered the call with an error: nothing was published."""
    if missing_function(exc):
        return BrokerUnavailable(
            "the gateway's Redis Functions are not loaded on this Redis: start a gateway on it"
            " (with the same GATEWAY_REDIS_PREFIX) first"
        )
    if "invalid event name" in str(exc):
        return BadRequest(str(exc))
    return BrokerUnavailable(f"Redis refused the publish: {exc}")


def _message_id(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _answer(response: httpx.Response) -> str:
    """A gateway's answer: the id of a 201, else the error class of its status."""
    if response.status_code == 201:
        return str(response.json()["id"])
    try:
        reason = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        reason = response.text[:200] or response.reason_phrase
    error = STATUS_ERRORS.get(response.status_code)
    if error is not None:
        raise error(reason)
    if response.status_code >= 500:
        raise OutcomeUnknown(f"the gateway answered {response.status_code}: {reason}")
    unexpected = GatewayError(f"the gateway answered {response.status_code}: {reason}")
    unexpected.status = response.status_code
    raise unexpected


class Publisher:
    """Publish from synchronous code (Flask, Django, a Celery task); thread-safe."""

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
        options: dict[str, Any] = {"token": token, "prefix": prefix}
        options |= {"max_message_bytes": max_message_bytes}
        options |= {"timeout_s": timeout_s, "ssl_verify": ssl_verify}
        self._target = _Target(url, options)
        self._redis: redis.Redis | None = None
        self._http: httpx.Client | None = None
        if self._target.over_redis:
            self._redis = redis.Redis.from_url(url, **self._target.redis_options)
        else:
            self._http = httpx.Client(timeout=timeout_s, verify=ssl_verify)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Publisher:
        """``GATEWAY_URL`` (with ``GATEWAY_TOKEN``) if set, else ``REDIS_URL``."""
        return cls(**_env_options(environ))

    def publish(self, channel: str, data: str, event: str | None = None) -> str:
        """Publish one message; returns its id."""
        if self._redis is not None:
            return self._call_redis(self._redis, self._target.command(channel, data, event))
        assert self._http is not None
        try:
            response = self._http.request(**self._target.request(channel, data, event))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _unreachable(f"the gateway at {self._target.url}", exc) from None
        except httpx.TransportError as exc:
            raise _unknown(exc) from None
        return _answer(response)

    @staticmethod
    def _call_redis(client: redis.Redis, command: tuple[str | int, ...]) -> str:
        pool = client.connection_pool
        try:
            conn = pool.get_connection()
        except (RedisError, OSError) as exc:
            raise _unreachable("Redis", exc) from None
        try:
            conn.send_command(*command)
            return _message_id(conn.read_response())
        except ResponseError as exc:
            raise _redis_refusal(exc) from None
        except (RedisError, OSError) as exc:
            conn.disconnect()
            raise _unknown(exc) from None
        finally:
            pool.release(conn)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPublisher:
    """Publish from asyncio code (FastAPI, Starlette); one event loop's, like its connections."""

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
        options: dict[str, Any] = {"token": token, "prefix": prefix}
        options |= {"max_message_bytes": max_message_bytes}
        options |= {"timeout_s": timeout_s, "ssl_verify": ssl_verify}
        self._target = _Target(url, options)
        self._redis: redis.asyncio.Redis | None = None
        self._http: httpx.AsyncClient | None = None
        if self._target.over_redis:
            self._redis = redis.asyncio.Redis.from_url(url, **self._target.redis_options)
        else:
            self._http = httpx.AsyncClient(timeout=timeout_s, verify=ssl_verify)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AsyncPublisher:
        """``GATEWAY_URL`` (with ``GATEWAY_TOKEN``) if set, else ``REDIS_URL``."""
        return cls(**_env_options(environ))

    async def publish(self, channel: str, data: str, event: str | None = None) -> str:
        """Publish one message; returns its id."""
        if self._redis is not None:
            return await self._call_redis(self._redis, self._target.command(channel, data, event))
        assert self._http is not None
        try:
            response = await self._http.request(**self._target.request(channel, data, event))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _unreachable(f"the gateway at {self._target.url}", exc) from None
        except httpx.TransportError as exc:
            raise _unknown(exc) from None
        return _answer(response)

    @staticmethod
    async def _call_redis(client: redis.asyncio.Redis, command: tuple[str | int, ...]) -> str:
        pool = client.connection_pool
        try:
            conn = await pool.get_connection()
        except (RedisError, OSError) as exc:
            raise _unreachable("Redis", exc) from None
        try:
            await conn.send_command(*command)
            return _message_id(await conn.read_response())
        except ResponseError as exc:
            raise _redis_refusal(exc) from None
        except (RedisError, OSError) as exc:
            await conn.disconnect()
            raise _unknown(exc) from None
        finally:
            await pool.release(conn)

    async def aclose(self) -> None:
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
    settings = Settings.from_env(environ)
    url = settings.gateway_url or settings.redis_url
    if not url:
        raise ConfigError("set GATEWAY_URL (a gateway's base URL) or REDIS_URL (its Redis)")
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
