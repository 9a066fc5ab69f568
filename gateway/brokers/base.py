"""The Broker protocol, which the embedded and the Redis broker both implement.

A broker assigns ids (never a gateway node), keeps each channel's capped
history, and hands live messages of the channels it is subscribed to to one
listener, the hub, by a plain call that must not block. The hub, not the
broker, owns fan-out, dedupe and backfill, so both brokers share that logic.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from gateway.message import Cursor, Message


class History(NamedTuple):
    messages: list[Message]
    gap: bool  # messages after the cursor were lost (trimmed, or another epoch)


class BrokerListener(Protocol):
    def on_messages(self, messages: list[Message]) -> None:
        """Live messages of subscribed channels, in order; must return without waiting.

        A broker hands over together what it received together (one socket
        read), so that the hub fans them out as one batch: one write per client.
        """

    def on_link_restored(self) -> None:
        """The broker link was lost and is back: backfill every channel."""

    def on_channels_restored(self, channels: list[str]) -> None:
        """These channels' live messages travel again after a gap (a shard's link
        was lost, their slot moved or failed over): backfill just them."""


# A publish's outcome handed back (``publish_soon``): the message stored, or why not.
Published = Callable[[Message | BaseException], None]


class Broker(Protocol):
    connected: bool

    async def start(self, listener: BrokerListener) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, channel: str, event: str, data: str) -> Message:
        """Append to history and deliver live; raises BrokerUnavailable."""

    async def subscribe(self, channel: str) -> None:
        """Return once live messages of ``channel`` will reach the listener."""

    async def unsubscribe(self, channel: str) -> None: ...

    async def history(self, channel: str, cursor: Cursor, limit: int) -> History:
        """Up to ``limit`` messages after ``cursor``, oldest first."""

    async def tail(self, channel: str, count: int) -> list[Message]:
        """The last ``count`` messages of history, oldest first."""

    async def latest(self, channel: str) -> Cursor:
        """The id of the channel's newest message, or ``START`` when empty."""

    async def check_link(self) -> None:
        """A canary round-trip through the live link; raises when it fails."""


RECANCEL_S = 1.0


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it ended, cancelling it again each ``RECANCEL_S``
    it goes on; its CancelledError is not raised here, any other exception is.

    Why: a cancellation that lands while redis-py runs a command can be lost
    inside it (seen: a broker stopped a moment after it started, while its
    pub/sub link loaded the Functions, went on to read forever; a gateway
    whose port was taken then hung at shutdown, SIGTERM included).
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_S)
    with contextlib.suppress(asyncio.CancelledError):
        await task
