"""Who a connection is to presence: its ``Visit`` (identity, and whether it listens).

The identity comes from the token (``sub``, ``info``: auth.py), or on an
open gateway from ``?user=``; with ``GATEWAY_SECRET`` set, ``?user=`` is a
400 (anyone could be anyone). ``?presence=1`` asks join/leave events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.auth import MAX_USER_CHARS, Rights
from gateway.errors import BadRequest


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    info: str = "null"  # the info object as JSON text


@dataclass(frozen=True, slots=True)
class Visit:
    """What a connection is to presence: who (None: anonymous) and whether it wants events."""

    identity: Identity | None
    listen: bool = False


ANONYMOUS = Visit(None)


def visit_of(query: Mapping[str, str], rights: Rights, open_gateway: bool) -> Visit:
    """A request's ``Visit``: the token's ``sub``/``info``, or ``?user=`` on an open gateway."""
    listen = query.get("presence", "").lower() in ("1", "true", "yes")
    asked = query.get("user")
    if asked is not None:
        if not open_gateway:
            raise BadRequest("?user= is for an open gateway only: the token's sub names you")
        return Visit(Identity(check_user(asked)), listen)
    if rights.user is None:
        return Visit(None, True) if listen else ANONYMOUS  # the common case: no allocation
    return Visit(Identity(rights.user, rights.info or "null"), listen)


def check_user(user: str) -> str:
    if not 0 < len(user) <= MAX_USER_CHARS or not user.isprintable():
        raise BadRequest(f"user must be 1-{MAX_USER_CHARS} printable characters")
    return user
