"""``GET /sse?channel=a&channel=b@<id>``: several channels on one Server-Sent Events stream.

One stream instead of one per channel: a browser opens at most six HTTP/1.1
connections per origin (SPEC, "Several channels on one connection").

* Each message is an event with no ``event:`` line (a native
  ``EventSource``'s ``onmessage`` sees them all) whose ``data:`` is the
  message's JSON ``{"id","channel","event","data"}`` (``Message.mux_sse``,
  built once for every connection) and whose ``id:`` is the connection's
  composite cursor (composite.py): the one per-connection part, a join of
  segments each built once per message. A message without an id (a raw
  Redis ``PUBLISH``) has no ``id:`` line: the browser keeps the last one.
* It opens with ``event: subscribed``, ``id:`` the starting composite and
  ``data: {"cursors": {channel: id}}``; a gap on one channel is
  ``event: gap``, ``data: {"channel": NAME}``, before that channel's
  remaining history.
* ``Last-Event-ID`` (or ``?cursor=``) resumes every channel and wins over
  the URL's cursors. Heartbeats, the slow-consumer cut (``retry:`` and the
  end of the stream, for the whole connection) and shutdown are as on
  ``/sse/{channel}``; the first channel's subscription stands for the
  connection in the hub's heartbeat and stall loop.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.auth import NONE, Rights
from gateway.composite import Composite
from gateway.errors import GatewayError, NotServed
from gateway.message import Batch, Cursor, Gap, Item
from gateway.multiplex import Multiplex
from gateway.presence_visit import ANONYMOUS, Visit, visit_of
from gateway.server.direct import ChannelSink, on_http_lost, sse_sink, write_arrivals
from gateway.state import Gateway, gateway_of
from gateway.subscription import CloseReason
from gateway.transports.channels import ChannelSpec, channel_specs, label
from gateway.transports.common import stall_absorbed
from gateway.transports.departure import while_present
from gateway.transports.sse import (
    HEARTBEAT,
    WRITE_BYTES,
    Stream,
    Write,
    broker_gone,
    last_words,
    respond,
    stream_end,
    stream_writer,
)

SSE_MULTI_PATH = "/sse"
BATCH = 256


async def sse_multi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``/sse`` as a bare ASGI app, past the router like ``/sse/{channel}``."""
    response = await respond(scope, receive, sse_multi_endpoint)
    await response(scope, receive, send)


async def sse_multi_endpoint(request: Request) -> Response:
    gateway = gateway_of(request)
    if not gateway.settings.serves("sse"):
        raise NotServed("the sse transport is turned off on this server")
    resume = request.headers.get("last-event-id")
    specs = channel_specs(request, gateway.settings.max_channels, resume)
    rights = gateway.guard.authorize_read_all(request, [spec.channel for spec in specs])
    visit = visit_of(request.query_params, rights, gateway.guard.open)
    gateway.check_capacity()
    gateway.hub.check_broker()
    return MultiEventStream(gateway, specs, visit, rights)


class Encoder:
    """This connection's SSE bytes: the composite ``id:`` before each shared ``data:`` part."""

    __slots__ = ("_composite", "_index")

    def __init__(self, channels: list[str], starts: list[Cursor]) -> None:
        self._composite = Composite(channels, starts)
        self._index = {channel: index for index, channel in enumerate(channels)}

    @property
    def cursor(self) -> bytes:
        return self._composite.text

    def events(self, channel: str, items: list[Item]) -> bytes:
        index = self._index[channel]
        composite = self._composite
        parts: list[bytes] = []
        for item in items:
            if isinstance(item, Gap):
                parts.append(b'event: gap\ndata: {"channel":' + orjson.dumps(channel) + b"}\n\n")
            elif item.epoch is None:
                parts.append(item.mux_sse)
            else:
                composite.advance(index, item)
                parts.append(b"id: " + composite.text + b"\n" + item.mux_sse)
        return b"".join(parts)

    def chunk(self, channel: str, batch: Batch) -> bytes:
        """The events as one HTTP/1.1 chunk, for the fast path."""
        body = self.events(channel, batch.items)
        return b"%x\r\n%b\r\n" % (len(body), body)


def opening(encoder: Encoder, channels: list[str], starts: list[Cursor]) -> bytes:
    cursors = orjson.dumps({"cursors": dict(zip(channels, map(str, starts), strict=True))})
    return b"event: subscribed\nid: " + encoder.cursor + b"\ndata: " + cursors + b"\n\n"


class MultiEventStream(Stream):
    def __init__(
        self,
        gateway: Gateway,
        specs: list[ChannelSpec],
        visit: Visit = ANONYMOUS,
        rights: Rights = NONE,
    ) -> None:
        self.gateway = gateway
        self.specs = specs
        self.visit = visit  # presence: who, and whether join/leave events are wanted
        self.rights = rights  # its token's: the stream ends at its exp or revocation

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Stream until a subscription ends; False when the client stalled."""
        channels = [spec.channel for spec in self.specs]
        with self.gateway.connection("sse", label(channels)) as conn:
            try:
                async with Multiplex(self.gateway.hub) as mux:
                    mux.writer = asyncio.current_task()
                    listening = channels if self.visit.listen else ()
                    mux.attend = self.gateway.presence.attender(self.visit, listening)
                    starts = [await mux.open(s.channel, s.cursor, s.last) for s in self.specs]
                    encoder = Encoder(channels, starts)
                    lead = mux.lead
                    assert lead is not None
                    lead.wants_heartbeat = True
                    await receive()  # the (empty) request body of a GET
                    write = stream_writer(lead, send)  # the lead stands for the whole stream
                    await write(opening(encoder, channels, starts))
                    try:  # inline, as EventStream: no helper frame held per connection
                        with self.gateway.access.watch(self.rights, mux):
                            if on_http_lost(scope, mux.client_gone) is not None:
                                await _pump(mux, encoder, write, scope)
                            else:  # not uvicorn's httptools: ASGI's own word (departure.py)
                                pump = _pump(mux, encoder, write, scope)
                                await while_present(receive, mux.client_gone, pump)
                    except asyncio.CancelledError:
                        if not stall_absorbed(mux.close_reason):
                            raise
                    return stream_end(conn, mux.close_reason)
            except GatewayError as exc:  # the broker went away while we joined
                return await broker_gone(conn, exc, send)


async def _leave_revoked(mux: Multiplex) -> bytes:
    """Leave the channels revoked alone, a ``revoked`` event each (the end when none is left)."""
    note = mux.note or CloseReason.REVOKED.value
    events = []
    for channel in mux.revoked:
        if channel in mux.subs:
            await mux.close_channel(channel)
        data = orjson.dumps({"channel": channel, "reason": note})
        events.append(b"event: revoked\ndata: " + data + b"\n\n")
    mux.revoked.clear()
    if not mux.subs:
        mux.close(CloseReason.REVOKED)
    return b"".join(events)


async def _pump(mux: Multiplex, encoder: Encoder, write: Write, scope: Scope) -> None:
    """Write what the channels hand over, in arrival order, until the connection ends."""
    raw = sse_sink(scope)
    if raw is not None:
        for channel, sub in mux.subs.items():
            sub.sink = ChannelSink(raw, mux, channel, encoder.chunk)
    lead = mux.lead
    assert lead is not None
    while True:
        if mux.revoked:
            await write(await _leave_revoked(mux))
            if mux.lead is not None:  # (the lead may have been revoked: another stands in)
                lead = mux.lead
                lead.wants_heartbeat = True
            continue
        if mux.close_reason is not None:
            if mux.close_reason is not CloseReason.CLIENT_GONE:
                await write(last_words(mux.close_reason, mux.note))
            return
        if mux.queued():
            if raw is not None:
                if not await write_arrivals(mux, raw, encoder.chunk):
                    mux.close(CloseReason.CLIENT_GONE)
                continue
            runs = mux.take(BATCH, WRITE_BYTES)
            await write(b"".join(encoder.events(channel, items) for channel, items in runs))
            continue
        if lead.poked():  # a heartbeat
            await write(HEARTBEAT)
            continue
        await mux.wait()
