"""Settings: the one place that reads ``os.environ``.

Every bound the gateway enforces is a field here, with a safe default, so a
deployment can see (and the README can list) every knob in one screen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.errors import ConfigError

POLL_TIMEOUT_CEILING_S = 29.0  # a Heroku-style router cuts a silent request at 30 s
ALL_TRANSPORTS = ("websocket", "sse", "poll")
# The server layer's reaches into other libraries (gateway/server/accelerations.py).
ALL_ACCELERATIONS = (
    "http-protocol",
    "http-direct",
    "ws-direct",
    "ws-lean",
    "accept-loop",
    "ws-frames",
)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    history_size: int = 1000
    heartbeat_s: float = 15.0
    poll_timeout_s: float = 25.0
    poll_limit_max: int = 1000
    max_message_bytes: int = 65536
    queue_size: int = 500
    max_connections: int = 20000
    transports: tuple[str, ...] = ALL_TRANSPORTS
    secret: str | None = None
    public_channels: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    shutdown_grace_s: float = 10.0
    redis_prefix: str = "gw"
    redis_ssl_verify: bool = True
    ws_max_frame_bytes: int = 131072
    publish_rate: float = 50.0
    stats_interval_s: float = 1.0
    # Read by gateway.publisher only: where a Python app publishes over HTTP.
    gateway_url: str | None = None
    gateway_token: str | None = None
    max_channels: int = 64
    presence_max_members: int = 1000
    revocation_ttl_s: float = 86400.0  # how long a revocation is remembered (access.py)
    header_timeout_s: float = 10.0
    accelerations: tuple[str, ...] = ALL_ACCELERATIONS  # those allowed on, when they fit

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        get = env.get
        return cls(
            redis_url=get("REDIS_URL") or None,
            history_size=_int(env, "GATEWAY_HISTORY_SIZE", 1000, minimum=1),
            heartbeat_s=_float(env, "GATEWAY_HEARTBEAT", 15.0, minimum=0.05),
            poll_timeout_s=min(
                _float(env, "GATEWAY_POLL_TIMEOUT", 25.0, minimum=0.0),
                POLL_TIMEOUT_CEILING_S,
            ),
            poll_limit_max=_int(env, "GATEWAY_POLL_LIMIT_MAX", 1000, minimum=1),
            max_message_bytes=_int(env, "GATEWAY_MAX_MESSAGE_BYTES", 65536, minimum=1),
            queue_size=_int(env, "GATEWAY_QUEUE_SIZE", 500, minimum=1),
            max_connections=_int(env, "GATEWAY_MAX_CONNECTIONS", 20000, minimum=1),
            transports=_transports(get("GATEWAY_TRANSPORTS", ",".join(ALL_TRANSPORTS))),
            secret=get("GATEWAY_SECRET") or None,
            public_channels=_csv(get("GATEWAY_PUBLIC_CHANNELS", "")),
            allowed_origins=_csv(get("GATEWAY_ALLOWED_ORIGINS", "")),
            shutdown_grace_s=_float(env, "GATEWAY_SHUTDOWN_GRACE", 10.0, minimum=0.0),
            redis_prefix=get("GATEWAY_REDIS_PREFIX", "gw") or "gw",
            redis_ssl_verify=_bool(env, "GATEWAY_REDIS_SSL_VERIFY", True),
            ws_max_frame_bytes=_int(env, "GATEWAY_WS_MAX_FRAME_BYTES", 131072, minimum=1024),
            publish_rate=_float(env, "GATEWAY_PUBLISH_RATE", 50.0, minimum=0.0),
            stats_interval_s=_float(env, "GATEWAY_STATS_INTERVAL", 1.0, minimum=0.1),
            gateway_url=get("GATEWAY_URL") or None,
            gateway_token=get("GATEWAY_TOKEN") or None,
            max_channels=_int(env, "GATEWAY_MAX_CHANNELS", 64, minimum=1),
            presence_max_members=_int(env, "GATEWAY_PRESENCE_MAX_MEMBERS", 1000, minimum=0),
            revocation_ttl_s=_float(env, "GATEWAY_REVOCATION_TTL", 86400.0, minimum=1.0),
            header_timeout_s=_float(env, "GATEWAY_HEADER_TIMEOUT", 10.0, minimum=0.1),
            accelerations=_accelerations(get("GATEWAY_ACCELERATIONS", "all")),
        )

    def serves(self, transport: str) -> bool:
        return transport in self.transports


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    return int(_number(env, name, default, minimum, int, "a whole number"))


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    return _number(env, name, default, minimum, float, "a number")


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    minimum: float,
    kind: Callable[[str], float],
    what: str,
) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if not value >= minimum:  # also refuses NaN
        raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _accelerations(raw: str) -> tuple[str, ...]:
    """``all`` (the default), ``none``, or the names allowed on."""
    if raw.strip() in ("all", ""):
        return ALL_ACCELERATIONS
    if raw.strip() == "none":
        return ()
    names = _csv(raw)
    unknown = [name for name in names if name not in ALL_ACCELERATIONS]
    if unknown:
        raise ConfigError(
            f"GATEWAY_ACCELERATIONS must be all, none or some of {','.join(ALL_ACCELERATIONS)};"
            f" unknown: {','.join(unknown)}"
        )
    return names


def _transports(raw: str) -> tuple[str, ...]:
    names = _csv(raw)
    unknown = [name for name in names if name not in ALL_TRANSPORTS]
    if unknown or not names:
        raise ConfigError(
            f"GATEWAY_TRANSPORTS must list some of {','.join(ALL_TRANSPORTS)}, got {raw!r}"
        )
    return names
