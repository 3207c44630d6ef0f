"""A per-key request budget: a token bucket of one minute's allowance, refilled continuously."""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    """`per_minute` requests per key, in bursts of up to a minute's allowance; kept in this process.

    One API process serves a deployment (the model is loaded per process); several processes would each
    allow the full rate, which the README says.
    """

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key_id: int) -> float:
        """Spend one request of this key: 0.0 when allowed, else the seconds until the next one is."""
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(key_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - then) * self._rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / self._rate

    @staticmethod
    def retry_after(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))
