"""A WebSocket's token and its refresh: ``{"type":"refresh","token"}`` -> ``refreshed``.

A socket keeps the rights it was opened with until its token's ``exp``
(access.py ends it then, 4001). Before that the client may hand a new
token on the open socket; it takes over when it is valid, names the same
``sub`` and allows every channel the socket carries (revocations
included). Otherwise the answer is an error frame and the old ``exp``
stands. A socket opened without a token has none to refresh.

SSE and long-poll refresh by reconnecting with the new token and their
cursor: nothing is lost (tests/test_access.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.access import Grant
from gateway.auth import Guard, Rights
from gateway.errors import BadRequest, Forbidden


class Token:
    """A socket's current rights and the grant that ends it at their ``exp``."""

    __slots__ = ("grant", "rights")

    def __init__(self, rights: Rights, grant: Grant | None) -> None:
        self.rights = rights
        self.grant = grant

    def refresh(self, guard: Guard, frame: dict[str, Any], channels: Sequence[str]) -> str:
        """The ``refreshed`` answer once the frame's token took over; else a ``GatewayError``."""
        token = frame.get("token")
        if not isinstance(token, str) or not token:
            raise BadRequest("refresh frame without a token")
        if guard.open or self.grant is None:
            raise BadRequest("this connection was opened without a token: none to refresh")
        rights = guard.decode(token)  # 401 when invalid or expired
        if rights.user != self.rights.user:
            raise Forbidden("a refreshed token must name the same sub")
        guard.check_read(rights, channels)  # 403 for a channel not allowed, or revoked
        self.rights = rights
        self.grant.renew(rights)
        exp = rights.expires_at
        shown = int(exp) if exp is not None and exp.is_integer() else exp
        return orjson.dumps({"type": "refreshed", "exp": shown}).decode()
