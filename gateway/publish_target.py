"""What ``gateway.publisher``'s sync and async publishers share, I/O aside.

The target a URL names (Redis or HTTP), the checks made before anything is
sent (the HTTP route's own), and what each failure means: before the call
left (``BrokerUnavailable``: nothing was published), after it (``OutcomeUnknown``:
it may have been), or a refusal (the gateway's error class for its status).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from gateway.brokers.functions import missing_function, publish_call
from gateway.errors import (
    BadRequest,
    BrokerUnavailable,
    Forbidden,
    GatewayError,
    NotConfigured,
    NotServed,
    OutcomeUnknown,
    RateLimited,
    TooLarge,
    Unauthorized,
)
from gateway.message import check_publish

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


class Target:
    """What both publishers share: the URL's kind, the limits, and every check and mapping."""

    def __init__(
        self,
        url: str,
        token: str | None,
        prefix: str,
        max_message_bytes: int,
        timeout_s: float,
        ssl_verify: bool,
    ) -> None:
        scheme = url.partition("://")[0].lower()
        if scheme not in REDIS_SCHEMES + HTTP_SCHEMES:
            raise NotConfigured(
                f"publish to a redis://, rediss://, unix:// or http(s):// URL: {url!r}"
            )
        self.over_redis = scheme in REDIS_SCHEMES
        self.url = url if self.over_redis else url.rstrip("/")
        self.token = token
        self.prefix = prefix
        self.max_message_bytes = max_message_bytes
        self.timeout_s = timeout_s
        self.ssl_verify = ssl_verify
        self.redis_options: dict[str, Any] = {
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s,
        }
        if scheme == "rediss" and not ssl_verify:
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
        return channel, check_publish(channel, data, event, self.max_message_bytes)


@contextmanager
def over_http(url: str) -> Iterator[None]:
    """A failed HTTP call: before the request was sent, or after (when it may have happened)."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise _unreachable(f"the gateway at {url}", exc) from None
    except httpx.TransportError as exc:
        raise _unknown(exc) from None


@contextmanager
def reaching_redis() -> Iterator[None]:
    """Taking a connection, checked alive (redis-py reconnects one the server closed)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise _unreachable("Redis", exc) from None


@contextmanager
def sent_to_redis() -> Iterator[None]:
    """Once the call is on its way: Redis's refusal, or a connection lost (redis-py drops it)."""
    try:
        yield
    except ResponseError as exc:
        raise _redis_refusal(exc) from None
    except (RedisError, OSError) as exc:
        raise _unknown(exc) from None


@contextmanager
def sent_to_cluster() -> Iterator[None]:
    """A call through ``RedisCluster``: a refusal (``CLUSTERDOWN``, ``MOVED`` past its
    redirections included: nothing ran), else a connection failure of unknown outcome."""
    try:
        yield
    except ResponseError as exc:
        raise _redis_refusal(exc) from None
    except RedisClusterException as exc:
        raise _unreachable("the Redis Cluster", exc) from None
    except (RedisError, OSError) as exc:
        raise _unknown(exc) from None


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


def message_id(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def answer(response: httpx.Response) -> str:
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
