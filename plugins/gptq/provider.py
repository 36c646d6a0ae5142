"""The ``gptq`` provider: Hugging Face model folders, each served by its own worker process.

The router never imports torch: each model runs in a worker (``python -m router worker
--provider gptq``, see ``plugins.gptq.worker``) started on the first request for it (or at
start-up with ``preload``). The machinery is the toolkit's (``router.workers``): a
``Launch`` per model, a ``ManagedProcess`` supervising it, a ``ModelPool`` holding the
leases (``idle_ttl_s``, per model or for the backend, is the TTL; ``max_loaded`` and
``max_memory_gb`` its limits), and the ``WorkerClient`` reaching it over loopback HTTP.

Config keys (beyond the common backend keys)::

    models:
      - name: llama-2-7b-chat-gptq
        path: ./models/Llama-2-7B-Chat-GPTQ   # a Hugging Face model folder
        device: auto                          # auto | cpu | cuda | cuda:1
        max_batch: 4                          # requests decoded together
        max_queue: 16                         # waiting beyond the batch; then 429
        preload: false
        idle_ttl_s: 0                         # 0: stay loaded
    models_dir: ./models                      # and/or: every folder with a config.json below it

Every knob of ``GPTQKnobs`` can be given at the backend level, as the default for all
models, and in a model entry. See docs/gptq.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from plugins.gptq.settings import (
    INSTALL_HINT,
    GPTQModel,
    GPTQOptions,
    WorkerSettings,
    engine_installed,
    inspect_folder,
    missing_folder,
)
from plugins.gptq.worker import workdir, worker_env
from router import (
    BackendConfig,
    ModelCard,
    ModelLoadFailed,
    ModelNotFound,
    Provider,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamUnreachable,
)
from router.workers import Launch, Limits, ManagedProcess, ModelPool, State, WorkerClient, to_flags

log = logging.getLogger("router.gptq")


@dataclasses.dataclass
class _Model:
    settings: WorkerSettings
    process: ManagedProcess
    preload: bool
    #: What the worker reported once loaded (device, context length), by its pid.
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    facts_pid: int | None = None


class GPTQProvider(Provider):
    options_class = GPTQOptions

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.options: GPTQOptions = config.options or GPTQOptions()
        self.client: WorkerClient | None = None
        self.pool: ModelPool[ManagedProcess] = ModelPool(
            ttl_s=self.options.idle_ttl_s, logger=log,
            limits=Limits(self.options.max_loaded, self.options.max_memory_gb))
        self.models: dict[str, _Model] = {}
        self._entries_by_id: dict[str, GPTQModel] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- models ----------------------------------------------------------------------------

    def settings_for(self, entry: GPTQModel) -> WorkerSettings:
        """The worker's settings: the backend's knobs with the entry's overrides."""
        knobs = dataclasses.replace(self.options.defaults, **entry.overrides)
        path = self.config.path(entry.path)
        return WorkerSettings(model=str(path.resolve()), model_id=entry.name or path.name, port=0, knobs=knobs)

    def _entries(self) -> list[GPTQModel]:
        """Explicit entries first, then every folder with a config.json under models_dir."""
        entries = [GPTQModel(path=e) if isinstance(e, str) else e for e in self.options.models]
        paths = {str(self.config.path(e.path).resolve()) for e in entries}
        if self.options.models_dir:
            root = self.config.path(self.options.models_dir)
            if root.is_dir():
                for config in sorted(root.glob("*/config.json")):
                    if str(config.parent.resolve()) not in paths:
                        entries.append(GPTQModel(path=str(config.parent)))
        return entries

    def refresh(self) -> None:
        """Sync the models with the config and models_dir (folders added or removed)."""
        client = self._client()
        seen: set[str] = set()
        for entry in self._entries():
            settings = self.settings_for(entry)
            model_id = settings.served_id
            seen.add(model_id)
            if model_id in self.models:
                continue
            launch = Launch.router_worker("gptq", to_flags(settings), env=worker_env(), cwd=str(workdir()),
                                          startup_timeout_s=self.options.startup_timeout_s)
            process = ManagedProcess(launch, client.session, label=f"gptq worker for {model_id!r}", logger=log)
            self.models[model_id] = _Model(settings, process, entry.preload)
            self.pool.add(model_id, process, memory_gb=_size_gb(settings.model), ttl_s=entry.idle_ttl_s)
        for gone in set(self.models) - seen:
            if self.pool.remove(gone):
                del self.models[gone]

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.client = WorkerClient(connect_timeout_s=self.config.connect_timeout_s,
                                   read_timeout_s=self.config.read_timeout_s)
        self.refresh()
        for model_id, model in self.models.items():
            if not Path(model.settings.model).exists():
                log.error("backend %s: %s", self.name, missing_folder(model.settings.model,
                                                                      f"model {model_id!r}").message)
        if engine_installed():
            # In the background: the router serves other backends while models load, and
            # requests for a loading model wait on the same start.
            for model_id, model in self.models.items():
                if model.preload:
                    self._spawn(self._preload(model_id))
        self.pool.start_reaper()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _preload(self, model_id: str) -> None:
        try:
            await self.pool.preload(model_id)
        except UpstreamError as exc:
            log.error("backend %s: preloading %r failed: %s", self.name, model_id, exc.message)

    async def aclose(self) -> None:
        for task in self._background:
            task.cancel()
        await self.pool.aclose()
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def _client(self) -> WorkerClient:
        if self.client is None:
            raise UpstreamUnreachable(f"backend {self.name!r} is not started")
        return self.client

    # -- discovery and health --------------------------------------------------------------

    async def list_models(self) -> list[ModelCard]:
        self._client()
        if not engine_installed():
            raise UpstreamError(f"backend {self.name!r}: {INSTALL_HINT}")
        self.refresh()
        if not self.models:
            where = self.options.models_dir or "(no models_dir)"
            raise UpstreamError(f"backend {self.name!r}: no model folder found in {where} and none listed in models:")
        cards = []
        for model_id, model in self.models.items():
            await self._learn(model)
            cards.append(self._card(model_id, model))
        return cards

    async def _learn(self, model: _Model) -> None:
        """Once a worker is loaded: the device and context length it reports."""
        process = model.process
        if process.current is not State.READY or model.facts_pid == process.pid:
            return
        try:
            async with self._client().session.get(process.url + "/health",
                                                  timeout=aiohttp.ClientTimeout(total=2)) as response:
                if response.status == 200:
                    data = await response.json()
                    model.facts = {k: data[k] for k in ("device", "dtype", "context_length") if k in data}
                    model.facts_pid = process.pid
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            pass

    def _card(self, model_id: str, model: _Model) -> ModelCard:
        knobs = model.settings.knobs
        loaded = model.process.current is State.READY
        extra: dict[str, Any] = {"path": model.settings.model, "loaded": loaded, "device": knobs.device,
                                 "context_length": _context_length(model.settings), "max_batch": knobs.max_batch}
        if loaded and model.facts_pid == model.process.pid:
            extra.update(model.facts)
        return ModelCard(id=model_id, owned_by="gptq", extra=extra)

    def declared_models(self) -> list[ModelCard]:
        """The models named in the config and the folders found in models_dir (no engine
        needed), so while the backend cannot serve a request for one gets 503, not 404."""
        return [ModelCard(id=e.name or Path(e.path).name, owned_by="gptq") for e in self._entries()]

    async def health_check(self) -> None:
        await self.list_models()

    def status(self) -> dict[str, Any]:
        models = {}
        for model_id, model in self.models.items():
            in_flight = self.pool.leases(model_id)
            batch = model.settings.knobs.max_batch
            models[model_id] = {**model.process.status(), "in_flight": in_flight,
                                "queued": max(0, in_flight - batch), "path": model.settings.model,
                                "max_batch": batch}
        return {"models": models}

    # -- requests --------------------------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        client = self._client()
        model = self.models.get(request.model)
        if model is None:
            self.refresh()
            model = self.models.get(request.model)
        if model is None:
            raise ModelNotFound(f"model {request.model!r} is not in backend {self.name!r} "
                                "(no such model folder any more)", param="model")
        if not engine_installed():
            raise UpstreamError(f"backend {self.name!r}: {INSTALL_HINT}")
        if not Path(model.settings.model).exists():
            raise missing_folder(model.settings.model, f"model {request.model!r} of backend {self.name!r}")
        # Leased from here: requests waiting for the load count as queued too.
        lease = await self.pool.acquire(request.model)
        return await client.post(model.process, f"/v1/{request.endpoint}", request.body,
                                 headers=request.headers, release=lease.release)


def _context_length(settings: WorkerSettings) -> int | None:
    """From config.json (and the knob), read without loading anything."""
    try:
        return inspect_folder(settings.model).context_length(settings.knobs)
    except ModelLoadFailed:
        return settings.knobs.context_length


def _size_gb(path: str) -> float:
    """What a model takes in memory, roughly: its weight files."""
    try:
        return inspect_folder(path).size_bytes / 2**30
    except ModelLoadFailed:
        return 0.0
