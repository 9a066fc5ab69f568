"""Tokens -> rights, and the Origin check.

Without ``GATEWAY_SECRET`` the gateway is open (and says so at start). With
it, a client presents an HS256 JWT whose ``sub_channels`` and ``pub_channels``
claims are lists of glob patterns (``chat:*``). ``EventSource`` cannot set
headers, so the token is taken from ``Authorization: Bearer`` or ``?token=``.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import jwt
from starlette.requests import HTTPConnection

from gateway.errors import Forbidden, Unauthorized
from gateway.settings import Settings

ALGORITHM = "HS256"


@dataclass(frozen=True)
class Rights:
    sub: tuple[str, ...]
    pub: tuple[str, ...]

    def may_read(self, channel: str) -> bool:
        return _matches(channel, self.sub)

    def may_publish(self, channel: str) -> bool:
        return _matches(channel, self.pub)


OPEN = Rights(sub=("*",), pub=("*",))
NONE = Rights(sub=(), pub=())


def _matches(channel: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(channel, pattern) for pattern in patterns)


class Guard:
    def __init__(self, settings: Settings) -> None:
        self.secret = settings.secret
        self.public = settings.public_channels
        self.origins = settings.allowed_origins

    @property
    def open(self) -> bool:
        return self.secret is None

    def rights(self, conn: HTTPConnection) -> Rights:
        """The caller's rights; ``NONE`` when it brought no token."""
        if self.secret is None:
            return OPEN
        token = _token_of(conn)
        return NONE if token is None else self.decode(token)

    def decode(self, token: str) -> Rights:
        assert self.secret is not None
        try:
            claims = jwt.decode(token, self.secret, algorithms=[ALGORITHM])
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        return Rights(sub=_patterns(claims, "sub_channels"), pub=_patterns(claims, "pub_channels"))

    def authorize_read(self, conn: HTTPConnection, channel: str) -> Rights:
        """The caller's rights, when it may read ``channel``; else 401 or 403."""
        if self.secret is None:
            return OPEN
        public = _matches(channel, self.public)
        token = _token_of(conn)
        if token is None:
            if public:
                return NONE
            raise Unauthorized("token required")
        rights = self.decode(token)
        if public or rights.may_read(channel):
            return rights
        raise Forbidden(f"token does not allow reading {channel!r}")

    def authorize_publish(self, rights: Rights, channel: str) -> None:
        if not rights.may_publish(channel):
            raise _missing(rights, f"token does not allow publishing to {channel!r}")

    def origin_allowed(self, conn: HTTPConnection) -> bool:
        """No Origin (not a browser) is allowed; else same origin or a listed one."""
        origin = conn.headers.get("origin")
        if origin is None or "*" in self.origins or origin in self.origins:
            return True
        host = conn.headers.get("host", "")
        return origin.split("://", 1)[-1] == host

    def mint(self, sub: Iterable[str], pub: Iterable[str], ttl_s: int) -> str:
        assert self.secret is not None, "GATEWAY_SECRET is not set"
        claims = {"sub_channels": list(sub), "pub_channels": list(pub), "exp": int(time.time()) + ttl_s}
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)


def _token_of(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return conn.query_params.get("token") or None


def _patterns(claims: Mapping[str, object], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise Unauthorized(f"invalid token: {name} must be a list of patterns")
    return tuple(value)


def _missing(rights: Rights, reason: str) -> Unauthorized | Forbidden:
    if rights is NONE:
        return Unauthorized("token required")
    return Forbidden(reason)
