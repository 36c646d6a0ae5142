"""The router at run time, one per app: the pieces, wired together, started and stopped.

    RouterState
    ├── config      the loaded Config
    ├── hooks       the typed facade over the plugin manager (router.hooks)
    ├── registry    providers and strategies by name (router.registry)
    ├── index       model -> backends, aliases, strategy per model (router.routing.index)
    ├── backends    the live backends, discovery and health loops (router.routing.backends)
    ├── stats       the router's counters (router.stats)
    ├── telemetry   the request log line and request metrics (router.telemetry)
    ├── store       live settings and registered backends, kept in auth.store (router.store)
    ├── admission   server.max_concurrent, if set (router.routing.limits)
    └── view        the read-only RouterView that hooks receive (router.view)
"""

from __future__ import annotations

from typing import Any

import pluggy

from router.config.schema import Config
from router.hooks import Hooks
from router.registry import Registry
from router.routing.backends import BackendSet
from router.routing.index import ModelIndex
from router.routing.limits import Admission
from router.routing.budget import SlidingBudget
from router.stats import Stats
from router.store import Store
from router.telemetry import Telemetry
from router.view import RouterView


class RouterState:
    def __init__(self, config: Config, pm: pluggy.PluginManager, registry: Registry | None = None) -> None:
        self.config = config
        self.hooks = Hooks(pm)
        self.registry = registry or Registry.collect(self.hooks)
        self.index = ModelIndex(config, self.registry.strategies)
        self.backends = BackendSet(config, self.registry.providers, self.index)
        self.stats = Stats()
        routing = config.routing
        #: Bounds on the extra attempts failover and hedging add (router.routing.budget).
        self.retry_budget = (SlidingBudget(routing.retry_budget_pct, routing.retry_budget_min)
                             if routing.retry_budget_pct is not None else None)
        self.hedge_budget = SlidingBudget(routing.hedge.budget_pct) if routing.hedge is not None else None
        self.telemetry = Telemetry(config.server, config.path)
        #: auth.store: live settings and admin-registered backends (router.store).
        self.store = Store(config.auth.store if config.auth is not None else None)
        #: Settings changed through /admin/settings (now or before a restart): key -> value.
        self.stored: dict[str, Any] = {}
        self.view = RouterView(config, self.index, self.backends, self.stats)
        #: ``server.max_concurrent``: requests to the OpenAI endpoints at once, no queue.
        limit = config.server.max_concurrent
        self.admission = (Admission(limit, 0, label="the router (server.max_concurrent)")
                          if limit is not None else None)

    async def start(self) -> None:
        await self.backends.start()
        await self.hooks.startup(self.view)
        self.backends.start_loops()

    async def stop(self) -> None:
        await self.backends.stop()
        await self.hooks.shutdown(self.view)
        await self.backends.close()

    def status(self) -> dict[str, Any]:
        return self.view.status()
