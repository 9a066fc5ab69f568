"""``POST /publish/{channel}``: the body is the data, ``?event=`` names it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.errors import BadRequest, TooLarge
from gateway.message import check_channel, check_event
from gateway.state import gateway_of


async def publish_endpoint(request: Request) -> JSONResponse:
    gateway = gateway_of(request)
    channel = check_channel(request.path_params["channel"])
    event = check_event(request.query_params.get("event"))
    gateway.guard.authorize_publish(gateway.guard.rights(request), channel)
    body = await _read_body(request, gateway.settings.max_message_bytes)
    try:
        data = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8 text") from None
    message = await gateway.hub.publish(channel, event, data)
    return JSONResponse({"id": message.id, "channel": channel}, status_code=201)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"message larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"message larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
