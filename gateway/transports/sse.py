"""``GET /sse/{channel}``: Server-Sent Events through sse-starlette.

Divergences from sse-starlette's defaults, on purpose:

* Items are pre-encoded ``bytes`` (``Message.sse``, built once per message);
  everything queued is written in one chunk, so a burst costs one write.
* The heartbeat is a bare comment every ``GATEWAY_HEARTBEAT`` seconds, not
  sse-starlette's timestamped one: nothing per-connection to format.
* ``Cache-Control: no-cache`` (sse-starlette's default is ``no-store``), as
  the contract says.
* Shutdown: sse-starlette ends every stream as soon as uvicorn is told to
  exit. We hand it a ``shutdown_event`` and a grace period, and the hub's
  own exit watcher closes every subscription, so the stream writes
  ``retry:`` (reconnect soon, elsewhere) before it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from gateway.errors import GatewayError, NotServed
from gateway.message import GAP_SSE, Cursor
from gateway.state import Connection, Gateway, gateway_of
from gateway.subscription import Gap, Item, Subscription
from gateway.transports.common import check_channel, resume_from

BATCH = 256
RECONNECT_HINT = b"retry: 1000\n\n"
# A client that takes no bytes for this long is gone or stalled: end its
# stream (its buffer was already dropped if it lagged; see Subscription).
SEND_TIMEOUT_S = 30.0


def _heartbeat() -> ServerSentEvent:
    return ServerSentEvent(comment="")


async def sse_endpoint(request: Request) -> EventSourceResponse:
    gateway = gateway_of(request)
    if not gateway.settings.serves("sse"):
        raise NotServed("the sse transport is turned off on this server")
    channel = check_channel(request.path_params["channel"])
    gateway.guard.authorize_read(request, channel)
    cursor, last = resume_from(request.query_params, request.headers.get("last-event-id"))
    gateway.check_capacity()
    gateway.hub.check_broker()
    shutdown = anyio.Event()
    return EventSourceResponse(
        _stream(gateway, channel, cursor, last, shutdown),
        headers={"Cache-Control": "no-cache"},
        ping=gateway.settings.heartbeat_s,
        ping_message_factory=_heartbeat,
        sep="\n",
        shutdown_event=shutdown,
        shutdown_grace_period=1.0,
        send_timeout=SEND_TIMEOUT_S,
    )


async def _stream(
    gateway: Gateway, channel: str, cursor: Cursor | None, last: int | None, shutdown: anyio.Event
) -> AsyncIterator[bytes]:
    with gateway.connection("sse", channel) as conn:
        try:
            async with gateway.hub.subscribe(channel, cursor, last) as sub:
                # The first bytes say "subscribed" and set the browser's reconnect delay.
                yield RECONNECT_HINT
                async for chunk in _chunks(sub, conn):
                    yield chunk
        except GatewayError as exc:  # the broker went away while we joined
            conn.reason = exc.reason
            yield RECONNECT_HINT


async def _chunks(sub: Subscription, conn: Connection) -> AsyncIterator[bytes]:
    while True:
        items = sub.take(BATCH)
        if items:
            yield b"".join(_encode(item) for item in items)
            continue
        if sub.closed:
            assert sub.close_reason is not None
            conn.reason = sub.close_reason.value
            yield RECONNECT_HINT
            return
        await sub.wait()


def _encode(item: Item) -> bytes:
    return GAP_SSE if isinstance(item, Gap) else item.sse
