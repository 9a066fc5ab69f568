"""``POST /admin/disconnect``: revoke a user's access on every node (access.py).

The body is ``{"user", "channels"?: [glob patterns], "reason"?}``. The
revocation is published on the broker's control channel with the same
atomic call as a message: every node (this one too) hears it, ends that
user's connections (or just those channels) within a second and refuses
the user's tokens issued before it. Answers ``202 {"user", "channels",
"reason", "at", "id"}`` once the broker has it.

Admin routes need a token with ``"admin": true``; on an open gateway (no
``GATEWAY_SECRET``) they are open, like everything else.
"""

from __future__ import annotations

import time

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.access import announce
from gateway.errors import BadRequest, TooLarge
from gateway.revocations import revocation
from gateway.state import gateway_of

MAX_BODY_BYTES = 65536


async def admin_disconnect_endpoint(request: Request) -> JSONResponse:
    gateway = gateway_of(request)
    gateway.guard.check_origin(request)
    gateway.guard.authorize_admin(request)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise TooLarge(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("body is not JSON") from None
    record = revocation(fields, at=time.time())
    message = await announce(gateway.hub, record)
    answer = orjson.loads(record.encode()) | {"id": message.id}
    return JSONResponse(answer, status_code=202)
