"""What a several-channel route reads from a request: its channels, each with a cursor.

``?channel=NAME`` (only new messages), ``NAME@0`` (all history) or
``NAME@<id>`` (after that id), repeated; ``?last=N`` applies to every channel
named without ``@``. A composite cursor (composite.py), from ``Last-Event-ID``
or ``?cursor=``, wins over the cursors in the URL and must be for the very
same channel list. Every refusal is a 400 naming what was wrong; a URL or a
header past 8 KiB is 414 or 431 (the SPEC's bound: browsers and proxies
commonly stop near there, and it bounds what one request may ask).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway import composite
from gateway.errors import BadRequest, GatewayError, HeaderTooLarge, UriTooLong
from gateway.message import Cursor, check_channel
from gateway.transports.common import int_param

MAX_URL_BYTES = 8192
MAX_HEADER_BYTES = 8192
MAX_LAST = 1_000_000
LABEL_CHARS = 200


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    channel: str
    cursor: Cursor | None = None
    last: int | None = None


def check_sizes(conn: HTTPConnection) -> None:
    """414 for a URL past 8 KiB, 431 for a header past it."""
    scope = conn.scope
    url = len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"])
    if url > MAX_URL_BYTES:
        raise UriTooLong(f"URL of {url} bytes: at most {MAX_URL_BYTES}")
    for name, value in scope["headers"]:
        if len(name) + len(value) > MAX_HEADER_BYTES:
            raise HeaderTooLarge(
                f"header {name.decode('latin-1')[:40]!r} past {MAX_HEADER_BYTES} bytes"
            )


def channel_specs(
    conn: HTTPConnection, most: int, resume: str | None = None, required: bool = True
) -> list[ChannelSpec]:
    """The channels a request names, with their cursors; 400 (414/431) with the reason."""
    check_sizes(conn)
    query = conn.query_params
    names = query.getlist("channel")
    if not names and not required:
        return []
    if not names:
        raise BadRequest("no channel: name one or more with ?channel=NAME, NAME@0 or NAME@<id>")
    if len(names) > most:
        raise BadRequest(f"{len(names)} channels named: at most {most} (GATEWAY_MAX_CHANNELS)")
    last = int_param(query, "last", None, 0, MAX_LAST) or None
    specs = [parse_spec(raw, last) for raw in names]
    _check_unique([spec.channel for spec in specs])
    resume = resume or query.get("cursor")
    if resume:
        cursors = composite.decode(resume, [spec.channel for spec in specs])
        specs = [ChannelSpec(s.channel, c) for s, c in zip(specs, cursors, strict=True)]
    return specs


def parse_spec(raw: str, last: int | None) -> ChannelSpec:
    name, at, cursor = raw.partition("@")
    channel = named(name)
    if not at:
        return ChannelSpec(channel, None, last)
    return ChannelSpec(channel, parse_cursor(channel, cursor))


def named(name: str) -> str:
    """``check_channel``, its reason naming the channel."""
    try:
        return check_channel(name)
    except GatewayError as exc:
        raise BadRequest(f"{name[:80]!r}: {exc.reason}") from None


def parse_cursor(channel: str, text: str) -> Cursor:
    try:
        return Cursor.parse(text)
    except GatewayError as exc:
        raise BadRequest(f"channel {channel!r}: {exc.reason}") from None


def frame_spec(frame: Mapping[str, object]) -> ChannelSpec:
    """A WebSocket subscribe frame's ``channel``, ``since`` and ``last``."""
    channel = frame.get("channel")
    if not isinstance(channel, str):
        raise BadRequest("subscribe frame without a channel")
    channel = named(channel)
    since, last = frame.get("since"), frame.get("last")
    if since is not None and since != "":
        if not isinstance(since, str):
            raise BadRequest(f'channel {channel!r}: since must be a string id, or "0"')
        return ChannelSpec(channel, parse_cursor(channel, since))
    if last is not None:
        if not isinstance(last, int) or isinstance(last, bool) or last < 0:
            raise BadRequest(f"channel {channel!r}: last must be a whole number")
        return ChannelSpec(channel, None, min(last, MAX_LAST) or None)
    return ChannelSpec(channel)


def label(channels: list[str]) -> str:
    """The channels for a connection's log line, shortened."""
    text = ",".join(channels)
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 3] + "..."


def _check_unique(channels: list[str]) -> None:
    seen: set[str] = set()
    for channel in channels:
        if channel in seen:
            raise BadRequest(f"channel {channel!r} named twice")
        seen.add(channel)
