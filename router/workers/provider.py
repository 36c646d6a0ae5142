"""The router side of a local engine, written once: a provider whose models each run in a
worker process of this router (``python -m router worker --provider ENGINE``).

``WorkerProvider`` keeps the models in sync with the config and the models folder, gives
each a ``Launch`` and a ``ManagedProcess``, holds them in a ``ModelPool`` (leases, idle
TTL, limits), preloads in the background, and sends each request through the
``WorkerClient`` under a lease. An engine plugin says only what differs: where its models
are (``configured``, ``found``), how an entry becomes worker settings (``settings_for``), how to describe
a model (``card``), and what may stop a model from being served (``engine_problem``,
``missing``).
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from router.config.schema import BackendConfig
from router.errors import ModelNotFound, RouterError, UpstreamError, UpstreamUnreachable
from router.provider import ModelCard, Provider, UpstreamRequest, UpstreamResponse
from router.workers.client import WorkerClient
from router.workers.eviction import Limits
from router.workers.launch import Launch, to_flags
from router.workers.pool import ModelPool
from router.workers.process import ManagedProcess

E = TypeVar("E")  # a model entry of the plugin's config
S = TypeVar("S")  # the plugin's worker settings


@dataclasses.dataclass
class LocalModel(Generic[S]):
    """One model of a backend: its worker's settings and its supervised process."""

    settings: S
    process: ManagedProcess
    preload: bool
    #: What the worker said about itself once loaded (device, context length...), by pid.
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    facts_pid: int | None = None


class WorkerProvider(Provider, Generic[E, S]):
    #: The worker's ``--provider`` name (``register_workers``), also used in messages.
    engine: ClassVar[str]
    #: What a model is on disk, for messages ("a .gguf file", "a model folder").
    model_kind: ClassVar[str] = "model"
    loads_on_demand = True
    continues_prefill = True  # the toolkit's engines continue a trailing assistant message

    def __init__(self, config: BackendConfig, *, idle_ttl_s: float | None, limits: Limits,
                 startup_timeout_s: float, logger: logging.Logger) -> None:
        super().__init__(config)
        self.log = logger
        self.startup_timeout_s = startup_timeout_s
        self.client: WorkerClient | None = None
        self.pool: ModelPool[ManagedProcess] = ModelPool(ttl_s=idle_ttl_s, logger=logger, limits=limits)
        self.models: dict[str, LocalModel[S]] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- what an engine plugin says ----------------------------------------------------------

    @abc.abstractmethod
    def configured(self) -> list[E]:
        """The entries written in the config (``models:``)."""

    @abc.abstractmethod
    def entry_for(self, path: Path) -> E:
        """The entry for a model found on disk (knobs from the backend level)."""

    @abc.abstractmethod
    def entry_path(self, entry: E) -> str:
        """Where the entry says its model is (relative to the config's folder)."""

    def models_dir(self) -> str | None:
        """The folder models are found in (``models_dir``), if any."""
        return None

    def found(self, root: Path) -> list[Path]:
        """The models in ``root``, sorted (files or folders, as the engine reads them)."""
        return []

    def entries(self) -> list[E]:
        """The config's entries first, then every model found in ``models_dir`` that no
        entry names already."""
        entries = self.configured()
        named = {str(self.config.path(self.entry_path(e)).resolve()) for e in entries}
        folder = self.models_dir()
        if folder:
            root = self.config.path(folder)
            if root.is_dir():
                entries += [self.entry_for(p) for p in self.found(root) if str(p.resolve()) not in named]
        return entries

    @abc.abstractmethod
    def settings_for(self, entry: E) -> S:
        """The worker settings for one entry (backend defaults with its overrides)."""

    @abc.abstractmethod
    def model_id(self, settings: S) -> str:
        """The name the model is served under."""

    @abc.abstractmethod
    def model_path(self, settings: S) -> str:
        """Where the model is on disk."""

    @abc.abstractmethod
    async def card(self, model_id: str, model: LocalModel[S]) -> ModelCard:
        """The model as ``/v1/models`` lists it."""

    def launch_for(self, settings: S) -> Launch:
        return Launch.router_worker(self.engine, to_flags(settings), startup_timeout_s=self.startup_timeout_s)

    def entry_preload(self, entry: E) -> bool:
        return bool(getattr(entry, "preload", False))

    def entry_ttl(self, entry: E) -> float | None:
        """The entry's own idle TTL (None: the backend's)."""
        return None

    def memory_gb(self, settings: S) -> float:
        """What the model takes in memory, roughly (for ``max_memory_gb``)."""
        return 0.0

    def engine_problem(self) -> str | None:
        """Why no model can be served at all (the engine is not installed, say), or None."""
        return None

    def missing(self, settings: S, what: str) -> RouterError | None:
        """The error when the model's files are not there (``what`` names the model), or None."""
        return None

    def queued(self, model: LocalModel[S], in_flight: int) -> int:
        """How many of the model's in-flight requests are waiting (one runs at a time)."""
        return max(0, in_flight - 1)

    def status_extra(self, model: LocalModel[S]) -> dict[str, Any]:
        return {}

    def models_location(self) -> str:
        """Where models are looked for on disk, for messages."""
        return self.models_dir() or "(no models_dir)"

    async def prepare(self) -> None:
        """Called at start, before the models are first read (e.g. write a demo model)."""

    # -- the models ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Sync the models with the config and the disk (models added or removed)."""
        client = self._client()
        seen: set[str] = set()
        for entry in self.entries():
            settings = self.settings_for(entry)
            model_id = self.model_id(settings)
            seen.add(model_id)
            if model_id in self.models:
                continue
            process = ManagedProcess(self.launch_for(settings), client.session,
                                     label=f"{self.engine} worker for {model_id!r}", logger=self.log)
            self.models[model_id] = LocalModel(settings, process, self.entry_preload(entry))
            self.pool.add(model_id, process, memory_gb=self.memory_gb(settings), ttl_s=self.entry_ttl(entry))
        for gone in set(self.models) - seen:
            if self.pool.remove(gone):
                del self.models[gone]

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.client = WorkerClient(connect_timeout_s=self.config.connect_timeout_s,
                                   read_timeout_s=self.config.read_timeout_s)
        await self.prepare()
        self.refresh()
        for model_id, model in self.models.items():
            error = self.missing(model.settings, f"model {model_id!r}")
            if error is not None:
                self.log.error("backend %s: %s", self.name, error.message)
        if self.engine_problem() is None:
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
            self.log.error("backend %s: preloading %r failed: %s", self.name, model_id, exc.message)

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

    def _unservable(self) -> UpstreamError | None:
        problem = self.engine_problem()
        return UpstreamError(f"backend {self.name!r}: {problem}") if problem else None

    # -- discovery and health ----------------------------------------------------------------------

    async def list_models(self) -> list[ModelCard]:
        self._client()
        if (error := self._unservable()) is not None:
            raise error
        self.refresh()
        if not self.models:
            raise UpstreamError(f"backend {self.name!r}: no {self.model_kind} found in "
                                f"{self.models_location()} and none listed in models:")
        return [await self.card(model_id, model) for model_id, model in self.models.items()]

    def declared_models(self) -> list[ModelCard]:
        """The models named in the config and found on disk (no engine needed), so while
        the backend cannot serve (the engine is not installed, say) a request for one gets
        503 with the reason, not 404."""
        return [ModelCard(id=self.model_id(self.settings_for(e)), owned_by=self.engine) for e in self.entries()]

    def _known(self, model: str) -> None:
        if model not in self.models:
            self.refresh()
        if model not in self.models:
            raise ModelNotFound(f"model {model!r} is not in backend {self.name!r}", param="model")

    async def load_model(self, model: str) -> None:
        self._known(model)
        if (error := self._unservable()) is not None:
            raise error
        await self.pool.preload(model)

    async def unload_model(self, model: str) -> bool:
        self._known(model)
        return await self.pool.unload(model)

    def is_warm(self, model: str) -> bool:
        local = self.models.get(model)
        return local is not None and local.process.alive()

    async def health_check(self) -> None:
        await self.list_models()

    def status(self) -> dict[str, Any]:
        models = {}
        for model_id, model in self.models.items():
            in_flight = self.pool.leases(model_id)
            models[model_id] = {**model.process.status(), "in_flight": in_flight,
                                "queued": self.queued(model, in_flight), "path": self.model_path(model.settings),
                                **self.status_extra(model)}
        return {"models": models}

    # -- requests ----------------------------------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        client = self._client()
        model = self.models.get(request.model)
        if model is None:
            self.refresh()
            model = self.models.get(request.model)
        if model is None:
            raise ModelNotFound(f"model {request.model!r} is not in backend {self.name!r} "
                                f"(no such {self.model_kind} any more)", param="model")
        if (error := self._unservable()) is not None:
            raise error
        missing = self.missing(model.settings, f"model {request.model!r} of backend {self.name!r}")
        if missing is not None:
            raise missing
        # Leased from here: requests waiting for the load count as queued too.
        lease = await self.pool.acquire(request.model)
        return await client.post(model.process, f"/v1/{request.endpoint}", request.body,
                                 headers=request.headers, release=lease.release)
