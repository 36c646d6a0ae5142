"""The worker's HTTP server: one engine behind the OpenAI endpoints, written once for
every engine.

The routes come from ``router.web.routes.openai_routes`` (the router's own table), plus
``/health`` (503 ``loading`` until the model is loaded, then 200 with the queue and the
engine's facts) and the engine's extensions. Requests are admitted and run by a
scheduler (``router.workers.scheduling``) on the engine's thread; streams go out as SSE
one chunk per event as the engine makes them. A client that disconnects cancels its
handler (``handler_cancellation``), which sets the job's stop flag. Every error leaves in
OpenAI's envelope (``RouterError.envelope``).

``run_worker`` is a standalone worker's ``main``: it serves through
``router.serving.serve_app``, prints the supervisor's protocol lines and exits with
status 3 when the model cannot be loaded.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import typing
from typing import Any

from aiohttp import web

from router.errors import (
    EngineError,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotFound,
    NoBackendAvailable,
    RouterError,
)
from router.jsonlib import dumps, loads
from router.serving import serve_app
from router.web.routes import Handler, Route, add_routes, openai_routes
from router.workers import protocol
from router.workers.bridge import STREAMING, Job, Operation
from router.workers.engine import Engine, Extension
from router.workers.scheduling import (
    BatchScheduler,
    ContinuousScheduler,
    EngineThread,
    SingleSlotScheduler,
)

log = logging.getLogger("router.workers.server")

SSE_DONE = b"data: [DONE]\n\n"
#: Exit status of a worker whose model could not be loaded.
LOAD_FAILED_STATUS = 3


def error_response(error: RouterError) -> web.Response:
    return web.Response(body=error.body(), status=error.status, headers=error.headers(),
                        content_type="application/json")


class WorkerServer:
    """The aiohttp app around one engine, its scheduler and its counters."""

    def __init__(self, engine: Engine, *, max_queue: int) -> None:
        self.engine = engine
        self.thread = EngineThread(f"engine-{engine.model_id}")
        label = f"model {engine.model_id!r}"
        self.scheduler: SingleSlotScheduler[Job] | BatchScheduler[Job] | ContinuousScheduler[Job]
        if engine.continuous:
            self.scheduler = ContinuousScheduler(engine.run_continuous, engine.max_batch, max_queue,
                                                 label=label, thread=self.thread)
        elif engine.max_batch > 1:
            self.scheduler = BatchScheduler(engine.run_batch, engine.max_batch, max_queue,
                                            label=label, thread=self.thread)
        else:
            self.scheduler = SingleSlotScheduler(Job.run, max_queue, label=label, thread=self.thread)
        self.loaded = False
        self.load_error: RouterError | None = None
        self.started = time.time()
        self.counters = {"requests": 0, "cancelled": 0, "tokens_streamed": 0, "last_stream_tokens": 0}
        self._extensions = list(engine.extensions())

    # -- set-up --------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        routes = openai_routes(self._endpoint, self.models)
        routes.append(Route("GET", "/health", self.health, "readiness, queue and engine facts"))
        for ext in self._extensions:
            if ext.path is not None:
                routes.append(Route("POST", ext.path, self._extension(ext), ext.summary or ext.name))
        return routes

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        add_routes(app, self.routes())
        return app

    async def load(self) -> None:
        """Load the model on the engine's thread. Raises ``ModelLoadFailed``."""
        try:
            await self.thread.call(self.engine.load)
        except RouterError as exc:
            self.load_error = exc if isinstance(exc, ModelLoadFailed) else ModelLoadFailed(exc.message, code=exc.code)
            raise self.load_error from exc
        except Exception as exc:
            log.exception("loading failed")
            self.load_error = ModelLoadFailed(f"{self.engine.label} could not load the model: {exc}")
            raise self.load_error from exc
        self.loaded = True

    def close(self) -> None:
        """Let a running generation see its stop flag and end (not at a load: exit now)."""
        self.thread.close(timeout=5.0 if self.loaded else 0.0)

    # -- endpoints -----------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"model": self.engine.model_id, **self.engine.card()}
        if not self.loaded:
            body["status"] = "error" if self.load_error else "loading"
            if self.load_error is not None:
                body["error"] = self.load_error.message
            return web.json_response(body, status=503, dumps=_dumps_str)
        body.update(status="ok", queue={**self.scheduler.status(), **self.counters}, **self.engine.info())
        return web.json_response(body, dumps=_dumps_str)

    async def models(self, request: web.Request) -> web.Response:
        card = {"id": self.engine.model_id, "object": "model", "created": int(self.started),
                "owned_by": self.engine.owned_by, **self.engine.card()}
        return web.json_response({"object": "list", "data": [card]}, dumps=_dumps_str)

    def _endpoint(self, endpoint: str) -> Handler:
        default = self.engine.operation(endpoint)
        flagged = [e for e in self._extensions if e.body_flag and e.endpoint == endpoint]

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                payload = await self._payload(request)
            except RouterError as exc:
                return error_response(exc)
            for ext in flagged:
                if payload.get(ext.body_flag or ""):
                    return await self._run(request, Job(ext.name, payload, ext.run))
            return await self._run(request, Job(endpoint, payload, default))

        return handle

    def _extension(self, ext: Extension) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                payload = await self._payload(request)
            except RouterError as exc:
                return error_response(exc)
            return await self._run(request, Job(ext.name, payload, ext.run))

        return handle

    async def _payload(self, request: web.Request) -> dict[str, Any]:
        if not self.loaded:
            raise self.load_error or NoBackendAvailable("the model is still loading", code="loading",
                                                        retry_after=1)
        try:
            payload = loads(await request.read())
        except ValueError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise InvalidRequest("the request body must be a JSON object")
        model = payload.get("model")
        if model not in (None, "", self.engine.model_id):
            raise ModelNotFound(f"The model {model!r} does not exist; this worker serves "
                                f"{self.engine.model_id!r}", param="model")
        return payload

    # -- running a job -------------------------------------------------------------------------

    async def _run(self, request: web.Request, job: Job) -> web.StreamResponse:
        try:
            done = await self.scheduler.submit(job)
        except RouterError as exc:  # Overloaded: the queue is full
            return error_response(exc)
        self.counters["requests"] += 1
        done.add_done_callback(lambda _: self._count(job))
        if isinstance(self.scheduler, ContinuousScheduler):
            done.add_done_callback(lambda f: _fail_unfinished(job, f))
        try:
            first = await job.outcome()
            if first is not STREAMING:
                return web.Response(body=dumps(first), content_type="application/json")
            return await self._stream(request, job)
        except (asyncio.CancelledError, ConnectionResetError):
            job.stop.set()  # the client left: the engine ends after the current token
            self.counters["cancelled"] += 1
            raise
        except RouterError as exc:
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - an engine's own error, as a 500 the client can read
            log.exception("%s failed", job.kind)
            return error_response(self._engine_error(exc))
        finally:
            job.stop.set()  # a no-op after a normal end; stops the engine on any early exit

    async def _stream(self, request: web.Request, job: Job) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            async for chunk in job.chunks():
                await response.write(b"data: " + dumps(chunk) + b"\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:  # noqa: BLE001 - after the headers: an error event ends the stream
            error = exc if isinstance(exc, RouterError) else self._engine_error(exc, mid_stream=True)
            await response.write(b"data: " + error.body() + b"\n\n")
        await response.write(SSE_DONE)
        await response.write_eof()
        return response

    def _engine_error(self, exc: BaseException, mid_stream: bool = False) -> EngineError:
        where = " mid-stream" if mid_stream else ""
        return EngineError(f"{self.engine.label} failed{where}: {exc}", code="generation_failed")

    def _count(self, job: Job) -> None:
        if job.emitted:
            self.counters["tokens_streamed"] += job.emitted
            self.counters["last_stream_tokens"] = job.emitted


def _fail_unfinished(job: Job, done: asyncio.Future[None]) -> None:
    """A continuous engine loop that failed could not end its jobs: end them with its error
    (after a job's normal end this adds nothing its handler reads)."""
    if not done.cancelled() and done.exception() is not None:
        job.fail(typing.cast(BaseException, done.exception()))


def _dumps_str(data: Any) -> str:
    return dumps(data).decode()


async def serve(engine: Engine, *, name: str, host: str, port: int, max_queue: int,
                stop: asyncio.Event | None = None) -> int:
    """Serve ``engine`` until SIGINT/SIGTERM (or ``stop``); the exit status to return.

    Prints ``protocol.listening_line`` once bound (``/health`` answers 503 while the
    model loads), then loads it; on failure prints ``protocol.load_failed_line`` and
    returns ``LOAD_FAILED_STATUS``.
    """
    server = WorkerServer(engine, max_queue=max_queue)
    stop = stop or asyncio.Event()
    status = 0
    tasks: set[asyncio.Task[None]] = set()

    async def load(bound: int) -> None:
        nonlocal status
        try:
            await server.load()
        except ModelLoadFailed as exc:
            print(protocol.load_failed_line(name, exc), file=sys.stderr, flush=True)
            status = LOAD_FAILED_STATUS
            stop.set()
            return
        print(protocol.serving_line(name, engine.model_id, host, bound), file=sys.stderr, flush=True)

    def listening(bound: int) -> None:
        print(protocol.listening_line(name, host, bound), file=sys.stderr, flush=True)
        task = asyncio.get_running_loop().create_task(load(bound))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        await serve_app(server.app(), host, port, on_listening=listening, stop=stop)
    finally:
        for task in tasks:
            task.cancel()
        server.close()
    return status


def run_worker(engine: Engine, *, name: str, host: str, port: int, max_queue: int) -> int:
    """A standalone worker's main: serve ``engine`` on ``host:port`` (0: any free port,
    reported on stderr) and return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve(engine, name=name, host=host, port=port, max_queue=max_queue))
    except OSError as exc:  # e.g. the port is taken
        print(f"{name} worker: cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
