"""Bounds on the extra load failover adds: a retry budget and a hedging budget.

Each counts requests and extra attempts over a sliding window (ten one-second buckets):
retries and hedges together may add at most ``pct`` percent of the requests seen, plus a
small floor (``minimum`` per window), so a backend-wide outage cannot multiply the load
on the backends that survive (as gRPC's and Envoy's retry budgets do).
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW_S = 10


class SlidingBudget:
    __slots__ = ("pct", "minimum", "clock", "_requests", "_spent", "_stamps")

    def __init__(self, pct: float, minimum: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.pct = pct
        self.minimum = minimum
        self.clock = clock
        self._requests = [0] * WINDOW_S
        self._spent = [0] * WINDOW_S
        self._stamps = [-1] * WINDOW_S

    def _bucket(self) -> int:
        second = int(self.clock())
        i = second % WINDOW_S
        if self._stamps[i] != second:  # a bucket from an older window: start it afresh
            self._stamps[i] = second
            self._requests[i] = self._spent[i] = 0
        return i

    def _live(self, counts: list[int]) -> int:
        now = int(self.clock())
        return sum(c for c, stamp in zip(counts, self._stamps) if now - stamp < WINDOW_S)

    def request(self) -> None:
        """One client request seen."""
        self._requests[self._bucket()] += 1

    def allows(self) -> bool:
        """Whether one more extra attempt fits (without spending it)."""
        self._bucket()
        return self._live(self._spent) < self.minimum + self._live(self._requests) * self.pct / 100.0

    def spend(self) -> bool:
        """Take one extra attempt if it fits; False when the budget is spent."""
        if not self.allows():
            return False
        self._spent[self._bucket()] += 1
        return True
