"""``GET /poll/{channel}``: long-polling, stateless between calls.

The cursor is the whole state, so consecutive polls may land on any process.
A poll answers at once when messages wait, else on the first that arrives,
else after ``timeout`` with no messages and the same cursor. Without
``since`` the cursor is the channel's newest id: "wait for the next".

What a poll costs is what it must do: parse, look up, answer. Measured
under 5,000 clients at 10 msg/s (bench/README.md) and cut accordingly:

* ``GatewayApp`` sends ``/poll/…`` here past Starlette's router and
  middleware (CORS, when configured, still wraps it), as it does SSE and
  WebSocket; the query is parsed once, no ``Request`` or ``Response``.
* A client behind is answered from the hub's memory at once. A client
  caught up on a joined channel becomes a ``Waiter`` (polls.py): no
  subscription, task or timer of its own; its answer, the same bytes for
  every poller at its cursor (``PollAnswer``, headers included), is
  written straight to its socket when the message arrives
  (``direct.HttpReply``), or through ``send`` where middleware wraps it.
* Everything else (a channel not yet joined, a cursor older than the hub's
  memory, ``last=N``, a gap) registers a subscription and reads history
  first, as every subscriber does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple
from urllib.parse import parse_qsl

import anyio
import orjson
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from gateway.auth import OPEN
from gateway.errors import GatewayError, NotServed
from gateway.hub import CAUGHT_UP, STALL_S, Hub
from gateway.message import START, Cursor, Message
from gateway.polls import CLIENT_GONE, GATHER_S, TIMED_OUT, TaskClient, Waiter
from gateway.presence_visit import Visit, visit_of
from gateway.server.direct import HttpReply, http_reply
from gateway.settings import Settings
from gateway.state import Connection, Gateway
from gateway.subscription import Gap, Item, Subscription
from gateway.transports.common import (
    check_channel,
    float_param,
    int_param,
    refusal,
    resume_from,
    route_path,
)
from gateway.transports.departure import watching, within

POLL_PATH_PREFIX = "/poll/"
DEFAULT_LIMIT = 100
HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_HEAD = b"".join(name + b": " + value + b"\r\n" for name, value in HEADERS)


class PollAnswer:
    """One poll answer, built once for every poller it goes to: the JSON body, then the wire.

    ``wire`` adds the status line and headers (the server's ``date`` and
    ``server``, ours, the length) once per set of server headers (uvicorn
    renews its ``date`` each second).
    """

    __slots__ = ("_for", "_wire", "body")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._for: list[tuple[bytes, bytes]] | None = None
        self._wire = b""

    def wire(
        self, default_headers: list[tuple[bytes, bytes]], keep_alive: bool, extra: bytes = b""
    ) -> bytes:
        """The whole answer; ``extra``: header lines of its own (CORS, cors.py)."""
        if not keep_alive:
            return self._build(default_headers, extra + b"connection: close\r\n")
        if extra:
            return self._build(default_headers, extra)
        if self._for is not default_headers:
            self._for = default_headers
            self._wire = self._build(default_headers, b"")
        return self._wire

    def _build(self, default_headers: list[tuple[bytes, bytes]], extra: bytes) -> bytes:
        server = b"".join(name + b": " + value + b"\r\n" for name, value in default_headers)
        length = b"content-length: %d\r\n" % len(self.body)
        return b"HTTP/1.1 200 OK\r\n" + server + _HEAD + extra + length + b"\r\n" + self.body

    async def send(self, send: Send) -> None:
        """Through ASGI (middleware adds its headers), given up after ``STALL_S`` (departure.py)."""
        send = within(send, STALL_S)
        length = (b"content-length", b"%d" % len(self.body))
        await send({"type": "http.response.start", "status": 200, "headers": [length, *HEADERS]})
        await send({"type": "http.response.body", "body": self.body})


async def poll_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/poll/{channel}`` as a bare ASGI app; refusals as on every route, 405 but for GET/HEAD."""
    if scope["method"] not in ("GET", "HEAD"):
        headers = {"Allow": "GET, HEAD"}
        await PlainTextResponse("Method Not Allowed", 405, headers)(scope, receive, send)
        return
    try:
        await _poll(scope, receive, send)
    except GatewayError as exc:
        await refusal(HTTPConnection(scope), exc)(scope, receive, send)


async def _poll(scope: Scope, receive: Receive, send: Send) -> None:
    gateway: Gateway = scope["app"].gateway
    channel = route_path(scope)[len(POLL_PATH_PREFIX) :]
    visit, ask = admit(gateway, channel, scope["query_string"], scope["headers"])
    with gateway.connection("poll", channel) as conn:
        # A poller is a member for its poll and the lease after it (presence.py).
        gateway.presence.polled(visit, [channel])
        await _answer(gateway, conn, (scope, receive, send), ask)


Ask = tuple[str, Cursor | None, int | None, float, int]


def admit(
    gateway: Gateway, channel: str, query: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[Visit, Ask]:
    """Who asks and what, once every check passed; a ``GatewayError`` says why not."""
    settings = gateway.settings
    check_served(settings)
    if channel not in gateway.hub.channels:  # (a joined channel's name was checked)
        check_channel(channel)
    guard = gateway.guard
    if guard.open:
        rights = OPEN
    else:  # the token: from the headers or the query
        request = HTTPConnection({"type": "http", "headers": headers, "query_string": query})
        rights = guard.authorize_read(request, channel)
    asked = asked_of(gateway, query)
    visit = asked.visit or visit_of(asked.query, rights, guard.open)
    gateway.check_capacity()
    gateway.hub.check_broker()
    return visit, (channel, asked.cursor, asked.last, asked.timeout, asked.limit)


class Asked(NamedTuple):
    """What a poll's query asks, once it parsed (a 400 otherwise)."""

    query: Mapping[str, str]
    cursor: Cursor | None
    last: int | None
    timeout: float
    limit: int
    visit: Visit | None  # on an open gateway (no token: the query says it all)


QUERIES_KEPT = 1024
QUERY_KEPT_BYTES = 2048  # a longer query is parsed each time: the record stays under 2 MiB


def asked_of(gateway: Gateway, raw: bytes) -> Asked:
    """The query parsed, once per distinct query: thousands of pollers send the same one.

    A poll's query is its cursor and bounds; every poller of a channel
    comes back with the same cursor after each message. Parsing it was a
    fifth of a poll's Python (bench/poll_cycle.py). A query that names a
    ``token`` is parsed each time and never kept: no secret stays in memory.
    """
    kept = gateway.poll_queries
    asked = kept.get(raw)
    if asked is None:
        query = query_of(raw)
        cursor, last = resume_from(query)
        timeout, limit = poll_bounds(query, gateway.settings)
        visit = visit_of(query, OPEN, True) if gateway.guard.open else None
        asked = Asked(MappingProxyType(query), cursor, last, timeout, limit, visit)
        # (parsed: ``tok%65n`` is a token to Starlette too)
        if "token" not in query and len(raw) <= QUERY_KEPT_BYTES:
            if len(kept) >= QUERIES_KEPT:
                kept.clear()
            kept[raw] = asked
    return asked


Asgi = tuple[Scope, Receive, Send]


async def _answer(gateway: Gateway, conn: Connection, asgi: Asgi, ask: Ask) -> None:
    channel, timeout, limit = ask[0], ask[3], ask[4]
    scope, _, send = asgi
    hub = gateway.hub
    reply = http_reply(scope, send)
    known = known_answer(hub, ask)
    if isinstance(known, PollAnswer):  # a client behind: answered from memory at once
        conn.reason = "answered"
        await _deliver(known, reply, send)
        return
    if known is not None and timeout > 0:
        client = TaskClient(reply)
        waiter = Waiter(known, limit, client)
        if hub.park(channel, waiter, timeout, encode):
            await _wait(waiter, client.future, asgi, conn, reply)
            return
    items, start = await _subscribed(gateway, conn, asgi, ask)
    if conn.reason == CLIENT_GONE:
        return  # nobody to answer (and hypercorn's HTTP/2 send would wait for ever)
    answer = encode(channel, items, start)
    await _deliver(answer, reply, send)


async def _deliver(answer: PollAnswer, reply: HttpReply | None, send: Send) -> None:
    """Straight to the socket when it can be (``HttpReply``), else through ASGI."""
    if reply is None or not await reply.sent(answer):
        await answer.send(send)


def known_answer(hub: Hub, ask: Ask) -> PollAnswer | Cursor | None:
    """What the hub's memory says at once: the answer, the cursor to wait at, or None (ask it)."""
    channel, cursor, last, _, limit = ask
    if cursor is not None:
        known = hub.answer_after(channel, cursor, limit, encode)
        if isinstance(known, PollAnswer):
            return known
        return cursor if known is CAUGHT_UP else None
    return hub.newest(channel) if last is None else None


async def _wait(
    waiter: Waiter,
    future: asyncio.Future[object | None],
    asgi: Asgi,
    conn: Connection,
    reply: HttpReply | None,
) -> None:
    """Until the hub or the timer answers the waiter, or its client leaves."""
    scope, receive, send = asgi
    try:
        answer = await watching(scope, receive, waiter.cancel, future)
    finally:
        waiter.cancel()  # this task cancelled: out of the hub (no-op once answered)
    conn.reason = waiter.reason
    if isinstance(answer, PollAnswer) and not waiter.written:
        await _deliver(answer, reply, send)


async def _subscribed(
    gateway: Gateway, conn: Connection, asgi: Asgi, ask: Ask
) -> tuple[list[Item], Cursor]:
    """The items and start of a poll served by a subscription (history read first)."""
    channel, cursor, last, timeout, limit = ask
    async with gateway.hub.subscribe(channel, cursor, last, most=limit) as sub:
        start = cursor if cursor is not None else gateway.hub.latest(channel)
        items = sub.take(limit)
        if not items and not sub.closed:
            scope, receive, _ = asgi
            with anyio.move_on_after(timeout):
                await watching(scope, receive, sub.client_gone, _gathered(sub))
            items = sub.take(limit)
        conn.reason = _outcome(items, sub)
    return items, start


async def _gathered(sub: Subscription) -> None:
    """Until something arrives (or the subscription closes), and a burst landed after it."""
    await sub.wait()
    await anyio.sleep(GATHER_S)


def query_of(raw: bytes) -> dict[str, str]:
    """The query as Starlette's ``QueryParams`` reads it (the last value of a name wins)."""
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    query = {}
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            query[name] = value
    return query


def carries_token(raw: bytes) -> bool:
    """Whether a raw query names ``token``, however it is spelled (``tok%65n`` is one)."""
    return b"token" in raw or (b"%" in raw and "token" in query_of(raw))


def check_served(settings: Settings) -> None:
    if not settings.serves("poll"):
        raise NotServed("the poll transport is turned off on this server")


def poll_bounds(query: Mapping[str, str], settings: Settings) -> tuple[float, int]:
    """``timeout`` and ``limit``, clamped to the settings; 400 when not numbers."""
    ceiling = settings.poll_timeout_s
    timeout = float_param(query, "timeout", ceiling, 0.0, ceiling)
    limit = int_param(query, "limit", DEFAULT_LIMIT, 1, settings.poll_limit_max)
    assert limit is not None
    return timeout, limit


def _outcome(items: list[Item], sub: Subscription) -> str:
    """Why the poll answered, for the connection's log line."""
    if items:
        return "answered"
    if sub.close_reason is not None:
        return sub.close_reason.value
    return TIMED_OUT


def encode(channel: str, items: list[Item], start: Cursor) -> PollAnswer:
    """The answer to a poll at ``start``: ``{"channel","messages","cursor","gap"}``."""
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
    return PollAnswer(body)
