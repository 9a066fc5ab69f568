"""The run's shared scoreboard: what every subscriber received, and when.

Each published message's data is ``"<seq> <unix time sent> <padding>"``,
about 100 bytes. Warm-up messages carry seq -1: they prove a subscriber is
subscribed before the measured messages start, and are not counted.

Per subscriber the tally keeps the next seq it expects, so a message that
arrives twice, out of order, or never, is counted as such: "complete" means
every measured message, once, in order.
"""

from __future__ import annotations

import asyncio
import time
from array import array

WARMUP_SEQ = -1
PAYLOAD_BYTES = 100


def payload(seq: int) -> str:
    head = f"{seq} {time.time():.6f} "
    return head + "x" * max(0, PAYLOAD_BYTES - len(head))


class Tally:
    def __init__(self, messages: int) -> None:
        self.messages = messages
        self.latencies = array("d")
        self.per_seq = [0] * messages  # deliveries of each measured message
        self.delivered = 0
        self.answers = 0  # poll answers that carried a measured message
        self.last_delivery_at = 0.0
        self.connected = 0
        self.ready = 0
        self.alive_ready = 0  # ready subscribers still connected
        self.errors: dict[str, int] = {}
        self.stopping = False  # the generator is closing connections: not an error
        self.changed = asyncio.Event()  # something a waiter may care about happened

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.changed.set()

    def fully_delivered(self, seq: int) -> bool:
        return self.per_seq[seq] >= self.alive_ready


class Subscriber:
    """Bookkeeping every client protocol shares; subclasses feed ``deliver``."""

    __slots__ = ("closed", "duplicates", "is_connected", "is_ready", "lost", "next_seq", "tally")

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.next_seq = 0
        self.duplicates = 0
        self.lost = 0
        self.is_connected = False
        self.is_ready = False
        self.closed = False

    def mark_connected(self) -> None:
        if not self.is_connected:
            self.is_connected = True
            self.tally.connected += 1

    def deliver(self, data: str | bytes, now: float) -> None:
        """One message's data as received; ``now`` is the receive time."""
        seq_text, sent_text, _ = data.split(maxsplit=2)
        seq = int(seq_text)
        tally = self.tally
        if seq == WARMUP_SEQ:
            if not self.is_ready:
                self.is_ready = True
                tally.ready += 1
                tally.alive_ready += 1
                tally.changed.set()
            return
        if seq == self.next_seq:
            self.next_seq = seq + 1
        elif seq < self.next_seq:
            self.duplicates += 1
            return
        else:
            self.lost += seq - self.next_seq
            self.next_seq = seq + 1
        tally.latencies.append(now - float(sent_text))
        tally.delivered += 1
        tally.last_delivery_at = now
        count = tally.per_seq[seq] = tally.per_seq[seq] + 1
        if count >= tally.alive_ready:
            tally.changed.set()

    def mark_closed(self, reason: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.is_ready:
            self.tally.alive_ready -= 1
        if reason and not self.tally.stopping:
            self.tally.error(reason)
        self.tally.changed.set()

    def complete(self) -> bool:
        return (
            self.is_ready
            and self.next_seq == self.tally.messages
            and not self.lost
            and not self.duplicates
        )
