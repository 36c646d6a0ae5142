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
from router import BackendConfig, ModelCard, ModelLoadFailed, RouterError
from router.workers import Launch, Limits, LocalModel, State, WorkerProvider, to_flags

log = logging.getLogger("router.gptq")


class GPTQProvider(WorkerProvider[GPTQModel, WorkerSettings]):
    options_class = GPTQOptions
    engine = "gptq"
    model_kind = "model folder"

    def __init__(self, config: BackendConfig) -> None:
        self.options: GPTQOptions = config.options or GPTQOptions()
        super().__init__(config, idle_ttl_s=self.options.idle_ttl_s, logger=log,
                         limits=Limits(self.options.max_loaded, self.options.max_memory_gb),
                         startup_timeout_s=self.options.startup_timeout_s)

    # -- models ----------------------------------------------------------------------------

    def settings_for(self, entry: GPTQModel) -> WorkerSettings:
        """The worker's settings: the backend's knobs with the entry's overrides."""
        knobs = dataclasses.replace(self.options.defaults, **entry.overrides)
        path = self.config.path(entry.path)
        return WorkerSettings(model=str(path.resolve()), model_id=entry.name or path.name, port=0, knobs=knobs)

    def configured(self) -> list[GPTQModel]:
        return [GPTQModel(path=e) if isinstance(e, str) else e for e in self.options.models]

    def entry_for(self, path: Path) -> GPTQModel:
        return GPTQModel(path=str(path))

    def entry_path(self, entry: GPTQModel) -> str:
        return entry.path

    def models_dir(self) -> str | None:
        return self.options.models_dir

    def found(self, root: Path) -> list[Path]:
        """Every folder with a config.json in it."""
        return sorted(c.parent for c in root.glob("*/config.json"))

    def model_id(self, settings: WorkerSettings) -> str:
        return settings.served_id

    def model_path(self, settings: WorkerSettings) -> str:
        return settings.model

    def launch_for(self, settings: WorkerSettings) -> Launch:
        # Its own working directory: importing gptqmodel writes ./logs.
        return Launch.router_worker("gptq", to_flags(settings), env=worker_env(), cwd=str(workdir()),
                                    startup_timeout_s=self.startup_timeout_s)

    def entry_ttl(self, entry: GPTQModel) -> float | None:
        return entry.idle_ttl_s

    def memory_gb(self, settings: WorkerSettings) -> float:
        """Roughly its weight files."""
        try:
            return inspect_folder(settings.model).size_bytes / 2**30
        except ModelLoadFailed:
            return 0.0

    def engine_problem(self) -> str | None:
        return None if engine_installed() else INSTALL_HINT

    def missing(self, settings: WorkerSettings, what: str) -> RouterError | None:
        return None if Path(settings.model).exists() else missing_folder(settings.model, what)

    def queued(self, model: LocalModel[WorkerSettings], in_flight: int) -> int:
        return max(0, in_flight - model.settings.knobs.max_batch)  # max_batch are decoded at once

    def status_extra(self, model: LocalModel[WorkerSettings]) -> dict[str, Any]:
        return {"max_batch": model.settings.knobs.max_batch}

    async def card(self, model_id: str, model: LocalModel[WorkerSettings]) -> ModelCard:
        await self._learn(model)
        knobs = model.settings.knobs
        loaded = model.process.current is State.READY
        extra: dict[str, Any] = {"path": model.settings.model, "loaded": loaded, "device": knobs.device,
                                 "context_length": _context_length(model.settings), "max_batch": knobs.max_batch}
        if loaded and model.facts_pid == model.process.pid:
            extra.update(model.facts)
        return ModelCard(id=model_id, owned_by="gptq", extra=extra)

    async def _learn(self, model: LocalModel[WorkerSettings]) -> None:
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


def _context_length(settings: WorkerSettings) -> int | None:
    """From config.json (and the knob), read without loading anything."""
    try:
        return inspect_folder(settings.model).context_length(settings.knobs)
    except ModelLoadFailed:
        return settings.knobs.context_length

