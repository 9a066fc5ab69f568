"""The gateway's Redis Function calls, built in one place.

Publishing through Redis is one atomic ``FCALL``: append to the channel's
history stream and publish the message with its id (``gateway.lua``). The
gateway's ``RedisBroker`` and ``gateway.publisher`` both send it, so the
function's name, its declared keys and its arguments are known here only.
"""

from __future__ import annotations

import re

# What Redis answers when a function is not loaded ("ERR Function not found"
# in Redis 7 and 8; the older wording kept for other servers that speak FCALL).
MISSING_FUNCTION_ERRORS = ("Function not found", "No matching function")


def missing_function(error: Exception) -> bool:
    """Whether Redis refused a call because the gateway's functions are not loaded."""
    return any(text in str(error) for text in MISSING_FUNCTION_ERRORS)


def function_prefix(prefix: str) -> str:
    """The key prefix as a function name may carry it (letters, digits, ``_``)."""
    return re.sub(r"\W", "_", prefix)


def channel_key(prefix: str, channel: str) -> str:
    """A channel's base key and pub/sub name; the hash tag keeps its keys in one slot."""
    return f"{prefix}:{{{channel}}}"


def publish_call(prefix: str, channel: str, event: str, data: str) -> tuple[str | int, ...]:
    """The command that publishes one message; Redis answers its id, ``<epoch>:<ms>-<seq>``."""
    fn = f"{function_prefix(prefix)}_publish"
    return ("FCALL", fn, 1, channel_key(prefix, channel), data, event)
