"""Domain errors: each carries the HTTP status, WebSocket close code and reason.

They are raised where the condition is found and turned into a response or a
close frame in one place per transport (``gateway.app`` for HTTP).
"""

from __future__ import annotations


class ConfigError(Exception):
    """A setting from the environment is unusable; raised at start."""


class GatewayError(Exception):
    status = 400
    close_code = 1008
    retry_after: int | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401


class Forbidden(GatewayError):
    status = 403


class NotServed(GatewayError):
    status = 404


class UriTooLong(GatewayError):
    status = 414


class HeaderTooLarge(GatewayError):
    status = 431


class TooLarge(GatewayError):
    status = 413
    close_code = 1009


class RateLimited(GatewayError):
    status = 429
    close_code = 1008
    retry_after = 1


class Overloaded(GatewayError):
    """Too many connections on this process: try another, or later."""

    status = 503
    close_code = 1013
    retry_after = 5


STOPPING = "the broker is stopping; the publish may have happened"


class BrokerUnavailable(GatewayError):
    """The broker cannot be reached; nothing was published."""

    status = 503
    close_code = 1011
    retry_after = 2


class OutcomeUnknown(GatewayError):
    """A publish was sent, and its answer never came: it may or may not have happened.

    ``gateway.publisher`` never retries one (a retry could publish twice):
    the caller knows whether a duplicate is worse than a loss.
    """

    status = 504
    close_code = 1011


class NotConfigured(ConfigError, GatewayError):
    """``gateway.publisher`` has no usable URL (``GATEWAY_URL``/``REDIS_URL`` unset or wrong).

    Both a ``ConfigError`` and a ``GatewayError``: a route that publishes and
    catches ``GatewayError`` answers 500 with this reason instead of a traceback.
    """

    status = 500
    close_code = 1011
