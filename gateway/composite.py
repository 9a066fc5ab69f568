"""The composite cursor: every channel's position of a several-channel connection, in one id.

Over ``GET /sse?channel=…`` each event's ``id:`` is the composite, so that a
native ``EventSource``'s automatic reconnect (``Last-Event-ID``) resumes every
channel at once; ``GET /poll?channel=…`` answers it too (``"cursor"``). To
clients it is opaque. Inside (version 1):

    <check>.<segment>.<segment>…     one segment per channel, in URL order

* ``check``: base64url (no padding) of the CRC-32 of the channel names
  joined by LF: 6 characters. A composite given with another channel list
  (other names, order or count) is refused (400), never misapplied.
* a segment is ``0`` for "all history" (``since=0``), else base64url (no
  padding) of: one byte, bit 7 set when the epoch is lowercase hex packed
  two digits a byte, bits 0-6 the epoch's length in characters; the epoch;
  then the position ``<ms>-<seq>`` as two unsigned LEB128 varints.

Every id the gateway gives (a hex epoch of at most 32 digits, a stream id
whose ms is a time) makes a segment of at most 46 characters: a composite
grows by at most 47 bytes per channel (the SPEC allows 48). The segment of a
message is built once and kept on it (``segment_of``): a delivery to a
connection joins segments, it encodes nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Sequence

from gateway.errors import BadRequest
from gateway.message import EPOCH_RE, START, Cursor, Message

HEX_RE = re.compile(r"^[0-9a-f]+$")
HEX_FLAG = 0x80
MAX_VARINT_BYTES = 10  # a 64-bit number
START_SEGMENT = b"0"


def check_of(channels: Sequence[str]) -> bytes:
    """The composite's first part: which channel list (names and order) it is for."""
    crc = zlib.crc32("\n".join(channels).encode())
    return _b64(crc.to_bytes(4, "big"))


def segment(epoch: str | None, position: tuple[int, int]) -> bytes:
    if epoch is None:
        return START_SEGMENT
    if HEX_RE.match(epoch):
        raw = bytes([HEX_FLAG | len(epoch)]) + bytes.fromhex(
            epoch.zfill(len(epoch) + len(epoch) % 2)
        )
    else:
        raw = bytes([len(epoch)]) + epoch.encode()
    return _b64(raw + _varint(position[0]) + _varint(position[1]))


def segment_of(message: Message) -> bytes:
    """The message's segment, built once for every connection that delivers it."""
    code = message.segment
    if code is None:
        code = message.segment = segment(message.epoch, message.position)
    return code


def encode(channels: Sequence[str], cursors: Sequence[Cursor]) -> str:
    parts = [check_of(channels), *(segment(c.epoch, c.position) for c in cursors)]
    return b".".join(parts).decode()


def decode(text: str, channels: Sequence[str]) -> list[Cursor]:
    """The cursors a composite names, one per channel; 400 when malformed or for other channels."""
    parts = text.encode(errors="replace").split(b".")
    if len(parts) < 2:
        raise BadRequest(
            f"malformed cursor {text[:80]!r}: expected a composite cursor the gateway gave"
        )
    if parts[0] != check_of(channels) or len(parts) - 1 != len(channels):
        raise BadRequest(
            "cursor does not match the channels named: a composite cursor resumes the very "
            "channel list, in the same order, it was given for"
        )
    return [_cursor(part, text) for part in parts[1:]]


class Composite:
    """One connection's composite, advanced message by message (per connection: a join)."""

    __slots__ = ("_parts",)

    def __init__(self, channels: Sequence[str], cursors: Sequence[Cursor]) -> None:
        self._parts = [check_of(channels), *(segment(c.epoch, c.position) for c in cursors)]

    def advance(self, index: int, message: Message) -> None:
        self._parts[index + 1] = segment_of(message)

    @property
    def text(self) -> bytes:
        return b".".join(self._parts)


def _cursor(part: bytes, text: str) -> Cursor:
    if part == START_SEGMENT:
        return START
    try:
        raw = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
        head = raw[0]
        length = head & ~HEX_FLAG
        if head & HEX_FLAG:
            size = (length + 1) // 2
            epoch = raw[1 : 1 + size].hex()[-length:] if length else ""
            if len(raw[1 : 1 + size]) != size:
                raise ValueError("short epoch")
        else:
            size = length
            epoch = raw[1 : 1 + size].decode("ascii")
        ms, at = _read_varint(raw, 1 + size)
        seq, end = _read_varint(raw, at)
        if end != len(raw) or len(epoch) != length or not EPOCH_RE.match(epoch):
            raise ValueError("trailing bytes or bad epoch")
    except (ValueError, IndexError, binascii.Error, UnicodeDecodeError):
        raise BadRequest(
            f"malformed cursor {text[:80]!r}: expected a composite cursor the gateway gave"
        ) from None
    return Cursor(epoch, (ms, seq))


def _b64(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(raw: bytes, at: int) -> tuple[int, int]:
    number = shift = 0
    for index in range(at, min(at + MAX_VARINT_BYTES, len(raw))):
        byte = raw[index]
        number |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return number, index + 1
        shift += 7
    raise ValueError("truncated varint")
