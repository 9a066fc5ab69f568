"""Pre-framed bytes straight onto a client's socket, beside ASGI: the fan-out's fast path.

Why: through ASGI, each delivery to each subscriber costs a task wakeup,
the send chain (Starlette's exception wrappers, uvicorn's checks, for
WebSocket the text encoded and framed again per connection) and a write.
Profiled under load (bench/README.md) that was over 80 % of the gateway's
CPU, and it capped one process near 45,000 deliveries per CPU-second one
message at a time, far below what 10,000 clients at 10 msg/s need. Here the
hub writes a batch's bytes, framed once for every subscriber
(``Batch.sse_chunk``, ``Batch.ws_frames``), with one ``transport.write``
per client and no task woken at all: what Nchan does in C.

How: ``GatewayApp`` (app.py) puts the server's own ``send`` into the scope
under ``RAW_SEND``. Once a transport has opened its stream through ASGI
(SSE: response started; WebSocket: accepted), ``sse_sink`` or
``ws_sink`` recognise the uvicorn object behind that ``send`` (its
httptools HTTP/1.1 cycle with a chunked response, its websockets-sansio
protocol) and return a sink. For anything else (h11, wsproto, Starlette's
TestClient, another server, uvicorn at trace level, which wraps ``send``)
they return None and the transport writes through ASGI as before, only
slower. The ASGI path stays for everything but messages and SSE
heartbeats: the opening, acks, the end of a stream and close frames.

Several channels on one connection (multiplex.py): each channel's
subscription gets a ``ChannelSink`` over the connection's one sink. The
bytes of a batch are the shared ones where the wire allows it (WebSocket
message frames) and else are built per connection by the transport's
``Encode`` (SSE: the composite ``id:`` line before each shared ``data:``
part); ``write_arrivals`` drains what queued, in arrival order.

Safety: a sink writes only while the connection is open and its transport
below its high-water mark; the subscription writes directly only when
nothing of its own is queued (``Subscription.offer_batch``), so order holds. A
paused transport sends items to the bounded queue and the connection's
writer, which waits for the drain: the slow-consumer policy is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from starlette.types import Scope, Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from gateway.message import BATCH_BYTES, BATCH_ITEMS, Batch
from gateway.server import accelerations
from gateway.subscription import Sink

if TYPE_CHECKING:
    from gateway.multiplex import Multiplex
    from gateway.subscription import Subscription

RAW_SEND = "gateway.raw_send"
_Owner = TypeVar("_Owner", RequestResponseCycle, WebSocketsSansIOProtocol)
HEARTBEAT_CHUNK = b"3\r\n:\n\n\r\n"  # an SSE comment as an HTTP/1.1 chunk


class SseSink:
    """An SSE stream on uvicorn's httptools protocol: chunks written to its transport.

    ``ready`` and ``write`` run once per subscriber per message: the
    lookups they need are bound once here.
    """

    __slots__ = ("_closing", "_cycle", "_flow", "_transport", "_write")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle
        self._flow = cycle.flow
        _list_waiters(cycle.flow._is_writable_event)
        self._transport: asyncio.Transport = cycle.transport
        self._write = self._transport.write
        self._closing = self._transport.is_closing

    def gone(self) -> bool:
        cycle = self._cycle
        return bool(cycle.disconnected or cycle.response_complete or self._closing())

    def ready(self) -> bool:
        cycle = self._cycle
        return not (
            self._flow.write_paused
            or cycle.disconnected
            or cycle.response_complete
            or self._closing()
        )

    def write(self, batch: Batch) -> None:
        self._write(batch.sse_chunk)

    def write_bytes(self, data: bytes) -> None:
        """Bytes already framed (whole HTTP chunks) for this connection alone."""
        self._write(data)

    def heartbeat(self) -> None:
        self._write(HEARTBEAT_CHUNK)

    async def drain(self) -> None:
        await self._flow.drain()


class WsSink:
    """A WebSocket on uvicorn's websockets-sansio protocol: frames written to its transport.

    ``ready`` runs once per subscriber per fan-out, where every object it
    reads is a cache miss at 10,000 sockets: run_matrix group b at 7 msg/s
    went from ~11.0 to ~9.5 us of server CPU per delivery once it read the
    sink's own slots and the transport (which ``write`` reads next) and
    nothing of uvicorn's protocol (a dict of 34 keys) or its event.

    Watched (ws-lean took uvicorn's queue: ``ws_sink``), the protocol tells
    the sink what ``ready`` would have read:

    * its ``writable`` event is a ``_Writable``: uvicorn's ``pause_writing``
      and ``resume_writing`` (the transport's flow control) set ``_paused``;
    * uvicorn closes the transport on every path that sends a close frame
      but one, the app's own ``websocket.close`` (``close_sent``: the
      transport stays open for the client's answer), and before that frame
      it queues a disconnect for the app: the ``Inbox`` stops the sink then
      (``stop``). A lost connection queues one too, so every watched sink
      is stopped at its end, and ``stop`` undoes the references that tie
      it to the protocol (freed at once, not by the cycle collector).

    Unwatched, ``ready`` reads the event and ``close_sent``. ``disconnected``
    implies ``is_closing()`` (uvicorn's ``connection_lost`` comes after the
    transport closed).
    """

    __slots__ = ("_open", "_paused", "_proto", "_transport", "_watched", "_writable")

    def __init__(self, proto: WebSocketsSansIOProtocol, watched: bool = False) -> None:
        self._proto = proto
        self._transport: asyncio.Transport = proto.transport
        self._open = True
        self._watched = watched
        writable = proto.writable
        if watched:
            writable = proto.writable = _Writable(self, writable.is_set())
        self._writable: asyncio.Event = writable
        self._paused = watched and not writable.is_set()  # (read only when watched)

    def stop(self) -> None:
        """No more writes: the protocol queued a disconnect (a close frame may follow)."""
        self._open = False
        writable = self._writable
        if isinstance(writable, _Writable):
            writable.sink = None

    def gone(self) -> bool:
        proto = self._proto
        return bool(
            not self._open
            or proto.close_sent
            or proto.disconnected
            or proto.conn.state is not State.OPEN
            or self._transport.is_closing()
        )

    def ready(self) -> bool:
        if not self._open or self._transport.is_closing():
            return False
        if self._watched:
            return not self._paused
        writable: bool = self._writable._value  # type: ignore[attr-defined]
        return writable and not self._proto.close_sent

    def write(self, batch: Batch) -> None:
        self._transport.write(batch.ws_frames)

    def write_bytes(self, data: bytes) -> None:
        """Whole frames built for this connection alone."""
        self._transport.write(data)

    def heartbeat(self) -> None:
        pass

    def abort(self) -> None:
        """Drop the connection at once (a stalled client: no close frame could get through)."""
        self._transport.abort()

    async def drain(self) -> None:
        await self._writable.wait()


class SinkWatch:
    """A receive queue under uvicorn's protocol that stops the connection's sink when a
    disconnect is queued (``ws_lean.Inbox``): what makes a ``WsSink`` watched."""

    __slots__ = ("sink",)

    def __init__(self) -> None:
        self.sink: WsSink | None = None

    def queued(self, item: Any) -> None:
        """Called with each item the protocol queues, before the item is queued."""
        sink = self.sink
        if sink is not None and item["type"] == "websocket.disconnect":
            self.sink = None
            sink.stop()


class _Writable(asyncio.Event):
    """uvicorn's per-socket ``writable`` event that also keeps its sink's ``_paused``.

    Its waiters in a list (``_list_waiters``: nobody waits on it almost always).
    """

    def __init__(self, sink: WsSink, is_set: bool) -> None:
        super().__init__()
        _list_waiters(self)
        self.sink: WsSink | None = sink
        if is_set:
            super().set()

    def set(self) -> None:
        super().set()
        if self.sink is not None:
            self.sink._paused = False

    def clear(self) -> None:
        super().clear()
        if self.sink is not None:
            self.sink._paused = True


async def write_queued(sub: Subscription, sink: Sink) -> bool:
    """Write what the subscription queued, as the socket takes it; False when the client left.

    Items are taken only when they can be written at once, so an offer
    can never pass ahead of items held here. A drain blocked for
    ``hub.STALL_S`` is cut by the hub's watchdog (``sending_since``).
    """
    while sub.queue:
        if sink.gone():
            return False
        if sink.ready():
            sink.write(Batch(sub.take(BATCH_ITEMS, BATCH_BYTES)))
            continue
        sub.sending_since = time.monotonic()
        try:
            await sink.drain()
        finally:
            sub.sending_since = 0.0
    return True


class RawSink(Sink, Protocol):
    def write_bytes(self, data: bytes) -> None: ...


# A batch of one channel as this connection's bytes (the transport's own framing).
Encode = Callable[[str, Batch], bytes]


class ChannelSink:
    """One channel's sink on a connection that carries several (the ``Sink`` of its subscription).

    Ready only while nothing of the connection waits (``Multiplex.held``):
    a direct write never passes what another channel queued.
    """

    __slots__ = ("_channel", "_encode", "_mux", "_raw")

    def __init__(self, raw: RawSink, mux: Multiplex, channel: str, encode: Encode) -> None:
        self._raw = raw
        self._mux = mux
        self._channel = channel
        self._encode = encode

    def ready(self) -> bool:
        return not self._mux.held() and self._raw.ready()

    def gone(self) -> bool:
        return self._raw.gone()

    def write(self, batch: Batch) -> None:
        self._raw.write_bytes(self._encode(self._channel, batch))

    def heartbeat(self) -> None:
        self._raw.heartbeat()

    async def drain(self) -> None:
        await self._raw.drain()


async def write_arrivals(mux: Multiplex, sink: RawSink, encode: Encode) -> bool:
    """Write what the connection's channels queued, in arrival order; False when the client left."""
    while mux.queued():
        if sink.gone():
            return False
        if sink.ready():
            runs = mux.take(BATCH_ITEMS, BATCH_BYTES)
            sink.write_bytes(b"".join(encode(channel, Batch(items)) for channel, items in runs))
            continue
        lead = mux.lead
        if lead is not None:
            lead.sending_since = time.monotonic()
        try:
            await sink.drain()
        finally:
            if lead is not None:
                lead.sending_since = 0.0
    return True


class WholeResponse(Protocol):
    def wire(self, default_headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
        """The whole HTTP/1.1 response: status line, the server's headers and ours, body."""


class HttpReply:
    """A whole response written straight to uvicorn's httptools cycle, as its ``send`` would.

    For an answer built once for many requests (a long-poll's, polls.py):
    no ASGI send chain, no task to wake before the bytes leave. The
    cycle's state moves exactly as two ``send`` calls would move it
    (started, complete, keep-alive or close, the next pipelined request).
    ``writes`` False: middleware wraps ``send`` (CORS), so the answer goes
    through it; the cycle is still asked whether the client reads or left.
    """

    __slots__ = ("_cycle", "writes")

    def __init__(self, cycle: RequestResponseCycle, writes: bool = True) -> None:
        self._cycle = cycle
        self.writes = writes

    def write(self, response: object) -> bool:
        """Write ``response`` (a ``WholeResponse``) now; False when the request cannot take it."""
        cycle = self._cycle
        transport: asyncio.Transport = cycle.transport
        if not self.writes or cycle.response_started or cycle.disconnected:
            return False
        if transport.is_closing() or cycle.flow.write_paused:
            return False  # (paused: the client reads nothing; ``sent`` waits for it)
        assert hasattr(response, "wire")
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        transport.write(response.wire(cycle.default_headers, cycle.keep_alive))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            transport.close()
        cycle.on_response()
        return True

    async def sent(self, response: object) -> bool:
        """``write`` once the client reads again; True also when it left (nothing to write).

        False: through ``send`` (at once, with nothing to wait for). uvicorn's
        own ``send`` waits for a paused client too, but when the client
        leaves it marks gone only the newest request of a connection: one
        answering behind a pipelined request would then write to a closed
        transport (a traceback under uvloop).
        """
        cycle = self._cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected or cycle.transport.is_closing():
            cycle.disconnected = True  # (as the protocol will say: no "returned without" error)
            return True
        return self.write(response)


def http_reply(scope: Scope, send: Send) -> HttpReply | None:
    """The request's httptools cycle, to write whole responses straight to the socket.

    It writes only when ``send`` is uvicorn's cycle itself (not under
    middleware that wraps ``send``: CORS, a parent app's), not for HEAD, not
    with uvicorn's access log on.
    """
    if scope["method"] != "GET":
        return None
    cycle = _cycle(scope)
    if cycle is None or cycle.response_started:
        return None
    _list_waiters(cycle.flow._is_writable_event)  # (the connection's: a waiting poll's too)
    if scope.get(RAW_SEND) is not send:
        return HttpReply(cycle, writes=False)
    if cycle.access_log and cycle.access_logger.isEnabledFor(logging.INFO):
        return HttpReply(cycle, writes=False)  # its line would be written by ``send``
    return HttpReply(cycle)


class _LostSignal(asyncio.Event):
    """uvicorn's per-request event, which also calls ``lost`` once the client is gone."""

    def __init__(self, cycle: RequestResponseCycle, lost: Callable[[], None]) -> None:
        super().__init__()
        _list_waiters(self)
        self._cycle: RequestResponseCycle | None = cycle
        self._lost = lost
        if cycle.message_event.is_set():
            super().set()

    def set(self) -> None:
        super().set()
        cycle = self._cycle
        if cycle is not None and cycle.disconnected:
            self._lost()

    def undo(self) -> None:
        """No more calls; the event and its cycle no longer refer to each other."""
        self._cycle = None


def _list_waiters(event: asyncio.Event) -> None:
    """An event's waiters in a list: an empty ``deque`` takes ~700 bytes, an empty list 56.

    An SSE stream or a waiting poll holds two events for its whole life
    (its flow control's and its request's), with nobody waiting on them
    almost always: 1.4 KB of the ~13 KB of Python objects per idle stream
    (tracemalloc, bench/ws_memory.py). ``wait`` appends and removes,
    ``set`` iterates: a list serves. (Checked at start: http-direct.)
    """
    waiters = event._waiters
    if not waiters and not isinstance(waiters, list):
        event._waiters = []  # type: ignore[assignment]


def compact_dict(obj: object) -> None:
    """Give ``obj`` a copy of its instance dict, sized for the keys it has.

    uvicorn's protocols set 34-40 attributes one by one, past the 30 a
    shared-key dict holds: the dict grew to a table for twice as many
    (1,584 bytes), which a copy holds in 832. For an object every later
    assignment of which is to a key it has (it does not grow again) and
    that a connection keeps for its whole life (ws_lean.py, protocol.py).
    """
    obj.__dict__ = dict(vars(obj))


def on_http_lost(scope: Scope, lost: Callable[[], None]) -> Callable[[], None] | None:
    """Call ``lost`` once uvicorn's HTTP protocol learns the client is gone; None if it can't.

    Returns the undo: the event and the request's cycle refer to each
    other, a reference cycle only the garbage collector would free, so a
    short request (a poll) takes it off when it ends.

    A client that closes or resets its connection is told to the protocol
    (``connection_lost``), which marks the request's cycle ``disconnected``
    and sets its ``message_event``, for a ``receive()`` that may be
    waiting. An SSE stream or a poll waits on its subscription instead, and
    would notice only at its next write (a heartbeat, up to
    ``GATEWAY_HEARTBEAT`` away) or its timeout, holding its place in
    ``GATEWAY_MAX_CONNECTIONS`` meanwhile. So that event is swapped, for
    this request only, for one that also closes the subscription (or the
    connection's several): no task, no timer, no sweep. Only while no
    ``receive()`` waits on it (the caller's own task is here).
    """
    cycle = _cycle(scope)
    if cycle is None:
        return None
    signal = cycle.message_event = _LostSignal(cycle, lost)
    return signal.undo


def sse_sink(scope: Scope) -> SseSink | None:
    """The fast path for an HTTP response already started with chunked encoding, if any."""
    cycle = _cycle(scope)
    if cycle is None or not cycle.response_started or cycle.chunked_encoding is not True:
        return None
    return SseSink(cycle)


def ws_sink(scope: Scope) -> WsSink | None:
    """The fast path for an accepted WebSocket, if any."""
    if not accelerations.on(accelerations.WS_DIRECT):
        return None
    proto = _owner(scope, WebSocketsSansIOProtocol)
    if proto is None or not proto.handshake_complete or proto.conn.state is not State.OPEN:
        return None
    inbox = proto.queue
    if not isinstance(inbox, SinkWatch) or proto.close_sent or proto.disconnected:
        return WsSink(proto)  # (ended: no disconnect is coming to undo a watch)
    if inbox.sink is None:
        inbox.sink = WsSink(proto, watched=True)
    return inbox.sink


def _cycle(scope: Scope) -> RequestResponseCycle | None:
    """uvicorn's httptools request cycle behind the scope's ``send``, when that may be used."""
    if not accelerations.on(accelerations.HTTP_DIRECT):
        return None
    return _owner(scope, RequestResponseCycle)


def _owner(scope: Scope, kind: type[_Owner]) -> _Owner | None:
    """The object whose bound ``send`` the server gave, when it is exactly the class we know."""
    send: Send | None = scope.get(RAW_SEND)
    owner = getattr(send, "__self__", None)
    return owner if type(owner) is kind else None
