"""A client's text frame answered as its bytes arrive, before websockets parses it.

Why: through ASGI, each publish frame of a WebSocket was parsed by
websockets' generator-based parser (about 8 µs a frame here), crossed
uvicorn's receive queue (a dict per frame, the socket's reading paused
then resumed: two ``epoll_ctl`` calls), Starlette's ``receive``, the reader
task's wakeup, and for its ack the writer task's wakeup and the send chain
(Starlette, uvicorn, websockets framing the text again). Profiled under 64
publishing connections (bench/README.md) that was about half the
gateway's CPU per frame, beside Nchan's whole publish.

How: ``take_text_frames`` gives an accepted socket's websockets protocol
(``conn`` of uvicorn's ``WebSocketsSansIOProtocol``, the one ``--ws auto``
picks) a ``receive_data`` of its own, an instance attribute that shadows
the method for this socket alone (uvicorn looks it up at every call). When
websockets' parser stands at a frame boundary with nothing buffered (its
innermost generator is ``StreamReader.at_eof``, the top of its loop), the
connection is open with no fragmented message under way, no extension
and nothing queued for the app, each whole, final, masked text frame at
the head of the bytes is unmasked here and offered to the transport's
handler. The handler answers it and returns True, or returns False; from
the first frame not taken on (another opcode, a partial frame, one past
the size limit, one the handler declines), the bytes go to websockets
exactly as before. Websockets never sees a frame taken here, and sees
every other byte in order, from a frame boundary: its own state is what it
would have been, less the frames answered (a ping, a close, a protocol
error are still its own). A frame that is not valid UTF-8 or JSON is
declined by the handler, so uvicorn and the reader answer it as before.

Under another server, another WebSocket implementation, an extension
(permessage-deflate), or with the acceleration off, nothing is installed
and every frame goes through websockets and ASGI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State
from websockets.streams import StreamReader

try:
    from websockets.speedups import apply_mask
except ImportError:  # (as websockets.frames does)
    from websockets.utils import apply_mask

from gateway.server import accelerations
from gateway.server.direct import RAW_SEND

# A whole text frame's payload (UTF-8, not yet checked): True when answered here.
TextHandler = Callable[[bytes], bool]
_AT_EOF = StreamReader.at_eof.__code__  # where websockets' parser waits between frames
TEXT_FINAL = 0x81  # FIN, no RSV bit, opcode 1 (RFC 6455 section 5.2)


def take_text_frames(websocket: WebSocket, handler: TextHandler) -> bool:
    """Offer the accepted socket's text frames to ``handler`` first; False: not possible here."""
    if not accelerations.on(accelerations.WS_FRAMES):
        return False
    proto = getattr(websocket.scope.get(RAW_SEND), "__self__", None)
    if type(proto) is not WebSocketsSansIOProtocol or not proto.handshake_complete:
        return False
    conn = proto.conn
    if conn.extensions or "receive_data" in vars(conn):
        return False
    conn.receive_data = _ReceiveData(proto, handler)  # type: ignore[method-assign]
    return True


class _ReceiveData:
    """``Protocol.receive_data`` for one socket: whole text frames to the handler first."""

    __slots__ = ("_handler", "_most", "_proto", "_receive")

    def __init__(self, proto: WebSocketsSansIOProtocol, handler: TextHandler) -> None:
        conn = proto.conn
        self._proto = proto
        self._handler = handler
        self._receive = type(conn).receive_data.__get__(conn)
        sizes = [s for s in (conn.max_message_size, conn.max_fragment_size) if s is not None]
        self._most = min(sizes) if sizes else 1 << 62  # (larger: websockets says 1009)

    def __call__(self, data: bytes | bytearray) -> None:
        if self._aligned():
            taken = self._take(data)
            if taken == len(data):
                return
            data = data[taken:]
        self._receive(data)

    def _aligned(self) -> bool:
        """Whether websockets' parser waits for a new frame, with nothing of ours ahead of it."""
        proto = self._proto
        conn: Any = proto.conn
        if conn.state is not State.OPEN or conn.current_size is not None or conn.events:
            return False
        if conn.reader.buffer or conn.parser_exc is not None or proto.close_sent:
            return False
        if not proto.queue.empty():
            return False  # (frames queued for the app are answered first)
        parser = conn.parser
        while (inner := parser.gi_yieldfrom) is not None:
            parser = inner
        return parser.gi_code is _AT_EOF

    def _take(self, data: bytes | bytearray) -> int:
        """Offer the whole text frames at the head of ``data``; how many bytes were taken."""
        end, size, handler = 0, len(data), self._handler
        while size - end >= 6:  # (two bytes of header, four of mask: the least a frame has)
            if data[end] != TEXT_FINAL or not data[end + 1] & 0x80:
                break
            length, head = data[end + 1] & 0x7F, end + 2
            if length == 126:
                if size - end < 8:
                    break
                length, head = int.from_bytes(data[head : head + 2], "big"), head + 2
            elif length == 127:
                break
            stop = head + 4 + length
            if stop > size or length > self._most:
                break
            payload = apply_mask(data[head + 4 : stop], data[head : head + 4])
            if not handler(payload):
                break
            end = stop
        return end
