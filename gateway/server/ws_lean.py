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
* its keepalive: uvicorn arms a timer per socket for the next ping (and
  another per ping for the pong), about 540 bytes each kept for the
  socket's life (a ``TimerHandle``, its libuv timer, a ``Context``, the
  bound method). ``Pings`` sends the same pings, with the same payloads,
  interval and timeout, from one timer per event loop ticking once a
  second over a wheel of per-second buckets: a socket costs a weak
  reference in a list.
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
from typing import Any, ClassVar

from starlette.websockets import WebSocket
from websockets.datastructures import Headers
from websockets.http11 import Request

from gateway.server import accelerations
from gateway.server.direct import RAW_SEND


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


_NO_HEADERS = Headers()


class Inbox:
    """A receive queue for one reader: what uvicorn's protocol uses of ``asyncio.Queue``."""

    __slots__ = ("_items", "_waiter")

    def __init__(self, items: Any = ()) -> None:
        self._items: list[Any] = list(items)
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            assert self._waiter is None, "one reader at a time"
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


PING_TICK_S = 1.0
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
            for ref in self._buckets.pop(second):
                proto = ref()
                if proto is not None:
                    self._visit(proto, now)
        if self._buckets:
            self._timer = self._loop.call_at(max(now + PING_TICK_S, min(self._buckets)), self._tick)

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
