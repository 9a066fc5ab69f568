"""An accepted WebSocket, trimmed to what an idle socket needs: about 5 KB less each.

Why: an idle WebSocket cost 19 KB of RSS at 10,000 connections, against
15 KB for an SSE stream and 10 KB in Nchan (bench/README.md). tracemalloc
on 1,000 idle sockets (``bench/ws_memory.py``) showed what uvicorn's
websockets-sansio protocol keeps after the handshake that nothing reads
again, or keeps in a heavier shape than one reader needs:

* websockets' handshake ``Request`` and ``Response`` with their
  ``Headers``, held by uvicorn, by the scope and by Starlette's parsed copy
  (and its parsed query string, the scope's ASGI extensions);
  and the ``Request`` once more, as a local variable of the server's
  parser generator (``ServerProtocol.parse``), for the socket's whole life.
  That one cannot be let go, so its ``Headers`` are: the request keeps an
  empty set. (Swapping that generator for the frame parser it runs, at a
  frame boundary, freed the frame too, but a browser test then lost a
  client's frames about one run in five, for no cause found: not done.)
* uvicorn's receive queue, an ``asyncio.Queue`` (two ``deque``s of about
  630 bytes each when empty, its ``join`` event, its putters) for one
  reader and one writer: an ``Inbox`` does what uvicorn asks of it
  (``put_nowait``, ``get``, ``empty``) in a list and one future.
* the waiters ``deque`` of its ``writable`` event, which a list serves.
* its instance dict, grown key by key to a table for twice its 34
  attributes: a copy is 752 bytes smaller.
* its keepalive: uvicorn arms a timer per socket for the next ping (and
  another per ping for the pong), about 540 bytes each kept for the
  socket's life (a ``TimerHandle``, its libuv timer, a ``Context``, the
  bound method). ``Pings`` sends the same pings, with the same payloads,
  interval and timeout, from one timer per event loop ticking once a
  second over a wheel of per-second buckets: a socket costs a weak
  reference in a list. The sockets of a bucket are pinged
  ``PING_SLICE`` per turn of the loop, other work between.
  A ping leaves up to ``PING_TICK_S`` after uvicorn would send it.

Everything here only touches uvicorn's ``WebSocketsSansIOProtocol`` (the
one ``--ws auto`` picks); under another server nothing changes.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import weakref
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from starlette.websockets import WebSocket, WebSocketState
from websockets.datastructures import Headers
from websockets.http11 import Request

from gateway.server import accelerations
from gateway.server.direct import RAW_SEND, SinkWatch, compact_dict


def forget_handshake(websocket: WebSocket) -> None:
    """After ``accept``: drop what the handshake left, slim the receive queue and the parser."""
    if not accelerations.on(accelerations.WS_LEAN):
        return
    proto = getattr(websocket.scope.get(RAW_SEND), "__self__", None)
    if proto is None or type(proto).__name__ != "WebSocketsSansIOProtocol":
        return
    if isinstance(proto.request, Request):
        proto.request.headers = _NO_HEADERS  # (the parser's frame holds the request)
    proto.request = proto.response = None
    websocket.scope["headers"] = []
    websocket.scope.pop("extensions", None)  # (the denial response's: only before accept)
    for cached in ("_headers", "_query_params", "_url"):  # (Starlette parses again if asked)
        vars(websocket).pop(cached, None)
    writable = proto.writable
    if isinstance(writable, asyncio.Event) and not writable._waiters:
        writable._waiters = []  # type: ignore[assignment]
    queue = proto.queue
    if type(queue) is asyncio.Queue and not queue._getters:  # type: ignore[attr-defined]
        proto.queue = Inbox(queue._queue)  # type: ignore[attr-defined]
    if proto.ping_timer is not None and proto.pong_timer is None and proto.ping_timeout:
        Pings.of(proto.loop).take_over(proto)
    compact_dict(proto)


_NO_HEADERS = Headers()
# What the readers make of a RuntimeError in ``receive`` (read-only: one for all sockets).
GONE: Mapping[str, Any] = MappingProxyType({"type": "websocket.disconnect"})


def lean_inbox(websocket: WebSocket) -> Inbox | None:
    """The socket's ``Inbox`` when its messages may be taken from it (``take``): ws-lean
    took uvicorn's queue, and the app's ``receive`` is uvicorn's own, wrapped by nothing.

    Why: a reader waiting in ``await websocket.receive()`` holds four coroutines
    for the socket's whole idle life (the reader's helper, Starlette's
    ``receive``, uvicorn's ``receive``, the queue's ``get``: ~0.8 KB of the
    ~12.7 KB of Python per idle WebSocket, bench/ws_memory.py); a reader
    that takes what is queued and otherwise awaits ``arrival()`` holds none.
    """
    receive: Any = getattr(websocket, "_receive", None)
    proto: Any = getattr(receive, "__self__", None)
    if type(proto).__name__ != "WebSocketsSansIOProtocol":
        return None
    if getattr(receive, "__func__", None) is not type(proto).receive:
        return None
    queue = proto.queue
    return queue if type(queue) is Inbox else None


def take(websocket: WebSocket, inbox: Inbox) -> Mapping[str, Any] | None:
    """What ``await websocket.receive()`` gives when a message is queued; None when none is
    (then await ``inbox.arrival()`` and take again).

    As uvicorn's ``receive`` and Starlette's ``WebSocket.receive`` do for a
    connected socket: the message, the socket read again once none is left
    queued (uvicorn pauses reading at each message), the socket marked
    disconnected at a disconnect. Where Starlette would raise (a socket not
    connected, a message of another type), the disconnect the readers make
    of that error.
    """
    items = inbox._items
    if not items:
        return None
    if websocket.client_state is not WebSocketState.CONNECTED:
        return GONE
    message: dict[str, Any] = items.pop(0)
    proto: Any = websocket._receive.__self__  # type: ignore[attr-defined]
    if proto.read_paused and not items:
        proto.read_paused = False
        proto.transport.resume_reading()
    kind = message["type"]
    if kind == "websocket.disconnect":
        websocket.client_state = WebSocketState.DISCONNECTED
    elif kind != "websocket.receive":
        return GONE
    return message


class Inbox(SinkWatch):
    """A receive queue for one reader: what uvicorn's protocol uses of ``asyncio.Queue``.

    It also watches the connection's direct sink (``SinkWatch``): uvicorn queues a
    disconnect before every close frame it sends with the transport left open.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self, items: Any = ()) -> None:
        super().__init__()
        self._items: list[Any] = list(items)
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self.queued(item)
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def arrival(self) -> asyncio.Future[None]:
        """Done when an item arrives (one reader: the same future until then)."""
        waiter = self._waiter
        if waiter is None or waiter.done():  # (done: its reader was cancelled)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    async def get(self) -> Any:
        while not self._items:
            await self.arrival()
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


PING_TICK_S = 1.0
PING_SLICE = 128  # sockets visited in one turn of the loop (``Pings._work``)
DUE_SLACK_S = 0.05  # a ping or its timeout this much early counts as due (the timer's lateness)


class Pings:
    """Every socket's keepalive ping on one loop, from one timer: what uvicorn's timers did.

    As uvicorn's ``send_keepalive_ping``: a random 4-byte payload
    ``ping_interval`` seconds after the previous ping; a socket whose pong
    has not come ``ping_timeout`` seconds after its ping is failed with
    1011 by uvicorn's own ``keepalive_timeout``. uvicorn's ``handle_pong``
    clears the payload and, with no pong timer of its own, arms nothing.
    Buckets hold weak references (80 bytes): a socket that closed is freed
    at once, as it was when its cancelled timers let it go, and its dead
    reference is dropped when its bucket comes due.
    """

    # One per event loop (a test suite runs many); nothing else holds them.
    _loops: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pings]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, list[weakref.ref[Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._due: deque[weakref.ref[Any]] = deque()  # come due, not visited yet
        self._working = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Pings:
        pings = cls._loops.get(loop)
        if pings is None:
            pings = cls._loops[loop] = cls(loop)
        return pings

    def take_over(self, proto: Any) -> None:
        """Cancel the socket's own ping timer; its pings come from here from now."""
        proto.stop_keepalive()
        proto.ping_sent_at = self._loop.time()  # (the first ping: one interval from now)
        self._file(proto, proto.ping_sent_at + proto.ping_interval)

    def _file(self, proto: Any, due: float) -> None:
        # (a tick fires a little after its second: a ping sent then is due a little
        # after a later second, which must still be that second's, not the next)
        second = math.ceil(due - DUE_SLACK_S)
        self._buckets.setdefault(second, []).append(weakref.ref(proto))
        timer = self._timer
        if timer is None or second < timer.when():
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(second, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._loop.time()
        for second in sorted(s for s in self._buckets if s <= now):
            self._due.extend(self._buckets.pop(second))
        if not self._working:
            self._work()
        if self._buckets and self._timer is None:
            self._timer = self._loop.call_at(max(now + PING_TICK_S, min(self._buckets)), self._tick)

    def _work(self) -> None:
        """Visit ``PING_SLICE`` of the sockets come due; the rest after what is ready now.

        Why: a second's bucket holds every socket opened in that second
        (thousands, after a deploy), and a ping costs 8-30 µs under load
        (10,000 WebSockets at 10 msg/s: a bucket of 2,560 took 22-78 ms).
        Visited at once, they held every message due meanwhile: the
        fan-out's tail. A slice holds one back ~3 ms at most.
        """
        due = self._due
        now = self._loop.time()
        for _ in range(min(PING_SLICE, len(due))):
            proto = due.popleft()()
            if proto is not None:
                self._visit(proto, now)
        self._working = bool(due)
        if due:
            self._loop.call_soon(self._work)

    def _visit(self, proto: Any, now: float) -> None:
        if proto.close_sent or proto.disconnected or proto.transport.is_closing():
            return
        if proto.pending_ping_payload is not None:  # no pong yet
            if now + DUE_SLACK_S - proto.ping_sent_at >= proto.ping_timeout:
                proto.keepalive_timeout()
                return
            self._file(proto, proto.ping_sent_at + proto.ping_timeout)
            return
        due = proto.ping_sent_at + proto.ping_interval  # (uvicorn: pong's time + interval - rtt)
        if now + DUE_SLACK_S >= due:
            _ping(proto, now)
            self._file(proto, now + min(proto.ping_interval, proto.ping_timeout))
        else:
            self._file(proto, due)


def _ping(proto: Any, now: float) -> None:
    """uvicorn's ``send_keepalive_ping``, without arming the pong timer."""
    proto.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
    proto.ping_sent_at = now
    proto.conn.send_ping(proto.pending_ping_payload)
    proto.transport.write(b"".join(proto.conn.data_to_send()))
