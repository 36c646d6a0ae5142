"""The set of live backends: adding and removing them, discovery and health loops.

Every change to what backends serve (start-up, discovery, a health check that brings a
backend back, the admin API) rebuilds the model index, so a request never scans backends.
A request for an unknown model triggers one early discovery (shared by concurrent misses,
at most one per ``MISS_REFRESH_S``), so a model just added upstream is routable at once
while a flood of bogus names cannot turn into a flood of discoveries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from cachetools import TTLCache

from router.config.schema import BackendConfig, Config
from router.errors import UpstreamError
from router.provider import ModelCard, Provider
from router.routing.backend import Backend
from router.routing.index import ModelIndex

log = logging.getLogger("router")

MISS_REFRESH_S = 10.0


class BackendSet:
    def __init__(self, config: Config, providers: Mapping[str, type[Provider]], index: ModelIndex) -> None:
        self.config = config
        self.providers = providers
        self.index = index
        self.backends: dict[str, Backend] = {}
        self._adding: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._miss_refresh: TTLCache[str, asyncio.Task[None]] = TTLCache(
            maxsize=1, ttl=min(MISS_REFRESH_S, config.routing.discovery_interval_s)
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(self.add(cfg, rebuild=False) for cfg in self.config.backends))
        self.index.rebuild(self.backends.values())

    def start_loops(self) -> None:
        routing = self.config.routing
        self._tasks.append(asyncio.create_task(self._every(routing.discovery_interval_s, self.discover_all)))
        self._tasks.append(asyncio.create_task(self._every(routing.health_check_interval_s, self.check_health_all)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def close(self) -> None:
        await asyncio.gather(*(b.provider.aclose() for b in self.backends.values()), return_exceptions=True)

    async def _every(self, interval: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception:  # noqa: BLE001 - a background loop must survive anything
                log.exception("background job %s failed", getattr(job, "__name__", job))

    # -- adding and removing ----------------------------------------------------------------

    def exists(self, name: str) -> bool:
        """A backend of this name is live or being added."""
        return name in self.backends or name in self._adding

    async def add(self, cfg: BackendConfig, *, rebuild: bool = True) -> Backend:
        provider = self.providers[cfg.provider](cfg)
        backend = Backend(cfg, provider, self.config.circuit_breaker)
        self._adding.add(cfg.name)
        try:
            await provider.start()
            await self.discover(backend)
        finally:
            self._adding.discard(cfg.name)
        self.backends[cfg.name] = backend
        if rebuild:
            self.index.rebuild(self.backends.values())
        return backend

    async def remove(self, name: str, drain_timeout_s: float) -> None:
        backend = self.backends[name]
        backend.draining = True  # no new requests; in-flight ones finish
        try:
            await asyncio.wait_for(backend.idle.wait(), drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("backend %s still had %d requests after draining", name, backend.in_flight)
        self.backends.pop(name, None)
        self.index.rebuild(self.backends.values())
        await backend.provider.aclose()

    # -- discovery and health ---------------------------------------------------------------

    async def discover(self, backend: Backend) -> None:
        """Read the backend's models; the result doubles as a health check."""
        try:
            cards = await backend.provider.list_models()
        except UpstreamError as exc:
            backend.healthy = False
            backend.last_error = exc.message
            log.warning("backend %s: discovery failed: %s", backend.name, exc.message)
            if not backend.models:
                backend.models = {c.id: c for c in backend.provider.declared_models()}
            return
        backend.healthy = True
        backend.models = {card.id: card for card in cards}
        for client_name in backend.config.aliases:
            backend.models.setdefault(client_name, ModelCard(id=client_name))

    async def discover_all(self) -> None:
        await asyncio.gather(*(self.discover(b) for b in list(self.backends.values())))
        self.index.rebuild(self.backends.values())

    async def refresh_for_unknown_model(self, model: str) -> bool:
        """Rediscover early because a client asked for ``model``; True if it is now served."""
        task = self._miss_refresh.get("all")
        if task is None:
            task = asyncio.create_task(self.discover_all())
            self._miss_refresh["all"] = task
        await asyncio.shield(task)
        return model in self.index

    async def check_health(self, backend: Backend) -> None:
        try:
            await backend.provider.health_check()
        except UpstreamError as exc:
            if backend.healthy is not False:
                log.warning("backend %s is unhealthy: %s", backend.name, exc.message)
            backend.healthy = False
            backend.last_error = exc.message
            return
        if backend.healthy is False:
            log.info("backend %s is healthy again", backend.name)
            backend.circuit.probe_passed()  # evidence it is back: an open circuit may try now
            if not backend.models:
                await self.discover(backend)
                self.index.rebuild(self.backends.values())
        backend.healthy = True

    async def check_health_all(self) -> None:
        await asyncio.gather(*(self.check_health(b) for b in list(self.backends.values())))

    def ready(self) -> bool:
        now = time.monotonic()
        return any(b.available(now) for b in self.backends.values())
