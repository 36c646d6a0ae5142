"""The ``dynamic`` provider: any model in ``models_dir``, loaded when a request names it.

A request's ``model`` is a path in ``models_dir`` (or the same path behind
``path_prefix``, as XandRouting clients send it). The engine is chosen
(``plugins.dynamic.engines``), the model leased from the ``Lifecycle`` (one load however
many wait, TTL, LRU, grouping, reload on new options), and the body, without its load
fields, posted to the model's process through the toolkit's ``WorkerClient``. Failures
of one model are marked ``model_scoped``: they never open the backend's circuit.

Config keys: see ``plugins.dynamic.settings.DynamicOptions`` and docs/dynamic.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from plugins.dynamic.engines import choose_engine, launch_for, memory_gb
from plugins.dynamic.inventory import ModelFile, inventory, resolve, scan
from plugins.dynamic.lifecycle import Instance, Lifecycle, Spec, model_scoped
from plugins.dynamic.settings import LOAD_FIELDS, DynamicOptions, LoadRequest, load_request
from router import (
    BackendConfig,
    InvalidRequest,
    ModelCard,
    NotFound,
    Provider,
    RouterError,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamUnreachable,
    jsonlib,
    shown,
)
from router.workers import Limits, ManagedProcess, WorkerClient

log = logging.getLogger("router.dynamic")

#: How long ``POST /v1/models/unload`` waits for a model's requests to finish.
UNLOAD_WAIT_S = 60.0


class _CardFacts(Mapping[str, Any]):
    """A model card's extra fields, with ``loaded`` read live (cards are kept between
    discoveries; whether the model is loaded changes in between)."""

    __slots__ = ("_provider", "_name", "_fixed")

    def __init__(self, provider: DynamicProvider, name: str, fixed: dict[str, Any]) -> None:
        self._provider, self._name, self._fixed = provider, name, fixed

    def __getitem__(self, key: str) -> Any:
        if key == "loaded":
            return self._provider.is_warm(self._name)
        return self._fixed[key]

    def __iter__(self) -> Iterator[str]:
        yield "loaded"
        yield from self._fixed

    def __len__(self) -> int:
        return len(self._fixed) + 1


class DynamicProvider(Provider):
    options_class = DynamicOptions
    loads_on_demand = True

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.options: DynamicOptions = config.options or DynamicOptions()
        self.root = config.path(self.options.models_dir)
        self.client: WorkerClient | None = None
        self.lifecycle = Lifecycle(
            limits=Limits(self.options.max_loaded, self.options.max_memory_gb),
            default_ttl_s=self.options.default_ttl_s, max_wait_s=self.options.max_wait_s,
            group_window_s=self.options.group_window_s, make_process=self._process, logger=log)
        #: The Hugging Face downloads into models_dir (None without the ``dynamic`` extra).
        self.downloads: Any = None
        self.downloads_problem = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.client = WorkerClient(connect_timeout_s=self.config.connect_timeout_s,
                                   read_timeout_s=self.config.read_timeout_s)
        if not self.root.is_dir():
            log.error("backend %s: models_dir %s is not a folder", self.name, self.root)
        self.lifecycle.start()
        await self._start_downloads()

    async def _start_downloads(self) -> None:
        try:
            from plugins.dynamic.downloads import Downloads
        except ImportError as exc:
            self.downloads_problem = f"{exc}; install the extra: pip install '.[dynamic]'"
            log.warning("backend %s: no downloads: %s", self.name, self.downloads_problem)
            return
        store = (self.config.path(self.options.downloads_store) if self.options.downloads_store
                 else self.root / ".downloads" / "jobs.db")
        store.parent.mkdir(parents=True, exist_ok=True)
        downloads = Downloads(self.root, store, path_prefix=self.options.path_prefix, logger=log)
        await downloads.start()
        self.downloads = downloads

    async def aclose(self) -> None:
        if self.downloads is not None:
            await self.downloads.aclose()
            self.downloads = None
        await self.lifecycle.aclose()
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def _client(self) -> WorkerClient:
        if self.client is None:
            raise UpstreamUnreachable(f"backend {self.name!r} is not started")
        return self.client

    def _process(self, spec: Spec) -> ManagedProcess:
        launch = launch_for(self.options, spec.engine, spec.model, spec.model.name, dict(spec.options))
        return ManagedProcess(launch, self._client().session, logger=log,
                              label=f"{spec.engine} engine for {spec.model.name!r}")

    # -- models ------------------------------------------------------------------------------

    def _names(self, model: str) -> str:
        """The model's name relative to models_dir (the path prefix taken off)."""
        prefix = self.options.path_prefix.rstrip("/")
        if prefix and model.startswith(prefix + "/"):
            return model[len(prefix) + 1:]
        return model

    async def list_models(self) -> list[ModelCard]:
        if not self.root.is_dir():
            raise UpstreamError(f"backend {self.name!r}: models_dir {self.root} is not a folder")
        found = await asyncio.to_thread(scan, self.root)
        prefix = self.options.path_prefix.rstrip("/")
        cards = []
        for model in found:
            extra = _CardFacts(self, model.name, {"path": f"{prefix}/{model.name}", "model_type": model.kind})
            cards.append(ModelCard(id=model.name, owned_by="dynamic", extra=extra))
            if prefix:
                cards.append(ModelCard(id=f"{prefix}/{model.name}", owned_by="dynamic", extra=extra, listed=False))
        return cards

    def is_warm(self, model: str) -> bool:
        name = self._names(model)
        return any(i.ready and i.spec.model.name == name for i in self.lifecycle.instances.values())

    def spec_for(self, model: str, load: LoadRequest) -> Spec:
        """What a request for ``model`` needs (400/404 naming what is wrong)."""
        found: ModelFile = resolve(self.root, model, self.options.path_prefix)
        engine = choose_engine(self.options, found, load.engine)
        options = dict(load.options)
        launch_for(self.options, engine, found, found.name, options)  # a missing placeholder is a 400 now
        return Spec(found, engine, load.engine is not None, load.options, load.ttl_s, memory_gb(found))

    # -- requests ------------------------------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        client = self._client()
        payload = request.payload
        spec = self.spec_for(request.model, load_request(payload))
        body = request.body
        if payload.get("model") != spec.model.name or any(f in payload for f in LOAD_FIELDS):
            body = jsonlib.dumps({**{k: v for k, v in payload.items() if k not in LOAD_FIELDS},
                                  "model": spec.model.name})
        lease = await self.lifecycle.acquire(spec)
        try:
            return await client.post(lease.instance.process, f"/v1/{request.endpoint}", body,
                                     headers=request.headers, release=lease.release)
        except RouterError as exc:
            raise model_scoped(exc) from None

    # -- what it shows -------------------------------------------------------------------------

    def loaded(self) -> list[dict[str, Any]]:
        return [self.lifecycle.describe(i, self.options.path_prefix) for i in self.lifecycle.instances.values()]

    def status(self) -> dict[str, Any]:
        return {"models_dir": str(self.root), "loaded": self.loaded(), "stats": self.stats()}

    def stats(self) -> dict[str, Any]:
        """``GET /v1/models/stats``: XandRouting's fields, with real counters."""
        s = self.lifecycle.stats
        instances = list(self.lifecycle.instances.values())
        lookups = s.hits + s.misses
        return {
            "total_models_loaded": sum(1 for i in instances if i.ready),
            "active_models": sum(1 for i in instances if i.leases),
            "total_requests_served": s.requests,
            "cache_hits": s.hits, "cache_misses": s.misses,
            "hit_rate": round(100.0 * s.hits / lookups, 1) if lookups else 0.0,
            "loads": s.loads, "load_failures": s.load_failures, "unloads": s.unloads,
            "evictions": s.evictions, "reloads": s.reloads, "waits": s.waits, "no_capacity": s.no_capacity,
            "estimated_memory_gb": round(sum(i.spec.memory_gb for i in instances), 3),
            "estimated_gpu_memory_mb": None, "estimated_cpu_memory_mb": None,
        }

    def inventory(self) -> dict[str, Any]:
        return inventory(self.root, self.options.path_prefix)

    # -- management ----------------------------------------------------------------------------

    def instances_for(self, model: str, engine: str | None) -> list[Instance]:
        name = self._names(model).lstrip("/")
        return self.lifecycle.matching(name, engine)

    async def unload(self, model: str, engine: str | None = None) -> dict[str, Any]:
        instances = self.instances_for(model, engine)
        if not instances:
            raise NotFound(f"model {shown(model)} is not loaded on backend {self.name!r}; "
                           "GET /v1/models/loaded lists what is", code="model_not_loaded", param="model")
        count = await self.lifecycle.unload(instances, UNLOAD_WAIT_S)
        return {"status": "unloaded" if count else "busy", "model_path": model, "count": count,
                "results": [{"backend": i.spec.engine, "status": "unloaded" if i.stopping else "busy"}
                            for i in instances]}

    async def unload_all(self) -> int:
        return await self.lifecycle.unload(list(self.lifecycle.instances.values()), UNLOAD_WAIT_S)

    async def load(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``POST /v1/models/load``: load now (as a request would), then leave it idle."""
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' (a path in the models folder) is required", param="model")
        spec = self.spec_for(model, load_request(payload))
        lease = await self.lifecycle.acquire(spec)
        lease.release()
        return {"status": "loaded", **self.lifecycle.describe(lease.instance, self.options.path_prefix)}

