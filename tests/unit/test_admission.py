"""Admission (the one bounded queue): slots, a queue, 429 beyond, Retry-After estimates."""

from __future__ import annotations

import asyncio

import pytest

from router.errors import Overloaded
from router.routing.limits import Admission


async def test_slots_then_queue_then_overloaded_in_order():
    admission = Admission(2, 1, label="backend 'x'")
    await admission.acquire()
    await admission.acquire()
    assert admission.running == 2 and not admission.full
    waiter = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    assert admission.waiting == 1 and admission.full
    with pytest.raises(Overloaded) as info:
        await admission.acquire()
    assert info.value.status == 429 and info.value.retryable
    assert "backend 'x' is busy" in info.value.message and "max_queue = 1" in info.value.message
    assert info.value.retry_after == 1  # nothing recorded: the default
    admission.release()
    await asyncio.wait_for(waiter, 1)
    assert admission.running == 2 and admission.waiting == 0
    admission.release()
    admission.release()
    assert admission.status() == {"running": 0, "waiting": 0, "max_concurrent": 2, "max_queue": 1}


async def test_waiters_are_served_first_come_first_served():
    admission = Admission(1, 10)
    await admission.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        await admission.acquire()
        order.append(i)
        admission.release()

    tasks = [asyncio.create_task(take(i)) for i in range(5)]
    await asyncio.sleep(0)
    admission.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_a_cancelled_waiter_leaves_the_queue():
    admission = Admission(1, 1)
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.waiting == 0 and not admission.full


async def test_retry_after_follows_recorded_hold_times():
    admission = Admission(1, 4, avg_hold_s=1.0)
    admission.record_hold(3.0)  # EWMA: 1 + 0.3 * 2 = 1.6 s
    await admission.acquire()
    waiters = [asyncio.create_task(admission.acquire()) for _ in range(4)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as info:
        await admission.acquire()
    assert info.value.retry_after == 8  # ceil(1.6 s * (4 waiting + 1))
    for _ in range(5):
        admission.release()
        await asyncio.sleep(0)
    await asyncio.gather(*waiters)
