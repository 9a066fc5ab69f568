"""The newest messages a process delivered on a channel, kept to answer resumes.

A long-poll client comes back after every answer with the cursor it just
got; thousands of them would each cost a broker round-trip. The hub keeps
the last ``RECENT_SIZE`` delivered messages of each joined channel, and
knows the ``floor`` from which that record is complete (the channel's
newest id when this process joined it). A cursor at or after the floor, in
the same epoch, is answered here; anything else goes to the broker, which
alone can say whether history was lost.
"""

from __future__ import annotations

import bisect
from collections import deque

from gateway.message import Cursor, Message

RECENT_SIZE = 256


class Recent:
    __slots__ = ("floor", "messages")

    def __init__(self, size: int) -> None:
        self.messages: deque[Message] = deque(maxlen=size)
        self.floor: Cursor | None = None  # None: not known to be complete

    def reset(self, floor: Cursor | None) -> None:
        self.messages.clear()
        self.floor = floor

    def append(self, message: Message) -> None:
        if self.floor is None or message.epoch is None:
            return
        if self._epoch() not in (None, message.epoch):
            self.reset(None)  # another epoch: only the broker knows what was lost
            return
        if len(self.messages) == self.messages.maxlen:
            self.floor = Cursor(message.epoch, self.messages[0].position)
        self.messages.append(message)

    def after(self, cursor: Cursor, limit: int) -> list[Message] | None:
        """Messages after ``cursor`` when this record surely holds them all, else None."""
        epoch = self._epoch()
        if self.floor is None or epoch is None or cursor.epoch != epoch:
            return None
        if cursor.position < self.floor.position:
            return None
        start = bisect.bisect_right(self.messages, cursor.position, key=_position)
        return [self.messages[i] for i in range(start, min(start + limit, len(self.messages)))]

    def _epoch(self) -> str | None:
        if self.messages:
            return self.messages[0].epoch
        return self.floor.epoch if self.floor is not None else None


def _position(message: Message) -> tuple[int, int]:
    return message.position
