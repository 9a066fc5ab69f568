"""Capped exponential backoff with jitter, for reconnect loops."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, first_s: float = 0.05, cap_s: float = 5.0) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        """The next wait: doubling from ``first_s`` up to ``cap_s``, times 0.5-1 at random."""
        delay: float = min(self.cap_s, self.first_s * 2.0**self.attempt)
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)
