"""A client's text frame answered in uvicorn's protocol callback, with no task woken.

Why: through ASGI, each publish frame of a WebSocket crossed uvicorn's
receive queue (a dict per frame, the socket's reading paused then resumed:
two ``epoll_ctl`` calls), Starlette's ``receive``, the reader task's wakeup,
and for its ack the writer task's wakeup and the send chain (Starlette,
uvicorn, websockets framing the text again). Profiled under 64 publishing
connections (bench/README.md) that was about half the gateway's CPU per
frame, beside Nchan's whole publish.

How: ``take_text_frames`` gives an accepted socket's uvicorn protocol
(``WebSocketsSansIOProtocol``, the one ``--ws auto`` picks) a
``handle_text`` of its own, an instance attribute that shadows the
method for this socket alone. A whole text frame (``fin``) that arrives
while nothing of the client waits in the receive queue is offered to the
transport's handler first, as its raw UTF-8 bytes; the handler answers it
and returns True, or returns False and the frame goes uvicorn's way,
exactly as before (a frame of another kind, one that arrives while an
earlier one is still being answered, one past the size limit). So the
handler decides only what it can answer the way the plain path would.

Under another server, another WebSocket implementation, or with the
acceleration off, nothing is installed and every frame goes through ASGI.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

from gateway.server import accelerations
from gateway.server.direct import RAW_SEND

# A whole text frame's payload (UTF-8, not yet checked): True when answered here.
TextHandler = Callable[[bytes], bool]


def take_text_frames(websocket: WebSocket, handler: TextHandler) -> bool:
    """Offer the accepted socket's text frames to ``handler`` first; False: not possible here."""
    if not accelerations.on(accelerations.WS_FRAMES):
        return False
    proto = getattr(websocket.scope.get(RAW_SEND), "__self__", None)
    if type(proto) is not WebSocketsSansIOProtocol or not proto.handshake_complete:
        return False
    proto.handle_text = _HandleText(proto, handler)  # type: ignore[method-assign]
    return True


class _HandleText:
    """``WebSocketsSansIOProtocol.handle_text`` for one socket: the handler first."""

    __slots__ = ("_handler", "_proto")

    def __init__(self, proto: WebSocketsSansIOProtocol, handler: TextHandler) -> None:
        self._proto = proto
        self._handler = handler

    def __call__(self, event: Frame) -> None:
        proto = self._proto
        # Only with nothing queued ahead of it: frames are answered in the order they came.
        if event.fin and not proto.close_sent and proto.queue.empty():
            data = event.data
            if self._handler(data if type(data) is bytes else bytes(data)):
                return
        WebSocketsSansIOProtocol.handle_text(proto, event)
