"""A Server-Sent Events reader that follows the WHATWG event-stream rules.

httpx-sse dispatches an event for a bare comment once an id was seen (the
spec dispatches only when the data buffer is non-empty), so the tests parse
the stream themselves, as a browser does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx


@dataclass
class Event:
    event: str
    data: str
    id: str
    retry: int | None = None


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    """Yield dispatched events; also ``retry`` hints (event "") and comments (event ":")."""
    last_id = ""
    data: list[str] | None = None
    event = ""
    retry: int | None = None
    async for line in _lines(response):
        if line == "":
            if data is not None:
                yield Event(event or "message", "\n".join(data), last_id, retry)
            elif retry is not None:
                yield Event("", "", last_id, retry)
            data, event, retry = None, "", None
            continue
        if line.startswith(":"):
            yield Event(":", line[1:].strip(), last_id)  # a comment: only tests look at it
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data = [*(data or []), value]
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value.isdigit():
            retry = int(value)


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while True:
            cut = _line_end(buffer)
            if cut is None:
                break
            end, width = cut
            yield buffer[:end]
            buffer = buffer[end + width :]


def _line_end(buffer: str) -> tuple[int, int] | None:
    for index, char in enumerate(buffer):
        if char == "\n":
            return index, 1
        if char == "\r":
            if index + 1 == len(buffer):
                return None  # a CR LF may be split across chunks
            return index, 2 if buffer[index + 1] == "\n" else 1
    return None
