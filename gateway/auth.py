"""Tokens -> rights, and the Origin check.

Without ``GATEWAY_SECRET`` the gateway is open (and says so at start). With
it, a client presents an HS256 JWT whose ``sub_channels`` and ``pub_channels``
claims are lists of glob patterns (``chat:*``) and whose ``exp`` is required:
a token that never expires is refused. ``EventSource`` cannot set headers, so
the token is taken from ``Authorization: Bearer`` or ``?token=``.

Decisions:

* The secret must be at least 32 bytes (RFC 7518 asks for a key as long as
  the hash): a short HS256 key can be brute-forced offline from one token.
* ``exp`` is checked when a connection opens and again at every publish on
  it; an open connection is ended at its ``exp`` by ``access.py`` (one
  sweep a quarter second for every connection, not a timer each).
* ``iat`` (issued at, may be fractional) dates a token against a
  revocation (access.py): a token issued before a revocation of its user
  is refused (403 ``revoked``) for what was revoked; a token without
  ``iat`` counts as issued before every revocation. ``admin: true`` opens
  the admin routes.
* Presence (presence.py): ``sub`` names the user, ``info`` (optional) is a
  JSON object of at most ``MAX_INFO_BYTES`` that others see beside the name.
  Either malformed is a 401 with the reason: the token is what is wrong.
* A token verified once is remembered until its ``exp`` (``TOKENS_KEPT``
  at most, by a digest of it: the token itself is not kept). A long-poll
  client presents its token with every request, and an HS256 check with
  PyJWT is ~30 µs, more than the rest of a poll; a token that fails is
  checked again each time.
* Same origin means same scheme, host and port, the port defaulted from the
  scheme. Behind a TLS-terminating proxy the scheme is what uvicorn's
  ``--proxy-headers`` took from ``X-Forwarded-Proto`` and the host is the
  ``Host`` header the proxy passed on.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import jwt
import orjson
from starlette.requests import HTTPConnection

from gateway.errors import ConfigError, Forbidden, Unauthorized
from gateway.revocations import Revocations
from gateway.settings import Settings

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
MAX_USER_CHARS = 128
MAX_INFO_BYTES = 1024
TOKENS_KEPT = 4096
DEFAULT_PORTS = {"http": 80, "https": 443}
HTTP_SCHEME = {"ws": "http", "wss": "https", "http": "http", "https": "https"}

Origin = tuple[str, str, int]


@dataclass(frozen=True)
class Rights:
    sub: tuple[str, ...]
    pub: tuple[str, ...]
    expires_at: float | None = None
    user: str | None = None  # the token's ``sub``: who this is, for presence
    info: str | None = None  # the token's ``info`` object, as JSON text
    issued_at: float | None = None  # the token's ``iat``: dates it against revocations
    admin: bool = False  # the token's ``admin`` claim: the admin routes are open to it

    def may_read(self, channel: str) -> bool:
        return _matches(channel, self.sub)

    def may_publish(self, channel: str) -> bool:
        return _matches(channel, self.pub)


OPEN = Rights(sub=("*",), pub=("*",))
NONE = Rights(sub=(), pub=())


def matches(channel: str, patterns: Iterable[str]) -> bool:
    """Whether ``channel`` matches one of the glob ``patterns``."""
    return _matches(channel, patterns)


def _matches(channel: str, patterns: Iterable[str]) -> bool:
    if isinstance(patterns, tuple) and "*" in patterns:
        return True  # (any name: 2 µs of fnmatch saved on every publish of an open gateway)
    return any(fnmatch.fnmatchcase(channel, pattern) for pattern in patterns)


class Guard:
    def __init__(self, settings: Settings) -> None:
        if settings.secret is not None and len(settings.secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"GATEWAY_SECRET must be at least {MIN_SECRET_BYTES} bytes long")
        self.secret = settings.secret
        self.open = settings.secret is None  # (read on every request: an attribute, not a property)
        self.public = settings.public_channels
        self.any_origin = "*" in settings.allowed_origins
        self.origins = {_origin(o) for o in settings.allowed_origins if o != "*"} - {None}
        self._verified: dict[bytes, Rights] = {}  # by the token's digest, until its exp
        self.revocations = Revocations(settings.revocation_ttl_s)  # fed by access.py

    def rights(self, conn: HTTPConnection) -> Rights:
        """The caller's rights; ``NONE`` when it brought no token."""
        if self.secret is None:
            return OPEN
        token = _token_of(conn)
        return NONE if token is None else self.decode(token)

    def decode(self, token: str) -> Rights:
        """The token's rights, verified (once until it expires); else 401."""
        key = hashlib.blake2b(token.encode(), digest_size=16).digest()
        known = self._verified.get(key)
        if known is not None and known.expires_at is not None and known.expires_at > time.time():
            return known
        rights = self._verify(token)
        if len(self._verified) >= TOKENS_KEPT:
            self._verified.clear()
        self._verified[key] = rights
        return rights

    def _verify(self, token: str) -> Rights:
        assert self.secret is not None
        try:
            claims = jwt.decode(
                token, self.secret, algorithms=[ALGORITHM], options={"require": ["exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        return Rights(
            sub=_patterns(claims, "sub_channels"),
            pub=_patterns(claims, "pub_channels"),
            expires_at=float(claims["exp"]),
            user=_user(claims),
            info=_info(claims),
            issued_at=_issued_at(claims),
            admin=claims.get("admin") is True,
        )

    def authorize_read(self, conn: HTTPConnection, channel: str) -> Rights:
        """The caller's rights, when it may read ``channel``; else 401 or 403."""
        return self.authorize_read_all(conn, (channel,))

    def authorize_read_all(self, conn: HTTPConnection, channels: Sequence[str]) -> Rights:
        """The caller's rights, when it may read every one of ``channels``; else 401 or 403."""
        if self.secret is None:
            return OPEN
        token = _token_of(conn)
        rights = NONE if token is None else self.decode(token)
        self.check_read(rights, channels)
        return rights

    def check_read(self, rights: Rights, channels: Sequence[str]) -> None:
        """401 or 403 (naming every refused channel) unless ``rights`` may read them all."""
        if self.secret is None:
            return
        private = [channel for channel in channels if not _matches(channel, self.public)]
        if not private:
            return
        if rights is NONE:
            raise Unauthorized("token required")
        if rights.expires_at is not None and rights.expires_at <= time.time():
            raise Unauthorized("token expired")  # a token checked again on an open connection
        refused = [channel for channel in private if not rights.may_read(channel)]
        if refused:
            raise Forbidden("token does not allow reading " + ", ".join(map(repr, refused)))
        self.revocations.check(rights, private)

    def authorize_publish(self, rights: Rights, channel: str) -> None:
        if rights is NONE:
            raise Unauthorized("token required")
        if rights.expires_at is not None and rights.expires_at <= time.time():
            raise Unauthorized("token expired")
        if not rights.may_publish(channel):
            raise Forbidden(f"token does not allow publishing to {channel!r}")
        self.revocations.check(rights, (channel,))

    def authorize_admin(self, conn: HTTPConnection) -> None:
        """401 or 403 unless the caller is an admin (anyone, on an open gateway)."""
        if self.secret is None:
            return
        token = _token_of(conn)
        if token is None:
            raise Unauthorized("token required")
        rights = self.decode(token)
        if rights.expires_at is not None and rights.expires_at <= time.time():
            raise Unauthorized("token expired")
        if not rights.admin:
            raise Forbidden('the admin routes need a token with "admin": true')

    def origin_allowed(self, conn: HTTPConnection) -> bool:
        """No Origin (not a browser) is allowed; else a listed origin or the same one."""
        origin = conn.headers.get("origin")
        if origin is None or self.any_origin:
            return True
        key = _origin(origin)
        return key is not None and (key in self.origins or key == _own_origin(conn))

    def check_origin(self, conn: HTTPConnection) -> None:
        """403 for a browser page of a foreign origin."""
        if not self.origin_allowed(conn):
            origin = conn.headers.get("origin", "")[:80]
            raise Forbidden(f"origin {origin!r} not allowed (see GATEWAY_ALLOWED_ORIGINS)")

    def mint(
        self,
        sub: Iterable[str],
        pub: Iterable[str],
        ttl_s: float,
        user: str | None = None,
        admin: bool = False,
    ) -> str:
        """A token; ``iat`` to the millisecond, so one minted just after a revocation works."""
        assert self.secret is not None, "GATEWAY_SECRET is not set"
        now = time.time()
        claims: dict[str, object] = {"sub_channels": list(sub), "pub_channels": list(pub)}
        claims["exp"] = int(now + ttl_s)
        claims["iat"] = round(now, 3)
        if user is not None:
            claims["sub"] = user
        if admin:
            claims["admin"] = True
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)


def _origin(text: str) -> Origin | None:
    """``(scheme, host, port)`` of an origin, the port defaulted; None if not http(s)."""
    try:
        parts = urlsplit(text.strip().rstrip("/"))
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname, port or DEFAULT_PORTS[scheme]


def _own_origin(conn: HTTPConnection) -> Origin | None:
    """The origin this request was addressed to: its scheme and ``Host`` header."""
    scheme = HTTP_SCHEME.get(conn.url.scheme, "http")
    host = conn.headers.get("host")
    return _origin(f"{scheme}://{host}") if host else None


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


def _user(claims: Mapping[str, object]) -> str | None:
    user = claims.get("sub")
    if user is None:
        return None
    if not isinstance(user, str) or not 0 < len(user) <= MAX_USER_CHARS:
        raise Unauthorized(f"invalid token: sub must be a string of 1-{MAX_USER_CHARS} characters")
    return user


def _issued_at(claims: Mapping[str, object]) -> float | None:
    issued = claims.get("iat")  # (PyJWT checked it is a number, if present)
    return float(issued) if isinstance(issued, int | float) else None


def _info(claims: Mapping[str, object]) -> str | None:
    info = claims.get("info")
    if info is None:
        return None
    if not isinstance(info, dict):
        raise Unauthorized("invalid token: info must be a JSON object")
    text = orjson.dumps(info)
    if len(text) > MAX_INFO_BYTES:
        raise Unauthorized(f"invalid token: info is {len(text)} bytes, at most {MAX_INFO_BYTES}")
    return text.decode()
