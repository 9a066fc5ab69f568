"""``GET /poll?channel=a@<id>&channel=b@<id>&timeout=&limit=``: several channels, one long-poll.

Answers ``{"messages", "cursors", "gaps", "cursor"}``: the messages (each
with its ``channel``; in order within a channel, across channels in the
order they arrived), each channel's cursor for the next request, the
channels whose history lost messages after their cursor, and the composite
cursor (composite.py, which ``?cursor=`` takes back, as ``/sse`` does).

* ``limit`` counts across channels. A channel cut by it keeps its cursor at
  its last message given and continues on the next poll: only a gap the
  broker reported is a gap.
* One waiter per request: the channels' subscriptions share one wake-up
  (multiplex.py), not a task per channel.
* The common case of a client behind on every channel is answered from the
  hub's memory at once, as on ``/poll/{channel}``.
"""

from __future__ import annotations

import anyio
import orjson
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import composite
from gateway.hub import STALL_S, Hub
from gateway.message import START, Cursor, Gap, Item
from gateway.multiplex import Multiplex
from gateway.polls import GATHER_S
from gateway.presence_visit import Visit, visit_of
from gateway.state import Gateway, gateway_of
from gateway.subscription import CloseReason
from gateway.transports.channels import ChannelSpec, channel_specs, label
from gateway.transports.departure import watching, within
from gateway.transports.longpoll import check_served, poll_bounds, refuse_ended
from gateway.transports.sse import respond

Runs = list[tuple[str, list[Item]]]
POLL_MULTI_PATH = "/poll"


async def poll_multi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/poll`` as a bare ASGI app, past the router like ``/poll/{channel}``; its answer's
    send given up after ``STALL_S`` (departure.py)."""
    response = await respond(scope, receive, poll_multi_endpoint)
    await response(scope, receive, within(send, STALL_S))


async def poll_multi_endpoint(request: Request) -> Response:
    gateway = gateway_of(request)
    specs, visit, timeout, limit = admit_multi(gateway, request)
    channels = [spec.channel for spec in specs]
    with gateway.connection("poll", label(channels)) as conn:
        waiting = _waiting(gateway.hub, specs, limit)
        if waiting:  # every channel answered from memory, and something waits
            conn.reason = "answered"
            gateway.presence.polled(visit, channels)
            return _answer(specs, [spec.cursor or START for spec in specs], waiting)
        async with Multiplex(gateway.hub) as mux:
            mux.attend = gateway.presence.attender(visit, (), hold=True)
            mux.whole = True  # a revocation of any of its channels answers it 403
            starts = [await mux.open(s.channel, s.cursor, s.last, limit) for s in specs]
            runs = mux.take(limit)
            if not runs and mux.close_reason is None:
                grant = gateway.access.watch(gateway.guard.rights(request), mux)
                with anyio.move_on_after(timeout), grant:
                    gathered = _gathered(mux)
                    await watching(request.scope, request.receive, mux.client_gone, gathered)
                runs = mux.take(limit)
            conn.reason = "answered" if runs else _outcome(mux)
    if mux.close_reason is CloseReason.CLIENT_GONE:
        return NO_ANSWER  # nobody to answer (and hypercorn's HTTP/2 send would wait for ever)
    if not runs:
        refuse_ended(mux.close_reason, mux.note)
    return _answer(specs, starts, runs)


async def _gathered(mux: Multiplex) -> None:
    """Until something arrives (or the connection closes), and a burst landed after it."""
    await mux.wait()
    await anyio.sleep(GATHER_S)


class _NoAnswer(Response):
    """For a client that left: nothing is sent (the server closes what remains)."""

    def __init__(self) -> None:
        pass

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        return None


NO_ANSWER = _NoAnswer()


def admit_multi(
    gateway: Gateway, request: HTTPConnection
) -> tuple[list[ChannelSpec], Visit, float, int]:
    """The channels, who asks, ``timeout`` and ``limit``, once every check passed."""
    check_served(gateway.settings)
    specs = channel_specs(request, gateway.settings.max_channels)
    rights = gateway.guard.authorize_read_all(request, [spec.channel for spec in specs])
    visit = visit_of(request.query_params, rights, gateway.guard.open)
    timeout, limit = poll_bounds(request.query_params, gateway.settings)
    gateway.check_capacity()
    gateway.hub.check_broker()
    return specs, visit, timeout, limit


def _outcome(mux: Multiplex) -> str:
    return mux.close_reason.value if mux.close_reason is not None else "timed out"


def _waiting(hub: Hub, specs: list[ChannelSpec], limit: int) -> Runs:
    """Messages after the channels' cursors from the hub's memory; none unless all are known.

    Channels past the ``limit`` give nothing this time: they keep their cursors.
    """
    runs: Runs = []
    for spec in specs:
        if limit <= 0:
            break
        messages = None if spec.cursor is None else hub.waiting(spec.channel, spec.cursor, limit)
        if messages is None:
            return []
        if messages:
            runs.append((spec.channel, list(messages)))
            limit -= len(messages)
    return runs


def _answer(specs: list[ChannelSpec], starts: list[Cursor], runs: Runs) -> Response:
    body = answer_body(specs, starts, runs)
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


def answer_body(specs: list[ChannelSpec], starts: list[Cursor], runs: Runs) -> bytes:
    """``{"messages", "cursors", "gaps", "cursor"}`` for channels at ``starts`` given ``runs``."""
    cursors = {spec.channel: start for spec, start in zip(specs, starts, strict=True)}
    gaps: list[str] = []
    messages: list[bytes] = []
    for channel, items in runs:
        for item in items:
            if isinstance(item, Gap):
                gaps.append(channel)
                cursors[channel] = START  # after a gap, all that remains: until a message says
                continue
            if item.cursor is not None:
                cursors[channel] = item.cursor
            messages.append(item.json)
    return b"".join(
        (
            b'{"messages":[',
            b",".join(messages),
            b'],"cursors":',
            orjson.dumps({channel: str(cursor) for channel, cursor in cursors.items()}),
            b',"gaps":',
            orjson.dumps(gaps),
            b',"cursor":',
            orjson.dumps(composite.encode(list(cursors), list(cursors.values()))),
            b"}",
        )
    )
