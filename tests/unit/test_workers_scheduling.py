"""router.workers.scheduling: real threads, real waiting. One generation at a time (or
up to max_batch per engine call), a bounded queue, 429 past it with Retry-After from how
long jobs take, and a slot held until the engine is done (not until a handler gives up)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from router.errors import Overloaded
from router.workers import BatchScheduler, EngineThread, SingleSlotScheduler


class Recorder:
    """Run on the engine thread: how many jobs overlap, on which threads."""

    def __init__(self, hold_s: float = 0.02) -> None:
        self.hold_s = hold_s
        self.active = 0
        self.most = 0
        self.threads: set[str] = set()
        self.done: list[object] = []
        self._lock = threading.Lock()

    def __call__(self, job: object) -> None:
        with self._lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.threads.add(threading.current_thread().name)
        time.sleep(self.hold_s)
        with self._lock:
            self.active -= 1
            self.done.append(job)


async def test_one_job_at_a_time_on_one_thread() -> None:
    recorder = Recorder()
    scheduler = SingleSlotScheduler(recorder, max_queue=10, thread=EngineThread("engine-test"))

    async def one(i: int) -> None:
        await (await scheduler.submit(i))

    await asyncio.gather(*(one(i) for i in range(6)))
    assert recorder.most == 1
    assert recorder.threads == {"engine-test"}
    assert sorted(recorder.done) == list(range(6))  # type: ignore[type-var]
    assert scheduler.status()["running"] == 0


async def test_past_max_queue_is_overloaded_with_retry_after_from_job_time() -> None:
    recorder = Recorder(hold_s=0.4)
    scheduler = SingleSlotScheduler(recorder, max_queue=2, label="model 'm'")
    await (await scheduler.submit("warm-up"))  # one job timed: about 0.4 s each
    running = await scheduler.submit("a")
    queued = [asyncio.create_task(scheduler.submit(x)) for x in ("b", "c")]
    await asyncio.sleep(0.05)
    assert scheduler.status()["waiting"] == 2
    with pytest.raises(Overloaded) as info:
        await scheduler.submit("d")
    assert "model 'm' is busy" in info.value.message and "max_queue = 2" in info.value.message
    # 1 running + 2 waiting at ~0.4 s each: about 1.2 s, rounded up.
    assert info.value.retry_after == 2
    await running
    for task in queued:
        await (await task)
    assert recorder.done == ["warm-up", "a", "b", "c"]


async def test_slot_is_held_until_the_engine_is_done() -> None:
    release = threading.Event()
    scheduler = SingleSlotScheduler(lambda _: release.wait(5), max_queue=0)
    done = await scheduler.submit("long")

    async def handler() -> None:
        await done

    task = asyncio.create_task(handler())
    await asyncio.sleep(0.02)
    task.cancel()  # the client went away; the engine has not finished
    await asyncio.sleep(0.02)
    assert scheduler.status()["running"] == 1
    with pytest.raises(Overloaded):
        await scheduler.submit("next")
    release.set()
    for _ in range(100):
        if scheduler.status()["running"] == 0:
            break
        await asyncio.sleep(0.01)
    assert scheduler.status()["running"] == 0
    await (await scheduler.submit("next"))


async def test_a_waiter_that_gives_up_leaves_the_queue() -> None:
    release = threading.Event()
    scheduler = SingleSlotScheduler(lambda _: release.wait(5), max_queue=1)
    first = await scheduler.submit("first")
    waiter = asyncio.create_task(scheduler.submit("second"))
    await asyncio.sleep(0.02)
    assert scheduler.status()["waiting"] == 1
    waiter.cancel()
    await asyncio.sleep(0)
    assert scheduler.status()["waiting"] == 0
    release.set()
    await first


async def test_engine_errors_reach_the_future_and_free_the_slot() -> None:
    def boom(_: object) -> None:
        raise RuntimeError("engine broke")

    scheduler = SingleSlotScheduler(boom, max_queue=0)
    with pytest.raises(RuntimeError, match="engine broke"):
        await (await scheduler.submit("x"))
    assert scheduler.status()["running"] == 0


async def test_batches_of_at_most_max_batch_then_overloaded() -> None:
    gate = threading.Event()
    batches: list[list[int]] = []

    def run_batch(jobs: list[int]) -> None:
        batches.append(list(jobs))
        if jobs == [0]:
            gate.wait(5)  # the first call runs long: the others gather meanwhile

    scheduler = BatchScheduler(run_batch, max_batch=3, max_queue=2, label="model 'b'")
    first = await scheduler.submit(0)
    await asyncio.sleep(0.02)
    later = [asyncio.create_task(scheduler.submit(i)) for i in range(1, 5)]
    await asyncio.sleep(0.05)
    status = scheduler.status()
    assert (status["running"], status["pending"], status["waiting"]) == (1, 2, 2)
    with pytest.raises(Overloaded) as info:
        await scheduler.submit(5)
    assert "max_queue = 2" in info.value.message
    gate.set()
    await first
    for task in later:
        await (await task)
    # The two pending and the waiter let in when the first call ended went together.
    assert batches == [[0], [1, 2, 3], [4]]
    assert scheduler.status()["batches"] == len(batches)


async def test_a_failed_batch_fails_each_of_its_jobs() -> None:
    def run_batch(jobs: list[str]) -> None:
        raise ValueError("batch failed")

    scheduler = BatchScheduler(run_batch, max_batch=4, max_queue=4)
    futures = await asyncio.gather(*(scheduler.submit(x) for x in "ab"))
    for future in futures:
        with pytest.raises(ValueError):
            await future
    assert scheduler.status()["running"] == 0
