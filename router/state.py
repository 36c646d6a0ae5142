"""The router's run-time state: backends, the model index, discovery and health loops.

One ``RouterState`` per app. It builds each backend's provider from the registry, keeps
``model -> backends`` current as discovery runs, and owns the background tasks.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import inspect
import logging
import time
from collections.abc import Iterable
from typing import Any

import pluggy
from cachetools import TTLCache

from router import plugins
from router.backend import Backend
from router.config import BackendConfig, Config
from router.errors import UpstreamError
from router.provider import ModelCard, Provider
from router.strategies import Strategy

log = logging.getLogger("router")

MISS_REFRESH_S = 10.0


async def await_maybe(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def call_hook(hook: Any, **kwargs: Any) -> list[Any]:
    return [await await_maybe(r) for r in hook(**kwargs)]


class RouterState:
    def __init__(self, config: Config, pm: pluggy.PluginManager) -> None:
        self.config = config
        self.pm = pm
        self.providers: dict[str, type[Provider]] = plugins.providers(pm)
        strategy_classes = plugins.strategies(pm)
        self.strategy: Strategy = strategy_classes[config.routing.strategy](config.routing)
        self.model_strategies: list[tuple[str, Strategy]] = [
            (pattern, strategy_classes[name](config.routing))
            for pattern, name in config.routing.model_strategies.items()
        ]
        self.backends: dict[str, Backend] = {}
        self.index: dict[str, list[Backend]] = {}
        self.aliases: dict[str, str] = dict(config.aliases)
        self._tasks: list[asyncio.Task[None]] = []
        # Totals since start, shown in /status: client requests, extra attempts made on
        # another backend (failover), and requests that ended in an error.
        self.requests = 0
        self.retries = 0
        self.errors = 0
        self.responses_by_status: collections.Counter[int] = collections.Counter()
        self._strategy_cache: dict[str, Strategy] = {}
        # A request for an unknown model triggers one early discovery (shared by concurrent
        # misses, at most one per MISS_REFRESH_S), so a model just added upstream is
        # routable at once; a flood of bogus names cannot turn into a flood of discoveries.
        self._miss_refresh: TTLCache[str, asyncio.Task[None]] = TTLCache(
            maxsize=1, ttl=min(MISS_REFRESH_S, config.routing.discovery_interval_s)
        )
        # Per-request hooks are skipped entirely when no plugin implements them.
        self.has_prepare_hooks = bool(pm.hook.prepare_request.get_hookimpls())
        self.has_filter_hooks = bool(pm.hook.filter_backends.get_hookimpls())
        self.has_observe_hooks = bool(pm.hook.observe_response.get_hookimpls())

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(self.add_backend(cfg, rebuild=False) for cfg in self.config.backends))
        self.rebuild_index()
        await call_hook(self.pm.hook.startup, state=self)
        routing = self.config.routing
        self._tasks.append(asyncio.create_task(self._every(routing.discovery_interval_s, self.discover_all)))
        self._tasks.append(
            asyncio.create_task(self._every(routing.health_check_interval_s, self.check_health_all))
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await call_hook(self.pm.hook.shutdown, state=self)
        await asyncio.gather(*(b.provider.aclose() for b in self.backends.values()), return_exceptions=True)

    async def _every(self, interval: float, job: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception:  # noqa: BLE001 - a background loop must survive anything
                log.exception("background job %s failed", getattr(job, "__name__", job))

    # -- backends -------------------------------------------------------------------------

    async def add_backend(self, cfg: BackendConfig, *, rebuild: bool = True) -> Backend:
        provider = self.providers[cfg.provider](cfg)
        backend = Backend(cfg, provider, self.config.circuit_breaker)
        await provider.start()
        await self.discover(backend)
        self.backends[cfg.name] = backend
        if rebuild:
            self.rebuild_index()
        return backend

    async def remove_backend(self, name: str, drain_timeout_s: float) -> None:
        backend = self.backends[name]
        backend.draining = True  # no new requests; in-flight ones finish
        try:
            await asyncio.wait_for(backend.idle.wait(), drain_timeout_s)
        except asyncio.TimeoutError:
            log.warning("backend %s still had %d requests after draining", name, backend.in_flight)
        self.backends.pop(name, None)
        self.rebuild_index()
        await backend.provider.aclose()

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
        self.rebuild_index()

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
            if not backend.models:
                await self.discover(backend)
                self.rebuild_index()
        backend.healthy = True

    async def check_health_all(self) -> None:
        await asyncio.gather(*(self.check_health(b) for b in list(self.backends.values())))

    # -- model index ----------------------------------------------------------------------

    def rebuild_index(self) -> None:
        index: dict[str, list[Backend]] = {}
        for backend in self.backends.values():
            for model in backend.models:
                index.setdefault(model, []).append(backend)
        self.index = index
        self._strategy_cache.clear()

    def resolve(self, model: str) -> str:
        """A client-facing model name after global aliases."""
        return self.aliases.get(model, model)

    def served_models(self) -> Iterable[tuple[str, ModelCard | None, list[Backend]]]:
        for model_id, backends in sorted(self.index.items()):
            yield model_id, backends[0].models.get(model_id), backends
        for alias, target in sorted(self.aliases.items()):
            if alias not in self.index and target in self.index:
                yield alias, None, self.index[target]

    def strategy_for(self, model: str) -> Strategy:
        cached = self._strategy_cache.get(model)
        if cached is not None:
            return cached
        strategy = self.strategy
        for pattern, candidate in self.model_strategies:
            if fnmatch.fnmatchcase(model, pattern):
                strategy = candidate
                break
        self._strategy_cache[model] = strategy
        return strategy

    def ready(self) -> bool:
        now = time.monotonic()
        return any(b.available(now) for b in self.backends.values())

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready(),
            "strategy": self.config.routing.strategy,
            "requests": self.requests,
            "retries": self.retries,
            "errors": self.errors,
            "backends": [b.status() for b in self.backends.values()],
            "aliases": self.aliases,
        }


