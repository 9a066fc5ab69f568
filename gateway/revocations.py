"""Revocations: the rights taken away from a user, and which tokens they refuse.

A revocation names a user (a token's ``sub``), optionally channel patterns
(only those channels), a reason, and when it was made (``at``, the
revoker's clock). A token of that user issued before ``at`` (its ``iat``;
a token without ``iat`` counts as issued before every revocation) is
refused 403 ``revoked`` for what was revoked; one issued after works.

Each is remembered ``GATEWAY_REVOCATION_TTL`` seconds (default a day): set
it to at least your longest token lifetime, since a token issued before a
revocation that outlives it is accepted again once it is forgotten.

This module is the record and the check; access.py carries records between
nodes (the broker's control channel) and ends the open connections.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from gateway.errors import BadRequest, Forbidden

MAX_USER_CHARS = 128
MAX_PATTERNS = 64
MAX_PATTERN_CHARS = 256
MAX_REASON_CHARS = 100  # a WebSocket close reason is at most 123 bytes
REVOKED = "revoked"


class Dated(Protocol):
    """A token's rights as a revocation sees them (``auth.Rights``): whose, and issued when."""

    @property
    def user(self) -> str | None: ...

    @property
    def issued_at(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Revocation:
    user: str
    patterns: tuple[str, ...] | None  # None: every channel
    reason: str
    at: float

    def covers(self, channel: str) -> bool:
        return self.patterns is None or any(
            fnmatch.fnmatchcase(channel, pattern) for pattern in self.patterns
        )

    def encode(self) -> str:
        """The record as the control channel carries it (JSON)."""
        fields = {"user": self.user, "channels": self.patterns, "reason": self.reason}
        return orjson.dumps({**fields, "at": self.at}).decode()


def revocation(fields: Any, at: float | None = None) -> Revocation:
    """A revocation from ``{"user", "channels"?, "reason"?}`` (and ``at``), or a 400 saying why."""
    if not isinstance(fields, dict):
        raise BadRequest('expected a JSON object {"user", "channels"?, "reason"?}')
    user = fields.get("user")
    if not isinstance(user, str) or not 0 < len(user) <= MAX_USER_CHARS:
        raise BadRequest(f"user must be a string of 1-{MAX_USER_CHARS} characters")
    patterns = fields.get("channels")
    if patterns is not None:
        if (
            not isinstance(patterns, list)
            or not 0 < len(patterns) <= MAX_PATTERNS
            or not all(isinstance(p, str) and 0 < len(p) <= MAX_PATTERN_CHARS for p in patterns)
        ):
            raise BadRequest(f"channels must be a list of 1-{MAX_PATTERNS} glob patterns")
        patterns = tuple(patterns)
    reason = fields.get("reason")
    if reason is None:
        reason = REVOKED
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_CHARS:
        raise BadRequest(f"reason must be a string of 1-{MAX_REASON_CHARS} characters")
    if not reason.isprintable():  # it goes on an SSE data line and in a close frame
        raise BadRequest("reason must be printable text (no line breaks)")
    when = fields.get("at") if at is None else at
    if not isinstance(when, int | float) or isinstance(when, bool):
        when = time.time()
    return Revocation(user, patterns, reason, float(when))


class Revocations:
    """The revocations heard, by user; each forgotten ``ttl_s`` after it was made."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._by_user: dict[str, list[Revocation]] = {}

    def add(self, record: Revocation) -> bool:
        """Remember ``record``; False when it is too old to matter (or known already)."""
        if record.at + self.ttl_s <= time.time():
            return False
        known = self._by_user.setdefault(record.user, [])
        if record in known:
            return False
        known.append(record)
        return True

    def check(self, rights: Dated, channels: Sequence[str]) -> None:
        """403 ``revoked`` when a revocation newer than the token covers one of ``channels``."""
        if not self._by_user or rights.user is None:
            return  # (the common case: nothing revoked)
        known = self._by_user.get(rights.user)
        if not known:
            return
        issued = rights.issued_at if rights.issued_at is not None else float("-inf")
        now = time.time()
        live = [r for r in known if r.at + self.ttl_s > now]
        if len(live) != len(known):
            self._forget(rights.user, live)
        for record in live:
            if issued < record.at and any(record.covers(channel) for channel in channels):
                raise Forbidden(REVOKED)

    def _forget(self, user: str, live: list[Revocation]) -> None:
        if live:
            self._by_user[user] = live
        else:
            del self._by_user[user]
