"""Per-key token buckets and cooldowns, so one user or one chat cannot flood the model.

Both answer "how long until this key may go again?" (0.0 = now) and only spend when asked
to, so a caller can check several limits and spend on all of them only if all allow it.
Time comes from an injected clock, which keeps the tests instant.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# Idle keys are forgotten once this many are tracked, so memory stays bounded.
MAX_TRACKED_KEYS = 10_000


@dataclass
class Bucket:
    tokens: float
    updated: float  # clock time of the last refill


class TokenBucket:
    """`burst` actions at once, then `rate_per_minute` on average, per key."""

    def __init__(
        self, rate_per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate_per_s = rate_per_minute / 60.0
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}

    def _rate_per_s(self, rate_per_minute: float | None) -> float:
        return self.rate_per_s if rate_per_minute is None else rate_per_minute / 60.0

    def _refilled(self, key: str, rate_per_minute: float | None = None) -> Bucket:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            return Bucket(float(self.burst), now)
        refill = (now - bucket.updated) * self._rate_per_s(rate_per_minute)
        return Bucket(min(float(self.burst), bucket.tokens + refill), now)

    # `rate_per_minute` overrides the bucket's rate for one key (a chat's own setting).
    def wait_time(self, key: str, rate_per_minute: float | None = None) -> float:
        """Seconds until `key` has a whole token (0.0: it has one now)."""
        bucket = self._refilled(key, rate_per_minute)
        return max(0.0, (1.0 - bucket.tokens) / self._rate_per_s(rate_per_minute))

    def spend(self, key: str, rate_per_minute: float | None = None) -> None:
        bucket = self._refilled(key, rate_per_minute)
        bucket.tokens -= 1.0
        self._buckets[key] = bucket
        if len(self._buckets) > MAX_TRACKED_KEYS:
            self._forget_full()

    def refund(self, key: str, rate_per_minute: float | None = None) -> None:
        """Give back a token spent on an action that then failed through no fault of the user."""
        bucket = self._refilled(key, rate_per_minute)
        bucket.tokens = min(float(self.burst), bucket.tokens + 1.0)
        self._buckets[key] = bucket

    def _forget_full(self) -> None:
        # A full bucket is the same as no bucket: dropping it changes nothing.
        full = [k for k in self._buckets if self._refilled(k).tokens >= self.burst]
        for key in full:
            del self._buckets[key]


class Cooldown:
    """At least `seconds` between two actions of a key; the duration is given per check
    because it is a per-chat setting that can change at any time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}

    def wait_time(self, key: str, seconds: float) -> float:
        last = self._last.get(key)
        if last is None or seconds <= 0:
            return 0.0
        return max(0.0, last + seconds - self._clock())

    def spend(self, key: str) -> None:
        now = self._clock()
        self._last[key] = now
        if len(self._last) > MAX_TRACKED_KEYS:
            # Keep the newest half: an hour-long cooldown on a forgotten key is the rare loss.
            newest = sorted(self._last.items(), key=lambda item: item[1])[len(self._last) // 2 :]
            self._last = dict(newest)

    def refund(self, key: str) -> None:
        self._last.pop(key, None)
