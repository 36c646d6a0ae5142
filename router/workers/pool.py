"""A pool of models loaded on demand: leases, an idle TTL, limits, and a reaper.

Every request holds a lease on its model from before the load until its response is
closed (``acquire``/``Lease.release``, or ``async with pool.lease(name)``). A leased model
is never unloaded, by the reaper or to make room. The idle TTL counts from the END of the
last request (a long generation does not age its model). Loading a model past
``max_loaded``/``max_memory_gb`` first unloads idle models, least recently used first,
as ``router.workers.eviction.plan_eviction`` decides; when every loaded model is leased
the request gets ``Overloaded`` (retryable: another backend, or later).

Members are anything with ``loaded``, ``ensure_ready()`` and ``stop()``: a
``ManagedProcess``, or a test's stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Generic, Protocol, TypeVar

from router.errors import ModelLoadFailed, Overloaded
from router.workers.eviction import CannotFit, Limits, Loaded, plan_eviction

_log = logging.getLogger("router.workers")


class Member(Protocol):
    @property
    def loaded(self) -> bool:
        """Whether it holds its resources now (a live process)."""

    async def ensure_ready(self) -> object:
        """Load it unless it is loaded (idempotent; concurrent callers share one load)."""

    async def stop(self) -> None:
        """Unload it."""


M = TypeVar("M", bound=Member)


@dataclasses.dataclass(eq=False)
class _Entry(Generic[M]):
    name: str
    member: M
    memory_gb: float
    leases: int = 0
    last_used: float = 0.0
    #: This member's idle TTL: None takes the pool's, 0 keeps it loaded.
    ttl_s: float | None = None


class Lease(Generic[M]):
    """A request's hold on a loaded model; ``release`` (idempotent) ends it."""

    __slots__ = ("name", "member", "_pool", "_entry")

    def __init__(self, pool: ModelPool[M], entry: _Entry[M]) -> None:
        self.name = entry.name
        self.member = entry.member
        self._pool: ModelPool[M] | None = pool
        self._entry = entry

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release(self._entry)


class ModelPool(Generic[M]):
    def __init__(self, *, ttl_s: float | None = None, limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = None) -> None:
        self.ttl_s = ttl_s or None
        self.limits = limits or Limits()
        self.clock = clock
        self.log = logger or _log
        self._entries: dict[str, _Entry[M]] = {}
        self._reserved: set[str] = set()  # loads planned but maybe not started yet
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None

    # -- members ---------------------------------------------------------------------------------

    def add(self, name: str, member: M, *, memory_gb: float = 0.0, ttl_s: float | None = None) -> None:
        """Add a member; ``ttl_s`` is its own idle TTL (None: the pool's; 0: never unloaded
        for being idle)."""
        if name in self._entries:
            raise KeyError(f"{name!r} is in the pool already")
        self._entries[name] = _Entry(name, member, memory_gb, last_used=self.clock(), ttl_s=ttl_s)

    def _ttl(self, entry: _Entry[M]) -> float | None:
        return (entry.ttl_s or None) if entry.ttl_s is not None else self.ttl_s

    def remove(self, name: str) -> bool:
        """Forget an unloaded, unleased member; False if it is still loaded or leased."""
        entry = self._entries.get(name)
        if entry is None or entry.leases or entry.member.loaded:
            return False
        del self._entries[name]
        return True

    def get(self, name: str) -> M | None:
        entry = self._entries.get(name)
        return entry.member if entry is not None else None

    def names(self) -> list[str]:
        return list(self._entries)

    def leases(self, name: str) -> int:
        """Requests holding the model now (waiting for its load included)."""
        entry = self._entries.get(name)
        return entry.leases if entry is not None else 0

    # -- leases ----------------------------------------------------------------------------------

    async def acquire(self, name: str) -> Lease[M]:
        """Lease the model, loading it (after making room) unless it is loaded. Raises
        ``KeyError`` for an unknown name, ``Overloaded`` when it cannot fit now,
        ``ModelLoadFailed`` when it never can, and whatever the load raises."""
        entry = self._entries[name]
        entry.leases += 1
        entry.last_used = self.clock()
        try:
            if not entry.member.loaded:
                await self._make_room(entry)
            try:
                await entry.member.ensure_ready()
            finally:
                self._reserved.discard(name)
        except BaseException:
            self._release(entry)
            raise
        return Lease(self, entry)

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[M]:
        held = await self.acquire(name)
        try:
            yield held.member
        finally:
            held.release()

    def _release(self, entry: _Entry[M]) -> None:
        entry.leases -= 1
        entry.last_used = self.clock()  # the TTL counts from the end of the request

    async def preload(self, name: str) -> None:
        """Load the model now (as a request would, then leave it idle)."""
        async with self.lease(name):
            pass

    # -- room ------------------------------------------------------------------------------------

    def _loaded(self, but: _Entry[M]) -> list[Loaded]:
        return [Loaded(e.name, e.memory_gb, e.leases > 0, e.last_used) for e in self._entries.values()
                if e is not but and (e.member.loaded or e.name in self._reserved)]

    async def _make_room(self, entry: _Entry[M]) -> None:
        async with self._lock:
            stopped: set[str] = set()
            while not (entry.member.loaded or entry.name in self._reserved):
                plan = plan_eviction(entry.name, entry.memory_gb, self._loaded(entry), self.limits)
                if isinstance(plan, CannotFit):
                    if plan.permanent:
                        raise ModelLoadFailed(f"model {entry.name!r} cannot be loaded: {plan.reason}",
                                              code="does_not_fit")
                    raise Overloaded(f"model {entry.name!r} cannot be loaded now: {plan.reason}",
                                     retry_after=1.0)
                if not plan.evict:
                    self._reserved.add(entry.name)
                    return
                # One at a time, planning again after each: leases may change while stopping.
                victim = self._entries[plan.evict[0]]
                if victim.name in stopped:  # stop() did not unload it
                    raise Overloaded(f"model {entry.name!r} cannot be loaded now: {victim.name!r} "
                                     "would not unload", retry_after=1.0)
                stopped.add(victim.name)
                self.log.info("unloading %r (idle) to make room for %r", victim.name, entry.name)
                await victim.member.stop()

    async def unload(self, name: str) -> bool:
        """Unload an idle model now; False if it is leased (or not loaded)."""
        async with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.leases or not entry.member.loaded:
                return False
            await entry.member.stop()
            return True

    # -- the reaper ------------------------------------------------------------------------------

    async def reap(self) -> list[str]:
        """Unload every model idle for longer than the TTL; their names."""
        stopped: list[str] = []
        async with self._lock:
            for entry in list(self._entries.values()):
                ttl = self._ttl(entry)
                if ttl is None:
                    continue
                if entry.member.loaded and not entry.leases and self.clock() - entry.last_used > ttl:
                    self.log.info("unloading %r after %gs idle", entry.name, ttl)
                    await entry.member.stop()
                    stopped.append(entry.name)
        return stopped

    def start_reaper(self, interval_s: float | None = None) -> None:
        """Check for idle models every ``interval_s`` (default: the shortest TTL/2, at most
        5 s); nothing to do when no member has a TTL."""
        ttls = [t for t in (self._ttl(e) for e in self._entries.values()) if t is not None]
        if self.ttl_s is not None:
            ttls.append(self.ttl_s)
        if not ttls or self._reaper is not None:
            return
        every = interval_s or min(min(ttls) / 2, 5.0)

        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await self.reap()
                except Exception:  # noqa: BLE001 - the reaper must keep running
                    self.log.exception("the idle reaper failed")

        self._reaper = asyncio.create_task(loop())

    async def aclose(self) -> None:
        """Stop the reaper and every member."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        await asyncio.gather(*(e.member.stop() for e in self._entries.values()), return_exceptions=True)
