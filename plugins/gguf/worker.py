"""The worker: one model behind an OpenAI-compatible aiohttp server.

Started by the router for each local model (and by hand as a standalone server)::

    python -m router worker --provider gguf --model PATH --port P

Generation runs on one dedicated thread, one request at a time (a llama.cpp context
generates one sequence at a time); other requests wait in a bounded per-model queue and
get 429 with ``Retry-After`` past ``max_queue``. Streams are written token by token as
SSE. A client that disconnects cancels its handler (``handler_cancellation``), which sets
a flag that llama-cpp-python's stopping criteria check after every token.

Endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /health
(readiness, queue depth and counters), /restore_cache (prompt-cache warm-up).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from plugins.gguf.errors import BadRequest, EngineError, QueueFull
from plugins.gguf.settings import LISTENING_PREFIX, LOAD_FAILED_PREFIX, WorkerSettings

log = logging.getLogger("router.gguf.worker")

_DONE = object()
SSE_DONE = b"data: [DONE]\n\n"


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_response(error: EngineError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_dumps(error.envelope()), status=error.status,
                        content_type="application/json", headers=headers)


class Scheduler:
    """One generation at a time; at most ``max_queue`` waiting; counters for /health."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._slot = asyncio.Semaphore(1)
        self.waiting = 0
        self.running = 0
        self.requests = 0
        self.cancelled = 0
        self.tokens_streamed = 0
        self.last_stream_tokens = 0
        self.avg_job_s = 1.0

    async def acquire(self) -> None:
        if self._slot.locked() or self.waiting:
            if self.waiting >= self.max_queue:
                retry = max(1, math.ceil(self.avg_job_s * (self.waiting + 1)))
                raise QueueFull(
                    f"the model is busy: 1 request generating and {self.waiting} waiting "
                    f"(max_queue = {self.max_queue}); retry in about {retry}s",
                ) from None
            self.waiting += 1
            try:
                await self._slot.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._slot.acquire()
        self.running = 1
        self.requests += 1

    def retry_after(self) -> int:
        return max(1, math.ceil(self.avg_job_s * (self.waiting + 1)))

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``fn`` on the generation thread; the slot is freed when the thread is done
        (not when a cancelled handler gives up), so two calls never overlap."""
        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(self.executor, fn)

        def release(_: object) -> None:
            self.avg_job_s += 0.3 * ((time.monotonic() - started) - self.avg_job_s)
            self.running = 0
            self._slot.release()

        future.add_done_callback(release)
        return future

    def status(self) -> dict[str, Any]:
        return {"running": self.running, "waiting": self.waiting, "max_queue": self.max_queue,
                "requests": self.requests, "cancelled": self.cancelled,
                "tokens_streamed": self.tokens_streamed, "last_stream_tokens": self.last_stream_tokens}


class WorkerApp:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.engine: Any = None          # plugins.gguf.engine.Engine once loaded
        self.load_error: EngineError | None = None
        self.scheduler: Scheduler | None = None
        self.started = time.time()

    # -- set-up ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/restore_cache", self.restore_cache)
        return app

    def load(self) -> None:
        """Load the model (blocking). Raises EngineError with llama.cpp's reason."""
        from plugins.gguf.engine import Engine  # the only engine import
        from plugins.gguf.llama_log import install_log_capture

        install_log_capture(echo=self.settings.verbose)
        engine = Engine(self.settings)
        engine.load()
        self.engine = engine

    # -- endpoints -------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"model": self.settings.served_id, "path": self.settings.model}
        if self.engine is None:
            body["status"] = "error" if self.load_error else "loading"
            if self.load_error:
                body["error"] = self.load_error.message
            return web.json_response(body, status=503)
        assert self.scheduler is not None
        body.update(status="ok", queue=self.scheduler.status(), **self.engine.info())
        return web.json_response(body)

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": self.settings.served_id, "object": "model", "created": int(self.started),
                "owned_by": "gguf", "path": self.settings.model}
        return web.json_response({"object": "list", "data": [card]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "complete")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "embed")

    async def restore_cache(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "warm")

    # -- the generation path ---------------------------------------------------------------

    async def _payload(self, request: web.Request) -> dict[str, Any]:
        try:
            payload = json.loads(await request.read())
        except ValueError as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise BadRequest("the request body must be a JSON object")
        model = payload.get("model")
        if model not in (None, "", self.settings.served_id):
            error = EngineError(f"The model {model!r} does not exist; this worker serves "
                                f"{self.settings.served_id!r}", param="model", code="model_not_found")
            error.status, error.type = 404, "invalid_request_error"
            raise error
        return payload

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        if self.engine is None or self.scheduler is None:
            return error_response(self.load_error or EngineError("the model is still loading", code="loading"),
                                  headers={"Retry-After": "1"})
        scheduler = self.scheduler
        try:
            payload = await self._payload(request)
            if kind == "chat" and payload.get("restore_cache"):
                kind = "warm"  # the router's way to reach /restore_cache: a chat body plus a flag
            await scheduler.acquire()
        except QueueFull as exc:
            return error_response(exc, headers={"Retry-After": str(scheduler.retry_after())})
        except EngineError as exc:
            return error_response(exc)
        stop = threading.Event()
        engine = self.engine
        if kind == "warm":
            return await self._whole(scheduler, lambda: engine.warm(payload), stop)
        if kind == "embed":
            return await self._whole(scheduler, lambda: engine.embed(payload), stop)
        call = engine.chat if kind == "chat" else engine.complete
        if not payload.get("stream"):
            return await self._whole(scheduler, lambda: call(payload, stop), stop)
        return await self._stream(request, scheduler, lambda: call(payload, stop), stop)

    async def _whole(self, scheduler: Scheduler, fn: Callable[[], Any], stop: threading.Event) -> web.Response:
        future = scheduler.submit(fn)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()  # the client left: end generation after the current token
            scheduler.cancelled += 1
            raise
        except EngineError as exc:
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - llama errors become a 500 the client can read
            log.exception("generation failed")
            return error_response(EngineError(f"llama.cpp failed: {exc}", code="generation_failed"))
        return web.Response(body=_dumps(result), content_type="application/json")

    async def _stream(self, request: web.Request, scheduler: Scheduler,
                      start: Callable[[], Iterator[dict[str, Any]]], stop: threading.Event) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        put = queue.put_nowait

        def produce() -> None:
            try:
                chunks = start()  # validation errors surface here, before any byte is sent
            except BaseException as exc:  # noqa: BLE001 - handed to the loop
                loop.call_soon_threadsafe(put, exc)
                return
            loop.call_soon_threadsafe(put, None)  # headers can go out
            count = 0
            try:
                for chunk in chunks:
                    count += 1
                    loop.call_soon_threadsafe(put, chunk)
                    if stop.is_set():
                        break
            except BaseException as exc:  # noqa: BLE001
                loop.call_soon_threadsafe(put, exc)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # a closed generator leaves the Llama instance usable
                scheduler.tokens_streamed += count
                scheduler.last_stream_tokens = count
                loop.call_soon_threadsafe(put, _DONE)

        scheduler.submit(produce)
        try:
            first = await queue.get()
            if isinstance(first, EngineError):
                return error_response(first)
            if isinstance(first, BaseException):
                return error_response(EngineError(f"llama.cpp failed: {first}", code="generation_failed"))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                   "Cache-Control": "no-cache"})
            await response.prepare(request)
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    error = item if isinstance(item, EngineError) else EngineError(
                        f"llama.cpp failed mid-stream: {item}", code="generation_failed")
                    await response.write(b"data: " + _dumps(error.envelope()) + b"\n\n")
                    break
                await response.write(b"data: " + _dumps(item) + b"\n\n")
            await response.write(SSE_DONE)
            await response.write_eof()
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            stop.set()
            scheduler.cancelled += 1
            raise
        finally:
            stop.set()  # a no-op after a normal end; stops the thread on any early exit


async def serve(settings: WorkerSettings) -> None:
    worker = WorkerApp(settings)
    runner = web.AppRunner(worker.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()  # /health answers "loading" (503) while the model loads
    # With --port 0 the OS picks a free port; the router reads it from this line.
    sockets = getattr(site._server, "sockets", None)
    if sockets:
        settings.port = sockets[0].getsockname()[1]
    print(f"{LISTENING_PREFIX}http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, worker.load)
    except EngineError as exc:
        worker.load_error = exc
        print(f"{LOAD_FAILED_PREFIX}{exc.message}", file=sys.stderr, flush=True)
        await runner.cleanup()
        raise SystemExit(3) from None
    worker.scheduler = Scheduler(settings.max_queue)
    print(f"gguf worker: serving {settings.served_id!r} on http://{settings.host}:{settings.port}",
          file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(settings: WorkerSettings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except SystemExit as exc:
        return int(exc.code or 0)
    except OSError as exc:  # e.g. the port is taken
        print(f"gguf worker: cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 2
    return 0
