"""Per-key limits: ``rpm`` and ``tpm`` as token buckets, and OpenAI's rate-limit headers.

A bucket holds up to a minute's allowance and refills continuously (``per_minute / 60``
per second), so a key may burst up to its limit and then goes at its rate. A request is
admitted while its bucket holds one request (and, with ``tpm``, while the token bucket is
above zero); the tokens an answer used are taken after it (its ``usage``), so the token
bucket may go below zero and the key waits until it is positive again. ``Retry-After``
is the time until the bucket allows the next request, and ``x-ratelimit-reset-*`` the
time until it is full again, as OpenAI sends them. (Hand-written rather than the
``limits`` package: that refuses a cost above what is left, and tokens are known only
once the answer has been used.)
"""

from __future__ import annotations

import math


class Bucket:
    __slots__ = ("limit", "rate", "level", "at")

    def __init__(self, per_minute: int, now: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.level = float(per_minute)
        self.at = now

    def _refill(self, now: float) -> None:
        if now > self.at:
            self.level = min(float(self.limit), self.level + (now - self.at) * self.rate)
            self.at = now

    def wait_s(self, now: float) -> float:
        """0 when a request may go now, else the seconds until it may."""
        self._refill(now)
        return 0.0 if self.level >= 1.0 else (1.0 - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level -= amount

    def remaining(self, now: float) -> int:
        self._refill(now)
        return max(0, math.floor(self.level))

    def reset_s(self, now: float) -> float:
        self._refill(now)
        return (self.limit - self.level) / self.rate


def duration(seconds: float) -> str:
    """OpenAI's way of writing a reset time: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1.0:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def headers(kind: str, bucket: Bucket, now: float) -> dict[str, str]:
    """The ``x-ratelimit-*-{kind}`` trio (kind: ``requests`` or ``tokens``)."""
    return {
        f"x-ratelimit-limit-{kind}": str(bucket.limit),
        f"x-ratelimit-remaining-{kind}": str(bucket.remaining(now)),
        f"x-ratelimit-reset-{kind}": duration(bucket.reset_s(now)),
    }
