"""router.workers.ModelPool: leases, TTL from the end of the last request, limits, LRU
eviction, one load for concurrent requests. Members are small stand-ins that count their
loads and stops (the pool is what is under test)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from router.errors import ModelLoadFailed, Overloaded
from router.workers import Limits, ModelPool


class Model:
    def __init__(self, load_s: float = 0.0, fail: bool = False) -> None:
        self.loaded = False
        self.loads = 0
        self.stops = 0
        self.load_s = load_s
        self.fail = fail
        self._lock = asyncio.Lock()

    async def ensure_ready(self) -> None:
        async with self._lock:
            if self.loaded:
                return
            await asyncio.sleep(self.load_s)
            if self.fail:
                raise ModelLoadFailed("broken file", code="model_load_failed")
            self.loads += 1
            self.loaded = True

    async def stop(self) -> None:
        if self.loaded:
            self.stops += 1
        self.loaded = False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_of(*names: str, clock: Callable[[], float] | None = None, **kwargs: Any) -> tuple[ModelPool[Model], dict[str, Model]]:
    pool: ModelPool[Model] = ModelPool(clock=clock or Clock(), **kwargs)
    models = {name: Model() for name in names}
    for name, model in models.items():
        pool.add(name, model, memory_gb=1.0)
    return pool, models


async def test_lease_loads_once_and_counts_requests() -> None:
    pool, models = pool_of("a")
    models["a"].load_s = 0.05

    async def request() -> int:
        async with pool.lease("a"):
            await asyncio.sleep(0.01)
            return pool.leases("a")

    seen = await asyncio.gather(*(request() for _ in range(5)))
    assert models["a"].loads == 1
    assert max(seen) == 5
    assert pool.leases("a") == 0


async def test_release_is_idempotent() -> None:
    pool, _ = pool_of("a")
    lease = await pool.acquire("a")
    other = await pool.acquire("a")
    lease.release()
    lease.release()
    assert pool.leases("a") == 1
    other.release()
    assert pool.leases("a") == 0


async def test_failed_load_releases_the_lease() -> None:
    pool, models = pool_of("a")
    models["a"].fail = True
    with pytest.raises(ModelLoadFailed):
        await pool.acquire("a")
    assert pool.leases("a") == 0


async def test_ttl_counts_from_the_end_of_the_last_request() -> None:
    clock = Clock()
    pool, models = pool_of("a", clock=clock, ttl_s=10)
    lease = await pool.acquire("a")
    clock.now += 60  # a long request: the model is leased, never reaped
    assert await pool.reap() == []
    lease.release()  # the request ends now
    clock.now += 9
    assert await pool.reap() == []
    assert models["a"].loaded
    clock.now += 2
    assert await pool.reap() == ["a"]
    assert not models["a"].loaded and models["a"].stops == 1


async def test_no_ttl_never_reaps() -> None:
    clock = Clock()
    pool, models = pool_of("a", clock=clock)
    await pool.preload("a")
    clock.now += 10**6
    assert await pool.reap() == []
    assert models["a"].loaded


async def test_max_loaded_evicts_the_least_recently_used_idle_model() -> None:
    clock = Clock()
    pool, models = pool_of("a", "b", "c", clock=clock, limits=Limits(max_loaded=2))
    await pool.preload("a")
    clock.now += 1
    await pool.preload("b")
    clock.now += 1
    async with pool.lease("a"):  # a is now the most recent... and leased
        pass
    clock.now += 1
    await pool.preload("c")
    assert (models["a"].loaded, models["b"].loaded, models["c"].loaded) == (True, False, True)
    assert models["b"].stops == 1


async def test_a_leased_model_is_never_evicted() -> None:
    pool, models = pool_of("a", "b", limits=Limits(max_loaded=1))
    held = await pool.acquire("a")
    with pytest.raises(Overloaded) as info:
        await pool.acquire("b")
    assert "in use (a)" in info.value.message
    assert models["a"].loaded and not models["b"].loaded
    assert pool.leases("b") == 0
    held.release()
    async with pool.lease("b"):
        assert models["b"].loaded and not models["a"].loaded


async def test_memory_limit_and_a_model_that_never_fits() -> None:
    pool, models = pool_of("a", "b", limits=Limits(max_memory_gb=1.5))
    pool.add("huge", Model(), memory_gb=4.0)
    await pool.preload("a")
    await pool.preload("b")
    assert not models["a"].loaded and models["b"].loaded
    with pytest.raises(ModelLoadFailed) as info:
        await pool.acquire("huge")
    assert info.value.code == "does_not_fit"


async def test_concurrent_loads_of_different_models_respect_max_loaded() -> None:
    pool, models = pool_of("a", "b", "c", limits=Limits(max_loaded=1))
    for model in models.values():
        model.load_s = 0.05
    results = await asyncio.gather(*(pool.preload(n) for n in models), return_exceptions=True)
    # The first load reserves the only slot while it runs: the others find it leased.
    assert sum(1 for r in results if r is None) == 1
    assert all(isinstance(r, Overloaded) for r in results if r is not None)
    assert sum(m.loaded for m in models.values()) == 1


async def test_unload_refuses_a_leased_model_and_remove_a_loaded_one() -> None:
    pool, models = pool_of("a")
    held = await pool.acquire("a")
    assert await pool.unload("a") is False
    assert pool.remove("a") is False
    held.release()
    assert await pool.unload("a") is True
    assert pool.remove("a") is True
    assert pool.names() == []


async def test_reaper_task_unloads_idle_models() -> None:
    pool, models = pool_of("a", ttl_s=0.05, clock=asyncio.get_running_loop().time)
    await pool.preload("a")
    pool.start_reaper(interval_s=0.02)
    for _ in range(50):
        if not models["a"].loaded:
            break
        await asyncio.sleep(0.02)
    assert not models["a"].loaded
    await pool.aclose()
