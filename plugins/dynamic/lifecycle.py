"""The lifecycle of models loaded on demand: one load per model however many requests
wait for it, a TTL from the end of the last request, least-recently-used eviction of idle
models only, bounded waits for a slot, swaps grouped by model, reloads on new options.

States of one loaded model (an ``Instance``)::

    (absent) --request--> loading --ready--> ready <--lease/release--> ready
        ^                    |                 |
        |              load failed         idle past its TTL, evicted for another model,
        |                    |             unloaded, or other load options asked for
        +--------------------+-------------- stopping (in-flight requests finish first)

A request leases its model for as long as its response is open; a leased model is never
stopped. A request whose model is not loaded and does not fit waits for a slot (FIFO by
model, at most ``max_wait_s``, then 503 ``no_capacity``). Grouping: while a request waits
for a swap, requests for the loaded model still go first, for at most ``group_window_s``
of that wait, and a model that just went idle is kept ``LINGER_S`` for its next request;
so two clients alternating between two models load each once per window, not once per
request. The decisions are ``router.workers.plan_eviction``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from plugins.dynamic.inventory import ModelFile
from router import ModelLoadFailed, NoBackendAvailable, RouterError, UpstreamError
from router.workers import CannotFit, Limits, Loaded, ManagedProcess, plan_eviction

#: How long a model that just went idle is kept for its next request while another
#: model waits for its slot (capped by ``group_window_s``).
LINGER_S = 0.5
#: How often waiting requests look again when nothing told them to (time-based rules).
POLL_S = 0.1


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a request needs: a model, an engine, the load options it insists on."""

    model: ModelFile
    engine: str
    engine_asked: bool
    options: tuple[tuple[str, Any], ...]
    ttl_s: float | None
    memory_gb: float

    @property
    def key(self) -> str:
        return f"{self.model.name}:{self.engine}"


@dataclasses.dataclass(eq=False)
class Instance:
    key: str
    spec: Spec
    process: ManagedProcess
    ttl_s: float
    leases: int = 0
    last_used: float = 0.0
    last_used_wall: float = 0.0
    loaded_at: float | None = None
    ready: bool = False
    retiring: bool = False  # takes no new requests: it stops once its requests are done
    stopping: bool = False
    idle_since: float = 0.0
    load_task: asyncio.Task[None] | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.spec.options)

    def serves(self, spec: Spec) -> bool:
        """Same model (and engine, when the request names one), and every option the
        request gives is the one it was loaded with (options it leaves out accept any)."""
        if self.spec.model.name != spec.model.name or (spec.engine_asked and self.spec.engine != spec.engine):
            return False
        loaded = self.options
        return all(loaded.get(k) == v for k, v in spec.options)

    def dead(self) -> bool:
        """Loaded once, and its process has died since (a crash): it is replaced."""
        return self.ready and not self.process.alive() and not self.stopping


@dataclasses.dataclass
class Stats:
    requests: int = 0
    hits: int = 0
    misses: int = 0
    loads: int = 0
    load_failures: int = 0
    unloads: int = 0
    evictions: int = 0
    reloads: int = 0
    waits: int = 0
    no_capacity: int = 0


class Lease:
    __slots__ = ("instance", "_lifecycle")

    def __init__(self, lifecycle: Lifecycle, instance: Instance) -> None:
        self.instance = instance
        self._lifecycle: Lifecycle | None = lifecycle

    def release(self) -> None:
        lifecycle, self._lifecycle = self._lifecycle, None
        if lifecycle is not None:
            lifecycle._release(self.instance)


@dataclasses.dataclass(eq=False)
class _Waiter:
    key: str
    since: float


def model_scoped(exc: RouterError) -> RouterError:
    """Mark an error as the model's alone: the backend's circuit does not count it."""
    exc.model_scoped = True
    return exc


class Lifecycle:
    def __init__(self, *, limits: Limits, default_ttl_s: float, max_wait_s: float, group_window_s: float,
                 make_process: Callable[[Spec], ManagedProcess], logger: logging.Logger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.default_ttl_s = default_ttl_s
        self.max_wait_s = max_wait_s
        self.group_window_s = group_window_s
        self.linger_s = min(LINGER_S, group_window_s)
        self.make_process = make_process
        self.log = logger
        self.clock = clock
        self.instances: dict[str, Instance] = {}
        self.stats = Stats()
        self._waiting: list[_Waiter] = []
        self._changed = asyncio.Event()
        self._slot_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None

    # -- waking waiters ---------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    # -- grouping ---------------------------------------------------------------------------

    def _overdue(self, now: float) -> _Waiter | None:
        """The oldest request waiting for a swap, if it has waited past the group window."""
        if self._waiting and now - self._waiting[0].since >= self.group_window_s:
            return self._waiting[0]
        return None

    def _held_back(self, instance: Instance, waiter: _Waiter | None, now: float) -> bool:
        """A request for a loaded model waits when a request for another model has waited
        past the group window (so this one drains and the swap happens)."""
        overdue = self._overdue(now)
        return overdue is not None and overdue is not waiter and overdue.key != instance.key

    # -- leasing ----------------------------------------------------------------------------

    def find(self, spec: Spec) -> Instance | None:
        exact = self.instances.get(spec.key)
        if exact is not None and not exact.retiring and exact.serves(spec):
            return exact
        for instance in self.instances.values():
            if not instance.retiring and instance.serves(spec):
                return instance
        return None

    async def acquire(self, spec: Spec) -> Lease:
        """Lease the model ``spec`` needs, loading it (after making room) unless it is
        loaded. Raises ``ModelLoadFailed`` (its load failed: every request waiting for it
        gets the same error) or 503 ``no_capacity`` after ``max_wait_s``."""
        self.stats.requests += 1
        started = self.clock()
        waiter: _Waiter | None = None
        missed = False
        try:
            while True:
                now = self.clock()
                instance = self.find(spec)
                if instance is not None and instance.dead():
                    self.log.warning("%s had died; loading it again", instance.process.label)
                    await self._stop(instance, "it had died")
                    continue
                if instance is not None:
                    if not self._held_back(instance, waiter, now):
                        if missed or not instance.ready:
                            self.stats.misses += 1
                        else:
                            self.stats.hits += 1
                        return await self._lease(instance, spec)
                else:
                    missed = True
                    stale = self.instances.get(spec.key)
                    if stale is not None and not stale.retiring:
                        # Loaded with other options: it takes no new requests and is
                        # stopped once those in flight are done; then this one loads.
                        self.log.info("reloading %s with %s (loaded with %s)", spec.key, dict(spec.options),
                                      stale.options)
                        stale.retiring = True
                        self.stats.reloads += 1
                        self._notify()
                    if stale is not None and stale.leases == 0 and not stale.stopping:
                        await self._stop(stale, "other load options were asked for")
                        continue
                    if stale is None and self._may_load(spec.key, waiter):
                        lease = await self._try_load(spec, waiter, now)
                        if lease is not None:
                            self.stats.misses += 1
                            return lease
                if waiter is None:
                    waiter = _Waiter(spec.key, started)
                    self._waiting.append(waiter)
                    self.stats.waits += 1
                remaining = started + self.max_wait_s - self.clock()
                if remaining <= 0:
                    self.stats.no_capacity += 1
                    raise self._no_capacity(spec)
                await self._wait(min(remaining, POLL_S))
        finally:
            if waiter is not None:
                self._waiting.remove(waiter)
                self._notify()

    def _may_load(self, key: str, waiter: _Waiter | None) -> bool:
        """First come, first served by model: a request may start a load unless a request
        for another model waits ahead of it."""
        if waiter is None:
            return not any(w.key != key for w in self._waiting)
        return not self._ahead(waiter)

    def _ahead(self, waiter: _Waiter) -> bool:
        """Whether a request for another model waits ahead of this one (FIFO by model)."""
        for other in self._waiting:
            if other is waiter:
                return False
            if other.key != waiter.key:
                return True
        return False

    def _no_capacity(self, spec: Spec) -> RouterError:
        busy = sorted(f"{i.key} ({i.leases} in flight)" for i in self.instances.values())
        return model_scoped(NoBackendAvailable(
            f"model {spec.model.name!r} could not get a slot within max_wait_s = {self.max_wait_s:g}s: "
            f"loaded: {', '.join(busy) or 'none'} (max_loaded = {self.limits.max_loaded}, "
            f"max_memory_gb = {self.limits.max_memory_gb})", code="no_capacity", retry_after=5.0))

    async def _lease(self, instance: Instance, spec: Spec) -> Lease:
        instance.leases += 1
        if spec.ttl_s is not None:
            instance.ttl_s = spec.ttl_s
        lease = Lease(self, instance)
        try:
            if instance.load_task is not None:
                await asyncio.shield(instance.load_task)
        except BaseException:
            lease.release()
            raise
        return lease

    def _release(self, instance: Instance) -> None:
        instance.leases -= 1
        now = self.clock()
        instance.last_used = now  # the TTL counts from the end of the request
        instance.last_used_wall = time.time()
        if instance.leases == 0:
            instance.idle_since = now
        self._notify()

    # -- making room and loading ------------------------------------------------------------

    def _occupants(self, now: float, head_overdue: bool) -> list[Loaded]:
        """The loaded models as the eviction planner sees them: leased, stopping, or just
        gone idle (lingering for its next request) count as not evictable."""
        out = []
        for instance in self.instances.values():
            lingering = (not head_overdue and instance.ready and instance.leases == 0
                         and now - instance.idle_since < self.linger_s)
            busy = instance.leases > 0 or instance.stopping or not instance.ready or lingering
            out.append(Loaded(instance.key, instance.spec.memory_gb, busy, instance.last_used))
        return out

    async def _try_load(self, spec: Spec, waiter: _Waiter | None, now: float) -> Lease | None:
        async with self._slot_lock:
            if spec.key in self.instances:  # someone else started it meanwhile
                return None
            overdue = waiter is not None and now - waiter.since >= self.group_window_s
            plan = plan_eviction(spec.key, spec.memory_gb, self._occupants(now, overdue), self.limits)
            if isinstance(plan, CannotFit):
                if plan.permanent:
                    self.stats.load_failures += 1
                    raise model_scoped(ModelLoadFailed(f"model {spec.model.name!r} cannot be loaded: {plan.reason}",
                                                       code="does_not_fit"))
                return None
            victims = [self.instances[key] for key in plan.evict]
            for victim in victims:
                victim.retiring = True
                victim.stopping = True
            instance = Instance(spec.key, spec, self.make_process(spec),
                                ttl_s=self.default_ttl_s if spec.ttl_s is None else spec.ttl_s,
                                last_used=now, last_used_wall=time.time(), idle_since=now)
            self.instances[spec.key] = instance
            instance.load_task = asyncio.create_task(self._load(instance, victims))
        return await self._lease(instance, spec)

    async def _load(self, instance: Instance, victims: list[Instance]) -> None:
        for victim in victims:
            self.log.info("unloading %s (idle, least recently used) to make room for %s", victim.key, instance.key)
            self.stats.evictions += 1
            await self._stop(victim, "evicted", counted=False)
        self.stats.loads += 1
        try:
            await instance.process.ensure_ready()
        except UpstreamError as exc:
            self.stats.load_failures += 1
            self.log.error("loading %s failed: %s", instance.key, exc.message)
            await self._stop(instance, "its load failed", counted=False)
            raise model_scoped(exc) from None
        except BaseException:
            await self._stop(instance, "its load was cancelled", counted=False)
            raise
        instance.ready = True
        instance.loaded_at = time.time()
        self._notify()

    async def _stop(self, instance: Instance, why: str, counted: bool = True) -> None:
        instance.retiring = True
        instance.stopping = True
        try:
            await instance.process.stop()
        finally:
            if self.instances.get(instance.key) is instance:
                del self.instances[instance.key]
            if counted and instance.ready:
                self.stats.unloads += 1
                self.log.info("unloaded %s: %s", instance.key, why)
            self._notify()

    # -- unloading --------------------------------------------------------------------------

    def matching(self, name: str, engine: str | None = None) -> list[Instance]:
        return [i for i in self.instances.values()
                if i.spec.model.name == name and (engine is None or i.spec.engine == engine)]

    async def unload(self, instances: list[Instance], wait_s: float) -> int:
        """Stop these once their requests are done (at most ``wait_s``); how many stopped.
        New requests for them wait and load them again afterwards."""
        for instance in instances:
            instance.retiring = True
        until = self.clock() + wait_s
        while any(i.leases for i in instances) and self.clock() < until:
            await self._wait(POLL_S)
        stopped = 0
        for instance in instances:
            if instance.leases == 0 and not instance.stopping:
                await self._stop(instance, "unloaded on request")
                stopped += 1
            elif instance.leases:
                instance.retiring = False  # still busy: keep it serving
        return stopped

    # -- the TTL ----------------------------------------------------------------------------

    async def reap(self) -> list[str]:
        now = self.clock()
        expired = [i for i in self.instances.values()
                   if i.ready and i.ttl_s > 0 and i.leases == 0 and not i.stopping and now - i.last_used > i.ttl_s]
        for instance in expired:
            await self._stop(instance, f"idle for {instance.ttl_s:g}s (its TTL)")
        return [i.key for i in expired]

    def start(self, interval_s: float = 1.0) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.reap()
                except Exception:  # noqa: BLE001 - the reaper must keep running
                    self.log.exception("the TTL reaper failed")

        if self._reaper is None:
            self._reaper = asyncio.create_task(loop())

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        await asyncio.gather(*(i.process.stop() for i in list(self.instances.values())), return_exceptions=True)
        self.instances.clear()

    # -- what it shows ----------------------------------------------------------------------

    def describe(self, instance: Instance, path_prefix: str) -> dict[str, Any]:
        """One entry of ``GET /v1/models/loaded`` (XandRouting's fields, real values)."""
        now = self.clock()
        ttl = instance.ttl_s
        if ttl > 0 and instance.leases == 0:
            remaining: float | None = max(0.0, ttl - (now - instance.last_used))
            expires: str | None = _iso(time.time() + (remaining or 0.0))
        else:  # never expires, or a request is in flight (the TTL starts when it ends)
            remaining = ttl if ttl > 0 else None
            expires = None
        options = instance.options
        return {
            "cache_key": instance.key,
            "model_path": f"{path_prefix.rstrip('/')}/{instance.spec.model.name}",
            "model": instance.spec.model.name,
            "backend": instance.spec.engine,
            "device": options.get("device"),
            "state": "ready" if instance.ready else ("stopping" if instance.stopping else "loading"),
            "loaded_at": _iso(instance.loaded_at),
            "last_used": _iso(instance.last_used_wall),
            "expires_at": expires,
            "ttl": ttl,
            "ttl_remaining": round(remaining, 1) if remaining is not None else None,
            "in_flight": instance.leases,
            "load_options": options,
            "memory_gb": round(instance.spec.memory_gb, 3),
            "pid": instance.process.pid,
        }
