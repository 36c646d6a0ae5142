"""Admission and scheduling inside a worker: which request runs on the engine, and when.

Both schedulers admit through ``router.routing.limits.Admission`` (the project's one
bounded queue: past ``max_queue`` waiting, ``Overloaded`` with a ``Retry-After`` taken
from how long slots are held) and run the engine on one dedicated thread, so the event
loop stays free for ``/health`` and streaming.

``SingleSlotScheduler``: one job at a time (for engines whose context generates one
sequence at a time, where two calls at once can crash the process). ``BatchScheduler``: up to ``max_batch`` jobs go
through one engine call together; more wait in the queue for the next call.
``ContinuousScheduler``: continuous batching; one long engine call holds up to
``max_batch`` jobs, takes newly admitted ones from an ``Inbox`` between its steps, and
frees each job's slot as soon as that job is done (not when the call ends).

A slot is freed when the engine is done with the job, not when a handler gives up (a
client that left): two engine calls never overlap.
"""

from __future__ import annotations

import asyncio
import collections
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


class Inbox(Generic[J]):
    """The hand-over between the loop and a continuous engine call (thread-safe).

    Engine side, in its loop: ``take()`` the jobs admitted since the last take (between
    two steps), ``done(job)`` once per job it is finished with (its slot goes to the next
    waiter), and, holding no job, ``finish()``: True means nothing is pending and the call
    must return now; False means jobs arrived, take them.
    """

    def __init__(self, scheduler: ContinuousScheduler[J]) -> None:
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._pending: collections.deque[J] = collections.deque()
        self._ready = threading.Event()
        self.running = False

    # -- the loop ------------------------------------------------------------------------

    def _put(self, job: J) -> bool:
        """Add a job; True if no call is running (the caller starts one)."""
        with self._lock:
            self._pending.append(job)
            self._ready.set()
            start = not self.running
            self.running = True
            return start

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the engine's thread -----------------------------------------------------------------

    def take(self, wait_s: float = 0.0) -> list[J]:
        """The jobs admitted since the last call (waiting up to ``wait_s`` for one)."""
        if wait_s > 0 and not self._pending:
            self._ready.wait(wait_s)
        with self._lock:
            jobs = list(self._pending)
            self._pending.clear()
            self._ready.clear()
        return jobs

    def done(self, job: J) -> None:
        """The engine is finished with ``job`` (call once per job taken)."""
        self._scheduler._done_threadsafe(job)

    def finish(self) -> bool:
        """Holding no job: True (and the call must return) if nothing is pending."""
        with self._lock:
            if self._pending:
                return False
            self.running = False
            return True


class ContinuousScheduler(Generic[J]):
    """Continuous batching: up to ``max_batch`` jobs in one running engine call, at most
    ``max_queue`` waiting for a slot.

    ``run(inbox)`` is the engine's loop (on the engine thread): it takes jobs from the
    inbox between its steps, hands each its outcome, calls ``inbox.done(job)`` when it is
    finished with one, and returns when it holds none and ``inbox.finish()`` says nothing
    is pending. A job admitted while the call runs joins it at the next step; a job's
    slot is freed when the engine is done with that job. If ``run`` raises, every job it
    held or had not taken yet is settled with the error and its slot freed.
    """

    def __init__(self, run: Callable[[Inbox[J]], object], max_batch: int, max_queue: int, *,
                 label: str = "the model", thread: EngineThread | None = None) -> None:
        self.run = run
        self.max_batch = max_batch
        self.admission = Admission(max_batch, max_queue, label=label)
        self.thread = thread or EngineThread()
        self.inbox: Inbox[J] = Inbox(self)
        self.calls = 0
        self.finished = 0
        self._futures: dict[int, tuple[J, asyncio.Future[None], float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, job: J) -> asyncio.Future[None]:
        """Wait for a slot (raises ``Overloaded`` when the queue is full); the job joins
        the running engine call (or starts one). The future is done when the engine is
        done with the job."""
        await self.admission.acquire()
        loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._futures[id(job)] = (job, future, time.monotonic())
        if self.inbox._put(job):
            self._start()
        return future

    def _start(self) -> None:
        self.calls += 1
        run, inbox = self.run, self.inbox

        def call() -> None:
            run(inbox)

        self.thread.call(call).add_done_callback(self._call_ended)

    def _call_ended(self, call: asyncio.Future[None]) -> None:
        error = asyncio.CancelledError() if call.cancelled() else call.exception()
        if error is None:
            return
        # The engine's loop failed: nothing it held will be finished; settle them all.
        self.inbox.take()
        for job, _, _ in list(self._futures.values()):
            self._done(job, error)
        with self.inbox._lock:
            self.inbox.running = False

    def _done_threadsafe(self, job: J) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._done, job, None)

    def _done(self, job: J, error: BaseException | None) -> None:
        entry = self._futures.pop(id(job), None)
        if entry is None:
            return
        _, future, started = entry
        self.admission.record_hold(time.monotonic() - started)
        self.admission.release()
        self.finished += 1
        _settle(future, None, error)

    def status(self) -> dict[str, int]:
        pending = self.inbox.pending
        return {"running": len(self._futures) - pending, "pending": pending,
                "waiting": self.admission.waiting, "max_batch": self.max_batch,
                "max_queue": self.admission.max_queue, "calls": self.calls, "finished": self.finished}
