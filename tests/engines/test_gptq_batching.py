"""router.workers' ContinuousScheduler (continuous batching, what the gptq engine runs on),
with a fake engine loop on the real engine thread: jobs join a running call between
steps, each job's slot is freed when that job is done (not when the call ends), past
``max_queue`` waiting is 429 with Retry-After, and a failing loop settles every job."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from router.errors import Overloaded
from router.workers import ContinuousScheduler, EngineThread, Inbox


class FakeLoop:
    """An engine loop: each job needs ``steps`` steps of ``step_s`` each."""

    def __init__(self, step_s: float = 0.01, fail_at: int | None = None) -> None:
        self.step_s = step_s
        self.fail_at = fail_at
        self.calls = 0
        self.steps = 0
        self.batches: list[int] = []  # rows per step
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, inbox: Inbox[tuple[str, int]]) -> None:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        rows: dict[tuple[str, int], int] = {}
        while True:
            for job in inbox.take():
                rows[job] = job[1]
            if not rows:
                if inbox.finish():
                    return
                continue
            self.steps += 1
            if self.fail_at is not None and self.steps == self.fail_at:
                raise RuntimeError("the engine broke")
            self.batches.append(len(rows))
            time.sleep(self.step_s)
            for job in list(rows):
                rows[job] -= 1
                if rows[job] == 0:
                    del rows[job]
                    inbox.done(job)


async def test_jobs_join_between_steps_and_leave_when_done() -> None:
    loop = FakeLoop()
    scheduler = ContinuousScheduler(loop, max_batch=4, max_queue=10, thread=EngineThread("engine-test"))
    long_job = await scheduler.submit(("long", 30))
    await asyncio.sleep(0.05)  # the call is running now
    started = time.monotonic()
    await (await scheduler.submit(("short", 3)))  # joined the running call and ended first
    assert time.monotonic() - started < 0.2
    assert not long_job.done()
    assert scheduler.status()["running"] == 1
    await long_job
    assert loop.calls == 1 and 2 in loop.batches and loop.threads == {"engine-test"}
    assert scheduler.status() | {"max_queue": 10} == {"running": 0, "pending": 0, "waiting": 0, "max_batch": 4,
                                                      "max_queue": 10, "calls": 1, "finished": 2}
    # A new job after the call returned starts a new call.
    await (await scheduler.submit(("again", 2)))
    assert loop.calls == 2


async def test_at_most_max_batch_at_once_and_a_slot_frees_per_job() -> None:
    loop = FakeLoop()
    scheduler = ContinuousScheduler(loop, max_batch=2, max_queue=10)
    futures = await asyncio.gather(*(scheduler.submit((f"j{i}", 5 + 5 * i)) for i in range(2)))
    third = asyncio.create_task(scheduler.submit(("j2", 5)))
    await asyncio.sleep(0.02)
    assert scheduler.status()["waiting"] == 1 and not third.done()
    await futures[0]  # the shortest job ended: its slot goes to the waiter while j1 runs on
    await (await third)
    assert not futures[1].done() or max(loop.batches) == 2
    await futures[1]
    assert max(loop.batches) == 2 and loop.calls == 1


async def test_past_max_queue_is_overloaded_with_retry_after() -> None:
    loop = FakeLoop(step_s=0.02)
    scheduler = ContinuousScheduler(loop, max_batch=1, max_queue=1, label="model 'm'")
    await (await scheduler.submit(("warm", 5)))
    running = await scheduler.submit(("a", 20))
    queued = asyncio.create_task(scheduler.submit(("b", 1)))
    await asyncio.sleep(0.02)
    with pytest.raises(Overloaded) as info:
        await scheduler.submit(("c", 1))
    assert info.value.retry_after is not None and info.value.retry_after >= 0.05
    assert "max_queue = 1" in info.value.message
    await running
    await (await queued)


async def test_a_failing_loop_settles_every_job_and_the_next_call_runs() -> None:
    loop = FakeLoop(fail_at=3)
    scheduler = ContinuousScheduler(loop, max_batch=4, max_queue=10)
    futures = [await scheduler.submit((f"j{i}", 10)) for i in range(3)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results), results
    assert scheduler.status()["running"] == 0 and scheduler.admission.running == 0
    loop.fail_at = None
    await (await scheduler.submit(("after", 2)))


class Member:
    """A pool member standing in for a worker process."""

    def __init__(self) -> None:
        self.loaded = False

    async def ensure_ready(self) -> None:
        self.loaded = True

    async def stop(self) -> None:
        self.loaded = False


async def test_pool_members_have_their_own_idle_ttl() -> None:
    from router.workers import ModelPool

    now = [0.0]
    pool: ModelPool[Member] = ModelPool(ttl_s=10, clock=lambda: now[0])
    default, stays, quick = Member(), Member(), Member()
    pool.add("default", default)              # the pool's TTL
    pool.add("stays", stays, ttl_s=0)         # 0: never unloaded for being idle
    pool.add("quick", quick, ttl_s=2)
    for name in ("default", "stays", "quick"):
        await pool.preload(name)
    now[0] = 5
    assert await pool.reap() == ["quick"]
    now[0] = 11
    assert await pool.reap() == ["default"]
    now[0] = 10_000
    assert await pool.reap() == [] and stays.loaded
