"""The admin API: live backends, status and queues, guarded by ``server.admin_key``.

``POST /admin/backends`` registers a backend (same fields as in YAML), ``DELETE
/admin/backends/{name}`` drains it (in-flight requests finish) and removes it,
``GET /admin/backends`` and ``GET /status`` show health, circuit, load and models,
``GET /admin/queue`` shows queue depths. Without a configured key the admin API is off.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from router.config.loader import ConfigError, parse_backend
from router.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from router.web.middlewares import STATE, json_response
from router.web.routes import Handler, Route

DRAIN_TIMEOUT_S = 60.0


def _authorized(request: web.Request) -> None:
    key = request.app[STATE].config.server.admin_key
    if not key:
        raise NotFound("the admin API is off: set server.admin_key in the config to enable it")
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), key.encode()):
        raise AuthenticationFailed("missing or wrong admin key: send 'Authorization: Bearer <server.admin_key>'")


def guarded(handler: Handler) -> Handler:
    async def view(request: web.Request) -> web.StreamResponse:
        _authorized(request)
        return await handler(request)

    return view


async def status(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].status())


async def list_backends(request: web.Request) -> web.Response:
    backends = request.app[STATE].backends.backends
    return json_response({"backends": [b.status() for b in backends.values()]})


async def add_backend(request: web.Request) -> web.Response:
    state = request.app[STATE]
    # The body is JSON, which is YAML: one validator for both, with the same messages.
    try:
        cfg = parse_backend(await request.text(), state.registry.providers)
    except ConfigError as exc:
        raise InvalidRequest(str(exc), param=exc.key or None) from exc
    cfg.base_dir = state.config.base_dir
    if state.backends.exists(cfg.name):
        raise Conflict(f"a backend named {cfg.name!r} exists already", param="name")
    backend = await state.backends.add(cfg)
    await state.store.put_backend(cfg.name, await request.text())  # survives a restart (auth.store)
    return json_response(backend.status(), status=201)


async def remove_backend(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["name"]
    if name not in state.backends.backends:
        raise NotFound(f"no backend named {name!r}")
    await state.backends.remove(name, DRAIN_TIMEOUT_S)
    await state.store.delete_backend(name)
    return json_response({"removed": name})


def _backend_of(request: web.Request) -> Any:
    name = request.match_info["name"]
    backend = request.app[STATE].backends.backends.get(name)
    if backend is None:
        raise NotFound(f"no backend named {name!r}")
    return backend


async def load_model(request: web.Request) -> web.Response:
    """Load a local model now (gguf, gptq: its worker is started), as a request would."""
    backend = _backend_of(request)
    model = request.match_info["model"]
    await backend.provider.load_model(model)
    return json_response({"backend": backend.name, "model": model, "status": "loaded"})


async def unload_model(request: web.Request) -> web.Response:
    """Unload a local model now if no request holds it (409 if one does)."""
    backend = _backend_of(request)
    model = request.match_info["model"]
    if not await backend.provider.unload_model(model):
        raise Conflict(f"model {model!r} of backend {backend.name!r} is in use or not loaded; "
                       "it is unloaded when idle past its TTL", param="model")
    return json_response({"backend": backend.name, "model": model, "status": "unloaded"})


async def queue(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response(
        {
            "backends": {
                b.name: {
                    "in_flight": b.in_flight,
                    "queued": b.limit.waiting if b.limit else 0,
                    "max_concurrent": b.config.max_concurrent,
                    "max_queue": b.config.max_queue if b.limit else None,
                }
                for b in state.backends.backends.values()
            }
        }
    )


#: For plugins' admin routes (``router.admin_only``): the same ``server.admin_key`` check.
admin_only = guarded


def routes() -> list[Route]:
    return [
        Route("GET", "/status", guarded(status), "health, circuit, load and models of every backend"),
        Route("GET", "/admin/backends", guarded(list_backends), "the live backends"),
        Route("POST", "/admin/backends", guarded(add_backend), "register a backend (same fields as YAML)"),
        Route("DELETE", "/admin/backends/{name}", guarded(remove_backend), "drain and remove a backend"),
        Route("POST", "/admin/backends/{name}/models/{model:.+}/load", guarded(load_model),
              "load a local model now (gguf, gptq)"),
        Route("POST", "/admin/backends/{name}/models/{model:.+}/unload", guarded(unload_model),
              "unload an idle local model now (gguf, gptq)"),
        Route("GET", "/admin/queue", guarded(queue), "queue depths"),
    ]
