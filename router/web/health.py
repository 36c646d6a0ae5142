"""``/health`` (always 200, with each backend's state), ``/health/live`` and
``/health/ready`` (503 until some backend can take requests)."""

from __future__ import annotations

import time

from aiohttp import web

from router.web.middlewares import STATE, json_response
from router.web.routes import Route


async def health(request: web.Request) -> web.Response:
    backends = request.app[STATE].backends
    now = time.monotonic()
    states = {b.name: b.unavailable_reason(now) for b in backends.backends.values()}
    ready = backends.ready()
    return json_response({"status": "ok" if ready else "degraded", "ready": ready, "backends": states})


async def health_live(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def health_ready(request: web.Request) -> web.Response:
    ready = request.app[STATE].backends.ready()
    return json_response({"ready": ready}, status=200 if ready else 503)


def routes() -> list[Route]:
    return [
        Route("GET", "/health", health, "each backend's state"),
        Route("GET", "/health/live", health_live, "liveness"),
        Route("GET", "/health/ready", health_ready, "readiness: 503 until a backend can take requests"),
    ]
