"""HTTP views: the OpenAI-compatible endpoints, health, and the error middleware.

A request enters ``proxy_view`` (chat/completions, completions, embeddings), is parsed once
into a ``ProxyRequest``, sent by ``proxy.open_upstream`` and relayed by ``relay``.
Every error leaves through ``error_middleware`` in OpenAI's envelope.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from router import jsonlib, metrics
from router.errors import (
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    RouterError,
    UpstreamTimeout,
    shown,
)
from router.deadlines import deadline
from router.proxy import ProxyRequest, open_upstream
from router.relay import relay_body, relay_stream
from router.state import RouterState

log = logging.getLogger("router")

STATE: web.AppKey[RouterState] = web.AppKey("state", RouterState)
JSON = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Request ids: a random per-process prefix and a counter. Unique across replicas and
# restarts without a system call per request (os.urandom was 2% of the router's CPU).
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def request_id_of(request: web.Request) -> str:
    rid = request.get("request_id")
    if rid is None:
        rid = request.headers.get("X-Request-ID") or new_request_id()
        request["request_id"] = rid
    return rid


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=jsonlib.dumps(data), status=status, content_type=JSON, headers=headers)


def error_response(error: RouterError, request_id: str) -> web.Response:
    headers = error.headers()
    headers["X-Request-ID"] = request_id
    return web.Response(body=error.body(), status=error.status, content_type=JSON, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RouterError as exc:
        return error_response(exc, request_id_of(request))
    except web.HTTPRequestEntityTooLarge as exc:
        limit = request.app[STATE].config.server.max_body_mb
        error: RouterError = PayloadTooLarge(
            f"the request body is too large ({(exc.text or '').strip()}); the limit is "
            f"server.max_body_mb = {limit:g} MB"
        )
        return error_response(error, request_id_of(request))
    except web.HTTPNotFound:
        error = NotFound(f"no such endpoint: {request.method} {request.path}")
        return error_response(error, request_id_of(request))
    except web.HTTPMethodNotAllowed as exc:
        error = InvalidRequest(
            f"method {request.method} is not allowed on {request.path} "
            f"(use {', '.join(sorted(exc.allowed_methods))})"
        )
        error.status = 405
        return error_response(error, request_id_of(request))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        error = RouterError("internal router error; see the router's log")
        return error_response(error, request_id_of(request))


def proxy_view(endpoint: str) -> Handler:
    async def view(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        request_id = request_id_of(request)
        body = await request.read()
        state.requests += 1
        try:
            proxy_request = ProxyRequest.parse(endpoint, body, request_id, request.headers)
        except RouterError as exc:
            state.errors += 1
            state.responses_by_status[exc.status] += 1
            raise
        status = 500
        exchange = None
        try:
            try:
                async with deadline(state.config.routing.timeout_s):
                    exchange = await open_upstream(state, proxy_request)
                    if exchange.response.content_type != "text/event-stream":
                        response = await relay_body(exchange, request_id)
                        status = response.status
                        return response
            except TimeoutError as exc:
                raise UpstreamTimeout(
                    f"no response within routing.timeout_s = {state.config.routing.timeout_s:g}s"
                ) from exc
            stream_response = await relay_stream(request, exchange, request_id)
            status = stream_response.status
            return stream_response
        except RouterError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client closed the request (nginx's convention)
            raise
        finally:
            state.responses_by_status[status] += 1
            if status >= 400:
                state.errors += 1
            if exchange is not None:
                exchange.finish(None)  # no-op unless something above failed before finishing
            if state.has_observe_hooks:
                state.pm.hook.observe_response(
                    request=proxy_request,
                    backend=exchange.backend if exchange else None,
                    status=status,
                    elapsed_s=time.monotonic() - proxy_request.started,
                )

    view.__name__ = f"proxy_{endpoint.replace('/', '_')}"
    return view


def _model_entry(model_id: str, owned_by: str, created: int, extra: dict[str, object]) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **extra}


def model_list(state: RouterState) -> list[dict[str, object]]:
    out = []
    for model_id, card, backends in state.served_models():
        extra: dict[str, object] = dict(card.extra) if card else {}
        extra["backends"] = [b.name for b in backends]
        if card is None:
            extra["root"] = state.resolve(model_id)
        out.append(_model_entry(model_id, card.owned_by if card else "router", card.created if card else 0, extra))
    return out


async def list_models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": model_list(request.app[STATE])})


async def get_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model_id = request.match_info["model"]
    for entry in model_list(state):
        if entry["id"] == model_id:
            return json_response(entry)
    raise ModelNotFound(f"The model {shown(model_id)} does not exist", param="model")


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    now = time.monotonic()
    backends = {b.name: b.unavailable_reason(now) for b in state.backends.values()}
    ready = state.ready()
    return json_response({"status": "ok" if ready else "degraded", "ready": ready, "backends": backends})


async def health_live(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def health_ready(request: web.Request) -> web.Response:
    ready = request.app[STATE].ready()
    return json_response({"ready": ready}, status=200 if ready else 503)


async def metrics_view(request: web.Request) -> web.Response:
    if not metrics.available():
        raise NotFound("metrics need prometheus-client: pip install '.[metrics]'")
    return web.Response(body=metrics.render(request.app[STATE]),
                        headers={"Content-Type": metrics.CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", proxy_view("chat/completions"))
    app.router.add_post("/v1/completions", proxy_view("completions"))
    app.router.add_post("/v1/embeddings", proxy_view("embeddings"))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", health_live)
    app.router.add_get("/health/ready", health_ready)
    app.router.add_get("/metrics", metrics_view)
