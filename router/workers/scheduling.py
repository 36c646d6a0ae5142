"""Admission and scheduling inside a worker: which request runs on the engine, and when.

Both schedulers admit through ``router.routing.limits.Admission`` (the project's one
bounded queue: past ``max_queue`` waiting, ``Overloaded`` with a ``Retry-After`` taken
from how long slots are held) and run the engine on one dedicated thread, so the event
loop stays free for ``/health`` and streaming.

``SingleSlotScheduler``: one job at a time (for engines whose context generates one
sequence at a time, where two calls at once can crash the process). ``BatchScheduler``: up to ``max_batch`` jobs go
through one engine call together; more wait in the queue for the next call.

A slot is freed when the engine is done with the job, not when a handler gives up (a
client that left): two engine calls never overlap.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from router.routing.limits import Admission

T = TypeVar("T")
J = TypeVar("J")

_Call = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class EngineThread:
    """One thread that runs calls in order and hands each result to the loop.

    A daemon thread: a worker told to stop exits even while a load is still running.
    """

    def __init__(self, name: str = "engine") -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` on the thread; the future is resolved on the calling loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()
        self._calls.put((fn, future, loop))
        return future

    def _main(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, future, loop = item
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the loop
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    def close(self, timeout: float = 5.0) -> None:
        """Let the call running now finish (up to ``timeout``), run no more."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join(timeout)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SingleSlotScheduler(Generic[J]):
    """One job at a time on one thread; at most ``max_queue`` waiting."""

    def __init__(self, run_one: Callable[[J], object], max_queue: int, *, label: str = "the model",
                 thread: EngineThread | None = None) -> None:
        self.run_one = run_one
        self.admission = Admission(1, max_queue, label=label)
        self.thread = thread or EngineThread()

    async def submit(self, job: J) -> asyncio.Future[None]:
        """Wait for the slot (raises ``Overloaded`` when the queue is full), then start the
        job. The future is done when the engine is done with it."""
        await self.admission.acquire()
        started = time.monotonic()
        run_one = self.run_one

        def run() -> None:
            run_one(job)

        future = self.thread.call(run)

        def release(_: object) -> None:
            self.admission.record_hold(time.monotonic() - started)
            self.admission.release()

        future.add_done_callback(release)
        return asyncio.shield(future)  # a caller giving up does not end the job (nor free its slot)

    def status(self) -> dict[str, int]:
        return self.admission.status()


class BatchScheduler(Generic[J]):
    """Up to ``max_batch`` jobs per engine call, at most ``max_queue`` waiting.

    Admission holds ``max_batch`` slots: jobs holding one are in the running call or
    pending for the next one; the rest wait in the queue. When a call ends its slots go
    to the waiters, and the next call takes every pending job (at most ``max_batch``).
    """

    def __init__(self, run_batch: Callable[[list[J]], object], max_batch: int, max_queue: int, *,
                 label: str = "the model", thread: EngineThread | None = None) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.admission = Admission(max_batch, max_queue, label=label)
        self.thread = thread or EngineThread()
        self.batches = 0
        self._pending: list[tuple[J, asyncio.Future[None]]] = []
        self._running: list[tuple[J, asyncio.Future[None]]] = []
        self._scheduled = False

    async def submit(self, job: J) -> asyncio.Future[None]:
        """Wait for a slot (raises ``Overloaded`` when the queue is full); the job runs in
        the next engine call. The future is done when that call is."""
        await self.admission.acquire()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        self._schedule()
        return future

    def _schedule(self) -> None:
        """Start the next call on the loop's next turn, so every job admitted in this turn
        (the waiters a finished call just let in) goes into it."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._next)

    def _next(self) -> None:
        self._scheduled = False
        if self._running or not self._pending:
            return
        batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        self._running = batch
        started = time.monotonic()
        jobs = [job for job, _ in batch]
        run_batch = self.run_batch

        def run() -> None:
            run_batch(jobs)

        def done(call: asyncio.Future[None]) -> None:
            self.admission.record_hold(time.monotonic() - started)
            error = asyncio.CancelledError() if call.cancelled() else call.exception()
            for _, future in batch:
                self.admission.release()
                _settle(future, None, error)
            self.batches += 1
            self._running = []
            self._schedule()

        self.thread.call(run).add_done_callback(done)

    def status(self) -> dict[str, int]:
        return {"running": len(self._running), "pending": len(self._pending),
                "waiting": self.admission.waiting, "max_batch": self.max_batch,
                "max_queue": self.admission.max_queue, "batches": self.batches}
