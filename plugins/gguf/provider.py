"""The ``gguf`` provider: local GGUF models, each served by its own worker process.

The router never imports llama.cpp: each model runs in a worker (``python -m router worker
--provider gguf``, see ``plugins.gguf.worker``) started on the first request for it (or at
start-up with ``preload``). The machinery is the toolkit's (``router.workers``): a
``Launch`` per model, a ``ManagedProcess`` supervising it, a ``ModelPool`` holding the
leases (``idle_ttl_s`` is its TTL; ``max_loaded``/``max_memory_gb`` its limits), and the
``WorkerClient`` reaching it over loopback HTTP through one pooled session.

Config keys (beyond the common backend keys)::

    models_dir: ./models        # every *.gguf below it is a model (id = file stem)
    models:                     # and/or explicit entries (a path, or a mapping)
      - name: qwen2.5-7b
        path: ./models/qwen2.5-7b-instruct-q4_k_m.gguf
        n_ctx: 8192
        preload: true
    demo_model: true            # write tiny-demo.gguf into models_dir if it has no GGUF
    idle_ttl_s: 600             # stop a worker unused this long (default: never)

Every knob of ``GGUFKnobs`` (``n_ctx``, ``n_threads``, ``max_tokens_limit``...) can be
given at the backend level, as the default for all models, and in a model entry. See
docs/gguf.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from plugins.gguf.settings import (
    INSTALL_HINT,
    GGUFModel,
    GGUFOptions,
    WorkerSettings,
    engine_installed,
    missing_model,
)
from router import (
    BackendConfig,
    ModelCard,
    ModelNotFound,
    Provider,
    UpstreamError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamUnreachable,
)
from router.workers import Launch, Limits, ManagedProcess, ModelPool, State, WorkerClient, to_flags

log = logging.getLogger("router.gguf")


@dataclasses.dataclass
class _Model:
    settings: WorkerSettings
    process: ManagedProcess
    preload: bool


class GGUFProvider(Provider):
    options_class = GGUFOptions

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.options: GGUFOptions = config.options or GGUFOptions()
        self.client: WorkerClient | None = None
        self.pool: ModelPool[ManagedProcess] = ModelPool(
            ttl_s=self.options.idle_ttl_s, logger=log,
            limits=Limits(self.options.max_loaded, self.options.max_memory_gb))
        self.models: dict[str, _Model] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- models ----------------------------------------------------------------------------

    def settings_for(self, entry: GGUFModel) -> WorkerSettings:
        """The worker's settings: the backend's knobs with the entry's overrides."""
        knobs = dataclasses.replace(self.options.defaults, **entry.overrides)
        if knobs.prompt_cache_dir:
            knobs = dataclasses.replace(knobs, prompt_cache_dir=str(self.config.path(knobs.prompt_cache_dir)))
        path = self.config.path(entry.path)
        return WorkerSettings(model=str(path.resolve()), model_id=entry.name or path.stem, port=0, knobs=knobs)

    def _entries(self) -> list[GGUFModel]:
        """Explicit entries first, then every *.gguf under models_dir not already named."""
        entries = [GGUFModel(path=e) if isinstance(e, str) else e for e in self.options.models]
        paths = {str(self.config.path(e.path).resolve()) for e in entries}
        if self.options.models_dir:
            root = self.config.path(self.options.models_dir)
            if root.is_dir():
                for file in sorted(root.rglob("*.gguf")):
                    if str(file.resolve()) not in paths:
                        entries.append(GGUFModel(path=str(file)))
        return entries

    def refresh(self) -> None:
        """Sync the models with the config and models_dir (files added or removed)."""
        client = self._client()
        seen: set[str] = set()
        for entry in self._entries():
            settings = self.settings_for(entry)
            model_id = settings.served_id
            seen.add(model_id)
            if model_id in self.models:
                continue
            launch = Launch.router_worker("gguf", to_flags(settings),
                                          startup_timeout_s=self.options.startup_timeout_s)
            process = ManagedProcess(launch, client.session, label=f"gguf worker for {model_id!r}", logger=log)
            self.models[model_id] = _Model(settings, process, entry.preload)
            self.pool.add(model_id, process, memory_gb=_size_gb(settings.model))
        for gone in set(self.models) - seen:
            if self.pool.remove(gone):
                del self.models[gone]

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.client = WorkerClient(connect_timeout_s=self.config.connect_timeout_s,
                                   read_timeout_s=self.config.read_timeout_s)
        if self.options.demo_model and self.options.models_dir:
            await self._write_demo_model(self.config.path(self.options.models_dir))
        self.refresh()
        if engine_installed():
            # In the background: the router serves other backends while models load, and
            # requests for a loading model wait on the same start.
            for model_id, model in self.models.items():
                if model.preload:
                    self._spawn(self._preload(model_id))
        self.pool.start_reaper()

    async def _write_demo_model(self, models_dir: Path) -> None:
        from plugins.gguf.demo import ensure_demo_model

        try:
            written = await asyncio.to_thread(ensure_demo_model, models_dir)
        except ImportError as exc:  # the gguf/numpy writer is part of the extra
            log.warning("backend %s: cannot write the demo model (%s); %s", self.name, exc, INSTALL_HINT)
            return
        if written:
            log.info("backend %s: no GGUF in %s, wrote the demo model %s", self.name, models_dir, written)

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
            raise UpstreamError(f"backend {self.name!r}: no .gguf model found in {where} and none listed in models:")
        return [self._card(model_id, model) for model_id, model in self.models.items()]

    def _card(self, model_id: str, model: _Model) -> ModelCard:
        knobs = model.settings.knobs
        extra = {"path": model.settings.model, "loaded": model.process.current is State.READY,
                 "n_ctx": knobs.n_ctx, "embedding": knobs.embedding}
        return ModelCard(id=model_id, owned_by="gguf", extra=extra)

    def declared_models(self) -> list[ModelCard]:
        """The models named in the config and the files found in models_dir (reading the
        folder needs no engine), so while the backend cannot serve (the engine is not
        installed, say) a request for one gets 503 with the reason, not 404."""
        out = []
        for entry in self._entries():
            name = entry.name or Path(entry.path).stem
            out.append(ModelCard(id=name, owned_by="gguf"))
        return out

    async def health_check(self) -> None:
        await self.list_models()

    def status(self) -> dict[str, Any]:
        models = {}
        for model_id, model in self.models.items():
            in_flight = self.pool.leases(model_id)
            models[model_id] = {**model.process.status(), "in_flight": in_flight,
                                "queued": max(0, in_flight - 1), "path": model.settings.model}
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
                                "(no such .gguf file any more)", param="model")
        if not engine_installed():
            raise UpstreamError(f"backend {self.name!r}: {INSTALL_HINT}")
        if not Path(model.settings.model).is_file():
            raise missing_model(model.settings.model, f"model {request.model!r} of backend {self.name!r}")
        # Leased from here: requests waiting for the load count as queued too.
        lease = await self.pool.acquire(request.model)
        return await client.post(model.process, f"/v1/{request.endpoint}", request.body,
                                 headers=request.headers, release=lease.release)


def _size_gb(path: str) -> float:
    """What a model takes in memory, roughly: its file (the weights)."""
    try:
        return Path(path).stat().st_size / 2**30
    except OSError:
        return 0.0
