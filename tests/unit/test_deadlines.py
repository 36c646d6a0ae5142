"""router.deadlines: coarse request deadlines behave like asyncio.timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.routing.deadlines import RESOLUTION_S, deadline


async def test_expires_with_timeout_error():
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with deadline(0.1) as d:
            await asyncio.sleep(5)
    assert d.expired
    assert 0.1 <= time.monotonic() - started < 0.1 + 10 * RESOLUTION_S + 0.5


async def test_finishing_in_time_is_untouched():
    async with deadline(0.2) as d:
        await asyncio.sleep(0.01)
    assert not d.expired
    await asyncio.sleep(0.3)  # the expired entry must not cancel the task later
    assert asyncio.current_task().cancelling() == 0


async def test_outside_cancellation_stays_a_cancellation():
    async def work() -> None:
        async with deadline(10):
            await asyncio.sleep(5)

    task = asyncio.create_task(work())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nested_inner_expiry_leaves_outer_running():
    async with deadline(2) as outer:
        with pytest.raises(TimeoutError):
            async with deadline(0.05):
                await asyncio.sleep(5)
        await asyncio.sleep(0.05)
    assert not outer.expired


async def test_many_concurrent_deadlines():
    async def one(i: int) -> str:
        try:
            async with deadline(0.05 if i % 2 else 5):
                await asyncio.sleep(0.3 if i % 2 else 0.01)
        except TimeoutError:
            return "timeout"
        return "done"

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert results.count("timeout") == 100 and results.count("done") == 100
