"""``POST /publish/{channel}``: the body is the data, ``?event=`` names it.

Checks run cheapest first and before the body is read: channel and event
names (400), the page's Origin (403: CORS keeps a foreign page from reading
the answer, not from sending a simple POST), the token (401/403), then the
size (413) while the body streams in.

``GATEWAY_PUBLISH_RATE`` is per WebSocket connection only. HTTP publishers
are mostly backends, often many behind one address, so a per-address limit
here would throttle the legitimate heavy publisher first; docs/transports.md
names nginx ``limit_req`` for the deployments that want one.

``LocalPublisher`` (``create_app().publisher``) is the same publish for the
app that mounts the gateway: no URL, no token (the caller is the app
itself, which also decides who may reach its own routes), the same checks
and errors, and the hub's call, as this route makes it.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.errors import BadRequest, BrokerUnavailable, TooLarge
from gateway.message import check_channel, check_event, check_publish
from gateway.state import NOT_STARTED, Gateway, gateway_of


async def publish_endpoint(request: Request) -> JSONResponse:
    gateway = gateway_of(request)
    channel = check_channel(request.path_params["channel"])
    event = check_event(request.query_params.get("event"))
    gateway.guard.check_origin(request)
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


class LocalPublisher:
    """Publish through the gateway running in this process: ``await app.publisher.publish(...)``.

    Raises what ``POST /publish/{channel}`` answers: ``BadRequest``,
    ``TooLarge``, and ``BrokerUnavailable`` while the gateway is not started
    or its broker is away.
    """

    def __init__(self, running: Callable[[], Gateway | None]) -> None:
        self._running = running

    async def publish(self, channel: str, data: str, event: str | None = None) -> str:
        """Publish one message; returns its id, the one every subscriber sees."""
        gateway = self._running()
        if gateway is None:
            raise BrokerUnavailable(NOT_STARTED)
        checked_event = check_publish(channel, data, event, gateway.settings.max_message_bytes)
        message = await gateway.hub.publish(channel, checked_event, data)
        return message.id
