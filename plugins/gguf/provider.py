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
from pathlib import Path

from plugins.gguf.settings import (
    INSTALL_HINT,
    GGUFModel,
    GGUFOptions,
    WorkerSettings,
    engine_installed,
    missing_model,
)
from router import BackendConfig, ModelCard, RouterError
from router.workers import Limits, LocalModel, State, WorkerProvider

log = logging.getLogger("router.gguf")


class GGUFProvider(WorkerProvider[GGUFModel, WorkerSettings]):
    options_class = GGUFOptions
    engine = "gguf"
    model_kind = ".gguf file"

    def __init__(self, config: BackendConfig) -> None:
        self.options: GGUFOptions = config.options or GGUFOptions()
        super().__init__(config, idle_ttl_s=self.options.idle_ttl_s, logger=log,
                         limits=Limits(self.options.max_loaded, self.options.max_memory_gb),
                         startup_timeout_s=self.options.startup_timeout_s)

    # -- models ----------------------------------------------------------------------------

    def settings_for(self, entry: GGUFModel) -> WorkerSettings:
        """The worker's settings: the backend's knobs with the entry's overrides."""
        knobs = dataclasses.replace(self.options.defaults, **entry.overrides)
        if knobs.prompt_cache_dir:
            knobs = dataclasses.replace(knobs, prompt_cache_dir=str(self.config.path(knobs.prompt_cache_dir)))
        path = self.config.path(entry.path)
        return WorkerSettings(model=str(path.resolve()), model_id=entry.name or path.stem, port=0, knobs=knobs)

    def configured(self) -> list[GGUFModel]:
        return [GGUFModel(path=e) if isinstance(e, str) else e for e in self.options.models]

    def entry_for(self, path: Path) -> GGUFModel:
        return GGUFModel(path=str(path))

    def entry_path(self, entry: GGUFModel) -> str:
        return entry.path

    def models_dir(self) -> str | None:
        return self.options.models_dir

    def found(self, root: Path) -> list[Path]:
        """Every *.gguf below it."""
        return sorted(root.rglob("*.gguf"))

    def model_id(self, settings: WorkerSettings) -> str:
        return settings.served_id

    def model_path(self, settings: WorkerSettings) -> str:
        return settings.model

    def memory_gb(self, settings: WorkerSettings) -> float:
        """Roughly its file (the weights)."""
        try:
            return Path(settings.model).stat().st_size / 2**30
        except OSError:
            return 0.0

    def engine_problem(self) -> str | None:
        return None if engine_installed() else INSTALL_HINT

    def missing(self, settings: WorkerSettings, what: str) -> RouterError | None:
        return None if Path(settings.model).is_file() else missing_model(settings.model, what)

    async def card(self, model_id: str, model: LocalModel[WorkerSettings]) -> ModelCard:
        knobs = model.settings.knobs
        extra = {"path": model.settings.model, "loaded": model.process.current is State.READY,
                 "n_ctx": knobs.n_ctx, "embedding": knobs.embedding}
        return ModelCard(id=model_id, owned_by="gguf", extra=extra)

    # -- lifecycle -------------------------------------------------------------------------

    async def prepare(self) -> None:
        if self.options.demo_model and self.options.models_dir:
            await self._write_demo_model(self.config.path(self.options.models_dir))

    async def _write_demo_model(self, models_dir: Path) -> None:
        from plugins.gguf.demo import ensure_demo_model

        try:
            written = await asyncio.to_thread(ensure_demo_model, models_dir)
        except ImportError as exc:  # the gguf/numpy writer is part of the extra
            log.warning("backend %s: cannot write the demo model (%s); %s", self.name, exc, INSTALL_HINT)
            return
        if written:
            log.info("backend %s: no GGUF in %s, wrote the demo model %s", self.name, models_dir, written)
