"""Reconnect delays: exponential backoff with full jitter.

Full jitter (a delay drawn uniformly between 0 and the exponential ceiling) spreads the reconnects
of many agents after a server restart over the whole window instead of letting them arrive in
synchronized waves, which is what a fixed or "equal" jitter does.
"""

from __future__ import annotations

import random
from collections.abc import Callable

BASE_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 60.0
# A connection that stayed up this long proves the server is healthy again: start over from 1 s.
STABLE_AFTER_SECONDS = 30.0


class Backoff:
    """The delay before each next attempt: uniform in [0, min(cap, base * 2**attempt)]."""

    def __init__(self, base: float = BASE_DELAY_SECONDS, cap: float = MAX_DELAY_SECONDS,
                 uniform: Callable[[float, float], float] = random.uniform):
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self._uniform = uniform
        self.attempt = 0

    def ceiling(self) -> float:
        """The largest delay the next attempt can get."""
        # min() before the power would overflow after ~1000 failed attempts; compare exponents instead.
        if self.attempt >= 64:
            return self.cap
        return min(self.cap, self.base * 2**self.attempt)

    def next_delay(self) -> float:
        delay = self._uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

    def connection_ended(self, lasted: float, stable_after: float = STABLE_AFTER_SECONDS) -> float:
        """The delay before reconnecting after a connection that lasted `lasted` seconds."""
        if lasted >= stable_after:
            self.reset()
        return self.next_delay()
