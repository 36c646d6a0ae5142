"""Coarse deadlines for many concurrent requests, one loop timer for all of them.

``asyncio.timeout`` arms and cancels a loop timer per use: measured under uvloop, about
14 µs per request for one timeout, a tenth of the router's CPU per request. Request
deadlines are seconds long and need no microsecond precision, so the router keeps them
in a heap checked every ``RESOLUTION_S`` by a single timer (only while any is pending).

``deadline(seconds)`` behaves like ``asyncio.timeout(seconds)``: when it expires the task
is cancelled, and ``TimeoutError`` is raised where the ``async with`` block exits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from types import TracebackType

RESOLUTION_S = 0.01


class _Watch:
    __slots__ = ("task", "when", "expired", "done", "cancelling")

    def __init__(self, task: asyncio.Task[object], when: float) -> None:
        self.task = task
        self.when = when
        self.expired = False
        self.done = False
        self.cancelling = task.cancelling()


class _Wheel:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, when: float) -> _Watch:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("deadline() must be used inside a task")
        watch = _Watch(task, when)
        heapq.heappush(self._heap, (when, next(self._order), watch))
        if self._handle is None:
            self._handle = self._loop.call_at(self._loop.time() + RESOLUTION_S, self._tick)
        return watch

    def _tick(self) -> None:
        now = self._loop.time()
        heap = self._heap
        while heap and (heap[0][2].done or heap[0][0] <= now):
            _, _, watch = heapq.heappop(heap)
            if not watch.done:
                watch.expired = True
                watch.task.cancel()
        # Entries already done are dropped lazily; drop them all when they dominate.
        if len(heap) > 64 and sum(1 for e in heap if e[2].done) > len(heap) // 2:
            heap[:] = [e for e in heap if not e[2].done]
            heapq.heapify(heap)
        self._handle = self._loop.call_at(now + RESOLUTION_S, self._tick) if heap else None


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wheel] = weakref.WeakKeyDictionary()


class deadline:  # noqa: N801 - used like asyncio.timeout
    __slots__ = ("_seconds", "_watch")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._watch: _Watch | None = None

    async def __aenter__(self) -> deadline:
        loop = asyncio.get_running_loop()
        wheel = _wheels.get(loop)
        if wheel is None:
            wheel = _wheels[loop] = _Wheel(loop)
        self._watch = wheel.watch(loop.time() + self._seconds)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        watch = self._watch
        assert watch is not None
        watch.done = True
        if watch.expired:
            # As asyncio.timeout: take our cancellation back; the CancelledError becomes a
            # TimeoutError unless someone else cancelled the task too.
            if watch.task.uncancel() <= watch.cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    @property
    def expired(self) -> bool:
        return self._watch is not None and self._watch.expired
