"""Messages, ids and cursors, and each message's wire encodings, built once.

An id is ``<epoch>:<ms>-<seq>``. The epoch names one life of a channel's
history (it changes when history is lost: Redis restarted without
persistence, the stream deleted, the embedded broker restarted); the
position ``<ms>-<seq>`` is a Redis stream id, strictly increasing within the
epoch. Clients treat the whole string as opaque.

A ``Message`` is shared by every subscriber of its channel. Its SSE frame,
WebSocket text and JSON object are computed on first use and cached on the
object, so fan-out to N clients encodes once per wire format, not N times.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import NamedTuple

import orjson

from gateway.errors import BadRequest, TooLarge

CHANNEL_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
EVENT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
EPOCH_RE = re.compile(r"^[A-Za-z0-9]{1,32}$")
POSITION_RE = re.compile(r"^(\d{1,20})-(\d{1,20})$")
DEFAULT_EVENT = "message"

Position = tuple[int, int]


def check_channel(channel: str) -> str:
    if not CHANNEL_RE.match(channel):
        raise BadRequest("invalid channel name: use 1-128 characters of A-Z a-z 0-9 _ . : -")
    return channel


def check_event(event: str | None) -> str:
    if event is None or event == "":
        return DEFAULT_EVENT
    if not EVENT_RE.match(event):
        raise BadRequest("invalid event name: use 1-64 characters of A-Z a-z 0-9 _ . : -")
    return event


def check_publish(channel: str, data: str, event: str | None, max_bytes: int) -> str:
    """A publish from Python, checked as the HTTP route checks one; returns its event's name."""
    if not isinstance(data, str):
        raise TypeError("data must be str (a JSON payload travels as its text)")
    check_channel(channel)
    checked_event = check_event(event)
    try:
        size = len(data.encode())
    except UnicodeEncodeError:
        raise BadRequest("data is not valid UTF-8 text") from None
    if size > max_bytes:
        raise TooLarge(f"message larger than {max_bytes} bytes")
    return checked_event


def parse_position(text: str) -> Position:
    match = POSITION_RE.match(text)
    assert match is not None, f"not a stream position: {text!r}"
    return int(match.group(1)), int(match.group(2))


def format_position(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


class Cursor(NamedTuple):
    """Where a client stands: after ``position`` in ``epoch``.

    ``Cursor.START`` (``since=0``) stands before all history of any epoch.
    """

    epoch: str | None
    position: Position

    @classmethod
    def parse(cls, text: str) -> Cursor:
        return _parse_cursor(text)

    def __str__(self) -> str:
        if self.epoch is None:
            return "0"
        return f"{self.epoch}:{format_position(self.position)}"

    def shared(self) -> Cursor:
        """The object ``parse`` gives for this cursor's text: a poller that sends it back
        holds this very object, and the hub tells it is caught up by identity."""
        try:
            return _parse_cursor(str(self))
        except BadRequest:
            return self


START = Cursor(None, (0, 0))


@functools.lru_cache(maxsize=4096)
def _parse_cursor(text: str) -> Cursor:
    """A cursor parsed once: thousands of pollers send the same one (a malformed one raises)."""
    if text == "0":
        return START
    epoch, sep, position = text.partition(":")
    if not sep or not EPOCH_RE.match(epoch) or not POSITION_RE.match(position):
        raise BadRequest(f"malformed cursor {text[:80]!r}: expected an id the gateway gave, or 0")
    return Cursor(epoch, parse_position(position))


@dataclass(eq=False, slots=True)
class Message:
    """One published message; ``epoch`` is ``None`` for a fire-and-forget one."""

    channel: str
    event: str
    data: str
    epoch: str | None = None
    position: Position = (0, 0)
    published_at: float = 0.0
    _sse: bytes | None = None
    _ws: str | None = None
    _ws_frame: bytes | None = None
    _json: bytes | None = None
    _mux_sse: bytes | None = None
    segment: bytes | None = None  # its composite-cursor segment, kept by composite.segment_of

    @property
    def id(self) -> str:
        if self.epoch is None:
            return ""
        return f"{self.epoch}:{format_position(self.position)}"

    @property
    def cursor(self) -> Cursor | None:
        return None if self.epoch is None else Cursor(self.epoch, self.position)

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "channel": self.channel, "event": self.event, "data": self.data}

    @property
    def json(self) -> bytes:
        """The poll encoding: ``{"id","channel","event","data"}``."""
        if self._json is None:
            self._json = orjson.dumps(self.as_dict())
        return self._json

    @property
    def ws_text(self) -> str:
        """The WebSocket frame: the poll object with ``"type": "message"``."""
        if self._ws is None:
            self._ws = orjson.dumps({"type": "message", **self.as_dict()}).decode()
        return self._ws

    @property
    def ws_frame(self) -> bytes:
        """``ws_text`` as a whole server-to-client WebSocket frame (RFC 6455, unmasked)."""
        if self._ws_frame is None:
            self._ws_frame = ws_frame(self.ws_text.encode())
        return self._ws_frame

    @property
    def mux_sse(self) -> bytes:
        """A several-channel SSE event, but its ``id:`` line: ``data: <json>`` (no ``event:``).

        The ``id:`` (the connection's composite cursor) is per connection and goes before it.
        """
        if self._mux_sse is None:
            self._mux_sse = b"data: " + self.json + b"\n\n"
        return self._mux_sse

    @property
    def sse(self) -> bytes:
        """One complete SSE event, per the WHATWG event-stream grammar."""
        if self._sse is None:
            self._sse = sse_frame(self.event, self.data, self.id)
        return self._sse


@dataclass(frozen=True, slots=True)
class Gap:
    """History no longer holds everything after the client's cursor."""


GAP = Gap()
Item = Message | Gap

# A fan-out batch, and a writer's one write: at most this many items and
# about this much data, so a slow client's transport never takes much more.
BATCH_ITEMS = 64
BATCH_BYTES = 65536


def data_size(item: Item) -> int:
    """What an item counts against ``BATCH_BYTES``: its data's length."""
    return len(item.data) if isinstance(item, Message) else 0


def sse_event(item: Item) -> bytes:
    """The item's SSE event (a gap is ``event: gap``)."""
    return GAP_SSE if isinstance(item, Gap) else item.sse


class Batch:
    """Items fanned out together: each wire's bytes are built once for every subscriber.

    A subscriber that takes the whole batch gets the very same ``bytes``
    object (one write of it per client), however many subscribers there are.
    """

    __slots__ = ("_sse", "_ws", "items")

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self._sse: bytes | None = None
        self._ws: bytes | None = None

    @property
    def sse_chunk(self) -> bytes:
        """The SSE events of the batch as one HTTP/1.1 chunk: size in hex, CRLF, events, CRLF."""
        if self._sse is None:
            body = b"".join(sse_event(item) for item in self.items)
            self._sse = b"%x\r\n%b\r\n" % (len(body), body)
        return self._sse

    @property
    def ws_frames(self) -> bytes:
        """One WebSocket frame per item, back to back."""
        if self._ws is None:
            frames = (GAP_WS_FRAME if isinstance(i, Gap) else i.ws_frame for i in self.items)
            self._ws = b"".join(frames)
        return self._ws


def sse_frame(event: str, data: str, event_id: str = "") -> bytes:
    """Build an SSE event; every line of ``data`` gets its own ``data:`` field.

    ``data.splitlines()`` would also split on characters the SSE parser keeps
    (form feed, U+2028, ...), so only CR LF, CR and LF are line ends here.
    """
    lines = [f"id: {event_id}"] if event_id else []
    lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in _sse_lines(data))
    return ("\n".join(lines) + "\n\n").encode()


def _sse_lines(data: str) -> list[str]:
    return data.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def ws_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame: what a server sends (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


GAP_SSE = sse_frame("gap", '{"type":"gap"}')
GAP_WS = '{"type":"gap"}'
GAP_WS_FRAME = ws_frame(GAP_WS.encode())
