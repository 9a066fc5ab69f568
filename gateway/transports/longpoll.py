"""``GET /poll/{channel}``: long-polling, stateless between calls.

The cursor is the whole state, so consecutive polls may land on any process.
A poll registers for live messages before it reads history (as every
subscriber does), answers at once when messages wait, else on the first
that arrives, else after ``timeout`` with no messages and the same cursor.
Without ``since`` the cursor is the channel's newest id: "wait for the next".
"""

from __future__ import annotations

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import NotServed
from gateway.message import START, Cursor, Message
from gateway.presence_visit import visit_of
from gateway.settings import Settings
from gateway.state import gateway_of
from gateway.subscription import Gap, Item, Subscription
from gateway.transports.common import check_channel, float_param, int_param, resume_from
from gateway.transports.direct import on_http_lost

DEFAULT_LIMIT = 100
GATHER_S = 0.005  # after a wake-up, let a burst land so it leaves in one answer


async def poll_endpoint(request: Request) -> Response:
    gateway = gateway_of(request)
    check_served(gateway.settings)
    channel = check_channel(request.path_params["channel"])
    rights = gateway.guard.authorize_read(request, channel)
    visit = visit_of(request.query_params, rights, gateway.guard.open)
    cursor, last = resume_from(request.query_params)
    timeout, limit = poll_bounds(request, gateway.settings)
    gateway.check_capacity()
    gateway.hub.check_broker()
    with gateway.connection("poll", channel) as conn:
        if cursor is not None:
            waiting: list[Item] = list(gateway.hub.waiting(channel, cursor, limit) or ())
            if waiting:  # the common case of a client behind: answered from memory at once
                conn.reason = "answered"
                gateway.presence.polled(visit, [channel])
                return _answer(channel, waiting, cursor)
        async with (
            gateway.hub.subscribe(channel, cursor, last, most=limit) as sub,
            gateway.presence.attending(visit, sub, hold=True),
        ):
            start = cursor if cursor is not None else gateway.hub.latest(channel)
            items = sub.take(limit)
            if not items and not sub.closed:
                on_http_lost(request.scope, sub)
                with anyio.move_on_after(timeout):
                    await sub.wait()
                    await anyio.sleep(GATHER_S)
                items = sub.take(limit)
            conn.reason = _outcome(items, sub)
    return _answer(channel, items, start)


def check_served(settings: Settings) -> None:
    if not settings.serves("poll"):
        raise NotServed("the poll transport is turned off on this server")


def poll_bounds(request: Request, settings: Settings) -> tuple[float, int]:
    """``timeout`` and ``limit``, clamped to the settings; 400 when not numbers."""
    ceiling = settings.poll_timeout_s
    timeout = float_param(request.query_params, "timeout", ceiling, 0.0, ceiling)
    limit = int_param(request.query_params, "limit", DEFAULT_LIMIT, 1, settings.poll_limit_max)
    assert limit is not None
    return timeout, limit


def _outcome(items: list[Item], sub: Subscription) -> str:
    """Why the poll answered, for the connection's log line."""
    if items:
        return "answered"
    if sub.close_reason is not None:
        return sub.close_reason.value
    return "timed out"


def _answer(channel: str, items: list[Item], start: Cursor) -> Response:
    messages = [item for item in items if isinstance(item, Message)]
    gap = any(isinstance(item, Gap) for item in items)
    # After a gap with nothing left, "0" (all history) is the honest cursor.
    cursor = START if gap and not messages else start
    for message in messages:
        if message.cursor is not None:
            cursor = message.cursor
    body = b"".join(
        (
            b'{"channel":',
            orjson.dumps(channel),
            b',"messages":[',
            b",".join(message.json for message in messages),
            b'],"cursor":',
            orjson.dumps(str(cursor)),
            b',"gap":',
            b"true" if gap else b"false",
            b"}",
        )
    )
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})
