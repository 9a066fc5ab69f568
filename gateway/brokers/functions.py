"""The gateway's Redis Function library: its name, its source, and how to call it.

The one place that knows the ``FCALL`` lines, shared by the Redis broker and
anything else that publishes through Redis.

* **Versioned.** The library and its functions carry ``VERSION`` in their
  names (``gw_publish_v3``): two gateway versions on one Redis, as in a
  rolling deploy, each load and call their own and never replace the
  other's. Change ``gateway.lua`` and you must bump ``VERSION``: a unit test
  holds the source's digest (``SOURCE_SHA256``) and fails otherwise.
* **No settings inside.** Until v1 the history size was written into the
  library, so whichever node loaded last capped every channel for every
  node (and for ``redis-cli``). Now each call passes its cap; the function
  records the last one on the channel's own key so that a ``redis-cli``
  publish, which passes none, follows the deployment.
* **Every key declared.** A channel's three keys go in every call (a Redis
  Cluster routes and migrates by declared keys; they share one slot).
"""

from __future__ import annotations

import functools
import hashlib
import re
from importlib.resources import files

VERSION = "v3"
DEFAULT_CAP = 1000  # a redis-cli publish on a channel no gateway recorded a cap for
# The digest of gateway.lua as released under VERSION (tests/test_units.py compares).
SOURCE_SHA256 = "b20f1366bfd5fb082b81dbff3c319a1eed61cc1caf2940075a37145798a75102"


# What Redis answers when a function is not loaded ("ERR Function not found"
# in Redis 7 and 8; the older wording kept for other servers that speak FCALL).
MISSING_FUNCTION_ERRORS = ("Function not found", "No matching function")


def missing_function(error: Exception) -> bool:
    """Whether Redis refused a call because the gateway's functions are not loaded."""
    return any(text in str(error) for text in MISSING_FUNCTION_ERRORS)


def source_text() -> str:
    return files("gateway.brokers").joinpath("gateway.lua").read_text()


def source_digest() -> str:
    return hashlib.sha256(source_text().encode()).hexdigest()


@functools.lru_cache(maxsize=16)  # (asked at every publish; a process has one or two prefixes)
def function_prefix(prefix: str) -> str:
    """``GATEWAY_REDIS_PREFIX`` as a function-name part: non-word characters become ``_``."""
    return re.sub(r"\W", "_", prefix)


def library_name(prefix: str) -> str:
    return f"{function_prefix(prefix)}_gateway_{VERSION}"


def function_name(prefix: str, action: str) -> str:
    return f"{function_prefix(prefix)}_{action}_{VERSION}"


def database_of(url: str | None) -> int:
    """The database number a Redis URL names (``redis://host/7``, ``?db=7``); 0 by default."""
    if not url:
        return 0
    from redis.connection import parse_url

    return int(parse_url(url).get("db") or 0)  # type: ignore[no-untyped-call]


def deployment_prefix(prefix: str, url: str | None) -> str:
    """The prefix of every key, pub/sub name and function of a deployment: ``P``, or ``P@N``
    on database N (not 0) of a single Redis.

    Redis pub/sub ignores database numbers: two deployments on databases 7
    and 8 of one Redis, both under ``gw``, heard each other's messages live.
    Carrying the database in the prefix keeps their pub/sub names apart, and
    the Function publishes on the very name it is given (its first key), so
    a ``redis-cli -n 7`` publish names ``gw@7:{C}`` and reaches only them. A
    cluster has only database 0: its deployments are told apart by their
    prefix alone.
    """
    database = database_of(url)
    return prefix if database == 0 else f"{prefix}@{database}"


def channel_key(prefix: str, channel: str) -> str:
    """A channel's base key and pub/sub name; the hash tag keeps its keys in one slot."""
    return f"{prefix}:{{{channel}}}"


def channel_keys(prefix: str, channel: str) -> tuple[str, str, str]:
    """The pub/sub name (and cap key), the history stream, the epoch key."""
    base = channel_key(prefix, channel)
    return base, f"{base}:h", f"{base}:e"


def library_source(prefix: str) -> str:
    return (
        source_text()
        .replace("__LIBRARY__", library_name(prefix))
        .replace("__VERSION__", VERSION)
        .replace("__FN__", function_prefix(prefix))
        .replace("__PREFIX__", prefix)
        .replace("__DEFAULT_CAP__", str(DEFAULT_CAP))
    )


def publish_call(
    prefix: str, channel: str, event: str, data: str, cap: int | None = None
) -> tuple[str | int, ...]:
    """The command that publishes one message; Redis answers its id, ``<epoch>:<ms>-<seq>``.

    Without ``cap`` the function uses the one the gateways recorded on the
    channel (what ``redis-cli`` and ``gateway.publisher`` do).
    """
    keys = channel_keys(prefix, channel)
    extra = () if cap is None else (str(cap),)
    return ("FCALL", function_name(prefix, "publish"), len(keys), *keys, data, event, *extra)


def read_args(prefix: str, channel: str, mode: str, arg: str, count: int) -> tuple[str | int, ...]:
    keys = channel_keys(prefix, channel)
    return ("FCALL_RO", function_name(prefix, "read"), len(keys), *keys, mode, arg, count)


PRESENCE_VERSION = "v1"  # presence's own library (presence.lua, brokers/presence_redis.py)


def presence_library_name(prefix: str) -> str:
    return f"{function_prefix(prefix)}_presence_{PRESENCE_VERSION}"


def presence_library_source(prefix: str) -> str:
    fn = function_prefix(prefix)
    return (
        files("gateway.brokers")
        .joinpath("presence.lua")
        .read_text()
        .replace("__LIBRARY__", presence_library_name(prefix))
        .replace("__VERSION__", PRESENCE_VERSION)
        .replace("__FN__", fn)
        .replace("__PREFIX__", prefix)
    )
