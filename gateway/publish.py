"""``POST /publish/{channel}``: the body is the data, ``?event=`` names it.

Checks run cheapest first and before the body is read: channel and event
names (400), the page's Origin (403: CORS keeps a foreign page from reading
the answer, not from sending a simple POST), the token (401/403), then the
size (413) while the body streams in.

``GATEWAY_PUBLISH_RATE`` is per WebSocket connection only. HTTP publishers
are mostly backends, often many behind one address, so a per-address limit
here would throttle the legitimate heavy publisher first; docs/transports.md
names nginx ``limit_req`` for the deployments that want one.

``GatewayApp`` sends ``POST /publish/…`` to ``publish_app`` past the
router and its middleware, as it does the transports: under 64 publishing
connections the router, the exception middleware and Starlette's
``Request`` and ``JSONResponse`` were a fifth of a publish's Python (py-spy,
bench/README.md). It answers as the routed endpoint it replaced did
(Starlette's 405 and refusals included). The broker sends concurrent
publishes as one pipeline (brokers/publish_batch.py).

``LocalPublisher`` (``create_app().publisher``) is the same publish for the
app that mounts the gateway: no URL, no token (the caller is the app
itself, which also decides who may reach its own routes), the same checks
and errors, and the hub's call, as this route makes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from gateway.access import announce
from gateway.auth import NONE, OPEN, Rights
from gateway.errors import BadRequest, BrokerUnavailable, GatewayError, TooLarge
from gateway.message import check_channel, check_event, check_publish
from gateway.revocations import revocation
from gateway.state import NOT_STARTED, Gateway
from gateway.transports.common import refused, route_path
from gateway.transports.longpoll import query_of

PUBLISH_PATH_PREFIX = "/publish/"
_ANSWER_HEADERS = [(b"content-type", b"application/json")]


async def publish_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /publish/{channel}`` as a bare ASGI app: the endpoint's checks and answers."""
    if scope["method"] != "POST":
        await PlainTextResponse("Method Not Allowed", 405, {"Allow": "POST"})(scope, receive, send)
        return
    gateway: Gateway = scope["app"].gateway
    try:
        named = route_path(scope)[len(PUBLISH_PATH_PREFIX) :]
        channel, event = admitted(gateway, named, scope["query_string"], scope["headers"], scope)
        body = await _received_body(receive, gateway.settings.max_message_bytes)
        if body is None:
            return  # the client left before its body was whole: nothing was published
        message = await gateway.hub.publish(channel, event, body_text(body))
    except GatewayError as exc:
        await refused(gateway.metrics, exc)(scope, receive, send)
        return
    body, headers = created(message.id, channel)
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def admitted(
    gateway: Gateway,
    named: str,
    raw_query: bytes,
    headers: list[tuple[bytes, bytes]],
    scope: Scope | None,
) -> tuple[str, str]:
    """The channel and event of a publish that passed every check made before its body.

    ``named``: the channel as the path names it. ``scope`` is needed only
    for an ``Origin`` that not every origin may send (its own origin is the
    request's). The headers are read as Starlette reads them (the first).
    """
    origin, authorization, declared = _headers(headers)
    return admit(gateway, named, raw_query, origin, authorization, declared, scope)


def admit(
    gateway: Gateway,
    named: str,
    raw_query: bytes,
    origin: bytes | None,
    authorization: bytes | None,
    declared: bytes | None,
    scope: Scope | None,
) -> tuple[str, str]:
    """``admitted``, the headers it reads already found: the checks, cheapest first.

    The names (400), the page's Origin (403), the token (401/403), the
    declared size (413).
    """
    channel = check_channel(named)
    query = query_of(raw_query) if raw_query else {}
    event = check_event(query.get("event"))
    guard = gateway.guard
    if origin is not None and not guard.any_origin:
        assert scope is not None, "an Origin that must be checked needs the request's scope"
        guard.check_origin(HTTPConnection(scope))
    guard.authorize_publish(_rights(gateway, authorization, query), channel)
    limit = gateway.settings.max_message_bytes
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"message larger than {limit} bytes")
    return channel, event


def body_text(body: bytes) -> str:
    """A publish's body as the message's data: UTF-8 text, else 400."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8 text") from None


def created(message_id: str, channel: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A publish's 201 answer: its body and headers."""
    body = orjson.dumps({"id": message_id, "channel": channel})
    return body, [(b"content-length", b"%d" % len(body)), *_ANSWER_HEADERS]


def _headers(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None, bytes | None]:
    """``Origin``, ``Authorization`` and ``Content-Length``, as Starlette reads them (the first)."""
    origin = authorization = length = None
    for name, value in headers:
        if name == b"origin" and origin is None:
            origin = value
        elif name == b"authorization" and authorization is None:
            authorization = value
        elif name == b"content-length" and length is None:
            length = value
    return origin, authorization, length


def _rights(gateway: Gateway, authorization: bytes | None, query: dict[str, str]) -> Rights:
    """The caller's rights, as ``Guard.rights`` finds them (and its cache of tokens)."""
    guard = gateway.guard
    if guard.open:
        return OPEN
    token: str | None = None
    if authorization is not None and authorization[:7].lower() == b"bearer ":
        token = authorization[7:].decode("latin-1").strip() or None
    else:
        token = query.get("token") or None
    return NONE if token is None else guard.decode(token)


async def _received_body(receive: Receive, limit: int) -> bytes | None:
    """The body, refused with 413 as soon as it passes ``limit``; None if the client left."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"message larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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

    async def disconnect(
        self, user: str, channels: list[str] | None = None, reason: str | None = None
    ) -> str:
        """Revoke ``user``'s access (to ``channels`` patterns only, if given) on every node,
        as ``POST /admin/disconnect`` does; returns the revocation's id."""
        gateway = self._running()
        if gateway is None:
            raise BrokerUnavailable(NOT_STARTED)
        fields = {"user": user, "channels": channels, "reason": reason}
        message = await announce(gateway.hub, revocation(fields, at=time.time()))
        return message.id
