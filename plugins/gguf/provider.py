"""The ``gguf`` provider: local GGUF models, each served by its own worker process.

The router never imports llama.cpp: every model runs in a worker (``plugins.gguf.worker``)
started on the first request for it (or at start-up with ``preload``), reached over
loopback HTTP through one pooled aiohttp session, exactly like a remote backend. A crash
or leak in native code stays in the worker; stopping a worker returns all its memory.

Config keys (beyond the common backend keys)::

    models_dir: ./models        # every *.gguf below it is a model (id = file stem)
    models:                     # and/or explicit entries (a path, or a mapping)
      - name: qwen2.5-7b
        path: ./models/qwen2.5-7b-instruct-q4_k_m.gguf
        n_ctx: 8192
        preload: true
    demo_model: true            # write tiny-demo.gguf into models_dir if it has no GGUF
    max_tokens_limit: 4096      # the cap on max_tokens per request
    idle_ttl_s: 600             # stop a worker unused this long (default: never)

Every key of a model entry can also be given at the backend level as the default for
all models (``n_ctx``, ``n_threads``...). See docs/gguf.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp

from plugins.gguf.process import WorkerProcess, WorkerState
from plugins.gguf.settings import DEFAULT_MAX_TOKENS_LIMIT, DEFAULT_N_CTX, WorkerSettings
from plugins.openai_compatible import AiohttpUpstreamResponse
from router import jsonlib
from router.config import BackendConfig
from router.errors import (
    Overloaded,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamUnreachable,
    parse_retry_after,
)
from router.provider import ModelCard, Provider, UpstreamRequest, UpstreamResponse

log = logging.getLogger("router.gguf")

INSTALL_HINT = "llama-cpp-python is not installed; install the extra: pip install '.[gguf]'"


@dataclasses.dataclass
class GGUFModel:
    """One model entry; unset keys take the backend-level default."""

    path: str
    name: str | None = None
    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    n_threads: int | None = None
    n_threads_batch: int | None = None
    n_batch: int | None = None
    embedding: bool = False
    preload: bool = False
    chat_format: str | None = None
    prompt_cache: str | None = None
    prompt_cache_dir: str | None = None
    prompt_cache_mb: int | None = None
    max_queue: int | None = None
    max_tokens_limit: int | None = None


@dataclasses.dataclass
class GGUFOptions:
    models_dir: str | None = None
    models: list[str | GGUFModel] = dataclasses.field(default_factory=list)
    demo_model: bool = False
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT
    idle_ttl_s: float | None = None
    startup_timeout_s: float = 120.0
    # Defaults for every model:
    n_ctx: int = DEFAULT_N_CTX
    n_gpu_layers: int = 0
    n_threads: int | None = None
    n_threads_batch: int | None = None
    n_batch: int = 512
    prompt_cache: str | None = None
    prompt_cache_mb: int = 1024
    verbose: bool = False


def engine_installed() -> bool:
    """Whether workers can import llama-cpp-python (checked without importing it here)."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ValueError, AttributeError):  # e.g. blocked with sys.modules["llama_cpp"] = None
        return False


class TrackedResponse(AiohttpUpstreamResponse):
    """A worker's response: counts the model's in-flight requests and turns a dropped
    connection into a clear "the worker crashed" error."""

    __slots__ = ("_worker", "_closed")

    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float, worker: WorkerProcess) -> None:
        super().__init__(response, read_timeout)
        self._worker = worker
        self._closed = False

    async def read(self) -> bytes:
        try:
            return await super().read()
        except UpstreamError as exc:
            raise (await self._worker.crash_error() or exc) from exc

    async def iter_chunks(self):  # type: ignore[no-untyped-def,override]
        try:
            async for chunk in super().iter_chunks():
                yield chunk
        except UpstreamError as exc:
            raise (await self._worker.crash_error() or exc) from exc

    def close(self) -> None:
        super().close()
        if not self._closed:
            self._closed = True
            self._worker.in_flight -= 1
            self._worker.last_used = time.monotonic()


class GGUFProvider(Provider):
    options_class = GGUFOptions

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.options: GGUFOptions = config.options or GGUFOptions()
        self.session: aiohttp.ClientSession | None = None
        self.workers: dict[str, WorkerProcess] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- models ----------------------------------------------------------------------------

    def _settings(self, entry: GGUFModel) -> WorkerSettings:
        o = self.options

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        path = self.config.path(entry.path)
        return WorkerSettings(
            model=str(path.resolve()),
            model_id=entry.name or path.stem,
            n_ctx=pick(entry.n_ctx, o.n_ctx),
            n_gpu_layers=pick(entry.n_gpu_layers, o.n_gpu_layers),
            n_threads=pick(entry.n_threads, o.n_threads),
            n_threads_batch=pick(entry.n_threads_batch, o.n_threads_batch),
            n_batch=pick(entry.n_batch, o.n_batch),
            embedding=entry.embedding,
            chat_format=entry.chat_format,
            prompt_cache=pick(entry.prompt_cache, o.prompt_cache),
            prompt_cache_dir=str(self.config.path(entry.prompt_cache_dir)) if entry.prompt_cache_dir else None,
            prompt_cache_mb=pick(entry.prompt_cache_mb, o.prompt_cache_mb),
            max_tokens_limit=pick(entry.max_tokens_limit, o.max_tokens_limit),
            max_queue=pick(entry.max_queue, self.config.max_queue),
            verbose=o.verbose,
        )

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
        """Sync ``self.workers`` with the config and models_dir (files added or removed)."""
        assert self.session is not None
        seen: set[str] = set()
        for entry in self._entries():
            settings = self._settings(entry)
            seen.add(settings.model_id)
            worker = self.workers.get(settings.model_id)
            if worker is None:
                worker = WorkerProcess(settings, self.session, startup_timeout_s=self.options.startup_timeout_s)
                worker.preload = entry.preload
                self.workers[settings.model_id] = worker
        for gone in set(self.workers) - seen:
            worker = self.workers[gone]
            if worker.state is WorkerState.STOPPED and worker.in_flight == 0:
                del self.workers[gone]

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=self.config.connect_timeout_s),
            skip_auto_headers=("User-Agent",),
        )
        if self.options.demo_model and self.options.models_dir:
            from plugins.gguf.demo import ensure_demo_model

            try:
                written = await asyncio.to_thread(ensure_demo_model, self.config.path(self.options.models_dir))
            except ImportError as exc:  # the gguf/numpy writer is part of the extra
                log.warning("backend %s: cannot write the demo model (%s); %s", self.name, exc, INSTALL_HINT)
            else:
                if written:
                    log.info("backend %s: no GGUF in %s, wrote the demo model %s",
                             self.name, self.options.models_dir, written)
        self.refresh()
        preload = [w for w in self.workers.values() if w.preload]
        if preload and engine_installed():
            # In the background: the router serves other backends while models load, and
            # requests for a loading model wait on the same ensure_ready.
            for worker in preload:
                self._spawn(self._preload(worker))
        if self.options.idle_ttl_s:
            self._reaper = asyncio.create_task(self._reap_idle(self.options.idle_ttl_s))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _preload(self, worker: WorkerProcess) -> None:
        try:
            await worker.ensure_ready()
        except UpstreamError as exc:
            log.error("backend %s: preloading %r failed: %s", self.name, worker.model_id, exc.message)

    async def _reap_idle(self, ttl: float) -> None:
        while True:
            await asyncio.sleep(min(ttl / 2, 5.0))
            now = time.monotonic()
            for worker in list(self.workers.values()):
                if worker.alive() and worker.in_flight == 0 and now - worker.last_used > ttl:
                    log.info("backend %s: stopping %r after %.0fs idle", self.name, worker.model_id, ttl)
                    async with worker.lock:
                        await worker.stop()

    async def aclose(self) -> None:
        for task in [self._reaper, *self._background]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers.values()), return_exceptions=True)
        if self.session is not None:
            await self.session.close()
            self.session = None

    # -- discovery and health --------------------------------------------------------------

    async def list_models(self) -> list[ModelCard]:
        if self.session is None:
            raise UpstreamUnreachable(f"backend {self.name!r} is not started")
        if not engine_installed():
            raise UpstreamError(f"backend {self.name!r}: {INSTALL_HINT}")
        self.refresh()
        if not self.workers:
            where = self.options.models_dir or "(no models_dir)"
            raise UpstreamError(f"backend {self.name!r}: no .gguf model found in {where} and none listed in models:")
        return [self._card(w) for w in self.workers.values()]

    def _card(self, worker: WorkerProcess) -> ModelCard:
        extra = {"path": worker.settings.model, "loaded": worker.state is WorkerState.READY and worker.alive(),
                 "n_ctx": worker.settings.n_ctx, "embedding": worker.settings.embedding}
        return ModelCard(id=worker.model_id, owned_by="gguf", extra=extra)

    def declared_models(self) -> list[ModelCard]:
        out = []
        for entry in self.options.models:
            path = Path(entry if isinstance(entry, str) else entry.path)
            name = path.stem if isinstance(entry, str) else (entry.name or path.stem)
            out.append(ModelCard(id=name, owned_by="gguf"))
        return out

    async def health_check(self) -> None:
        await self.list_models()

    def status(self) -> dict[str, Any]:
        return {"models": {mid: w.status() for mid, w in self.workers.items()}}

    # -- requests --------------------------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.session is None:
            raise UpstreamUnreachable(f"backend {self.name!r} is not started")
        worker = self.workers.get(request.model)
        if worker is None:
            self.refresh()
            worker = self.workers.get(request.model)
        if worker is None:
            body = jsonlib.dumps({"error": {"message": f"model {request.model!r} is not in backend "
                                            f"{self.name!r} (no such .gguf file any more)",
                                            "type": "invalid_request_error", "param": "model",
                                            "code": "model_not_found"}})
            raise UpstreamHTTPError(404, body)
        if not engine_installed():
            raise UpstreamError(f"backend {self.name!r}: {INSTALL_HINT}")
        if not Path(worker.settings.model).is_file():
            from plugins.gguf.process import ModelLoadFailed

            raise ModelLoadFailed(
                f"model file not found: {worker.settings.model} (model {worker.model_id!r} of backend "
                f"{self.name!r}; put the .gguf file there or fix the path)", code="model_not_found_on_disk")
        worker.in_flight += 1  # counted from here: requests waiting for the load are queued too
        worker.last_used = time.monotonic()
        handed_over = False
        try:
            url = await worker.ensure_ready()
            response = await self._post(worker, url, request)
            handed_over = True
        finally:
            if not handed_over:
                worker.in_flight -= 1
        if response.status == 429:
            # The model's own queue is full: a router-side "busy", not a failing backend
            # (an upstream 429 would cool the whole backend down, every model with it).
            try:
                body = await response.read()
            finally:
                response.close()
            retry_after = parse_retry_after(response.headers.get("Retry-After")) or 1.0
            raise Overloaded(UpstreamHTTPError(429, body).message, retry_after=retry_after)
        return response

    async def _post(self, worker: WorkerProcess, url: str, request: UpstreamRequest) -> TrackedResponse:
        assert self.session is not None
        headers = {"Content-Type": "application/json", **request.headers}
        try:  # the router bounds the wait for the response headers (first_byte_timeout_s)
            raw = await self.session.post(f"{url}/v1/{request.endpoint}", data=request.body, headers=headers)
        except aiohttp.ClientError as exc:
            crashed = await worker.crash_error()
            raise (crashed or UpstreamUnreachable(f"the gguf worker for {worker.model_id!r} is unreachable: {exc}")) from exc
        return TrackedResponse(raw, self.config.read_timeout_s, worker)

    # -- the standalone worker -------------------------------------------------------------

    @classmethod
    def add_worker_arguments(cls, parser: argparse.ArgumentParser) -> None:
        WorkerSettings.add_arguments(parser)

    @classmethod
    def run_worker(cls, args: argparse.Namespace) -> int:
        if not engine_installed():
            print(f"error: {INSTALL_HINT}")
            return 2
        from plugins.gguf.worker import run

        return run(WorkerSettings.from_args(args))
