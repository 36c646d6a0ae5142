"""Admission: at most ``max_concurrent`` at once, at most ``max_queue`` waiting, beyond
that an immediate ``Overloaded`` (429) with a ``Retry-After`` estimate.

One implementation for every bounded queue in the project: a backend's
``max_concurrent``/``max_queue`` in the router, and a local worker's generation slots
(``router.workers.scheduling``).
"""

from __future__ import annotations

import asyncio
import math

from router.errors import Overloaded

EWMA_ALPHA = 0.3


class Admission:
    __slots__ = ("label", "max_concurrent", "max_queue", "_sem", "waiting", "running", "avg_hold_s")

    def __init__(self, max_concurrent: int, max_queue: int, *, label: str = "the backend",
                 avg_hold_s: float | None = None) -> None:
        self.label = label
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._sem = asyncio.Semaphore(max_concurrent)
        self.waiting = 0
        self.running = 0
        #: EWMA of how long a slot is held, if the owner records it (``record_hold``);
        #: it makes the Retry-After estimate honest. None: Retry-After is 1 s.
        self.avg_hold_s = avg_hold_s

    @property
    def full(self) -> bool:
        """No slot free and no room left in the queue: the next ``acquire`` is refused."""
        return self._sem.locked() and self.waiting >= self.max_queue

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if needed. Raises ``Overloaded`` when full."""
        if self._sem.locked() or self.waiting:
            if self.waiting >= self.max_queue:
                retry = self.retry_after()
                raise Overloaded(
                    f"{self.label} is busy: {self.running} running and {self.waiting} waiting "
                    f"(max_concurrent = {self.max_concurrent}, max_queue = {self.max_queue}); "
                    f"retry in about {retry}s",
                    retry_after=retry,
                )
            self.waiting += 1
            try:
                await self._sem.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._sem.acquire()
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._sem.release()

    def record_hold(self, seconds: float) -> None:
        previous = self.avg_hold_s
        self.avg_hold_s = seconds if previous is None else previous + EWMA_ALPHA * (seconds - previous)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free for a newcomer (at least 1)."""
        if self.avg_hold_s is None:
            return 1
        return max(1, math.ceil(self.avg_hold_s * (self.waiting + 1) / self.max_concurrent))

    def status(self) -> dict[str, int]:
        return {"running": self.running, "waiting": self.waiting,
                "max_concurrent": self.max_concurrent, "max_queue": self.max_queue}
