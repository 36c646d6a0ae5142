"""The aiohttp application factory: ``init_app(config)``.

Backends start in a cleanup context (so they are closed only if they started) before the
first request is served. The route table is the core's routes (OpenAI endpoints, health,
admin, metrics) then the plugins' (``register_routes``); a plugin cannot replace a core
route.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pluggy
from aiohttp import web

from router.config.loader import ConfigError
from router.config.schema import Config
from router.plugins import make_plugin_manager
from router.registry import Registry
from router.state import RouterState
from router.web import admin, health, metrics, openai, openapi, settings
from router.web.connections import ConnectionLimits
from router.web.cors import setup_cors
from router.web.middlewares import STATE, auth_middleware, error_middleware, identity_headers
from router.web.routes import ROUTES, Route, add_routes


def connection_limits(config: Config) -> ConnectionLimits:
    server = config.server
    return ConnectionLimits(header_timeout_s=server.header_timeout_s, write_timeout_s=server.write_timeout_s,
                            keepalive_timeout_s=server.keepalive_timeout_s)


def core_routes() -> list[Route]:
    return [*openai.routes(), *health.routes(), *metrics.routes(), *admin.routes(), *settings.routes(), *openapi.routes()]


def init_app(
    config: Config, pm: pluggy.PluginManager | None = None, registry: Registry | None = None
) -> web.Application:
    state = RouterState(config, pm or make_plugin_manager(), registry)
    middlewares = [error_middleware]
    if state.hooks.has_authenticate:
        middlewares.append(auth_middleware)
    elif config.auth is not None:
        raise ConfigError(config.path, "auth", None, "client keys need the plugins.keys plugin, which is not "
                          "loaded (ROUTER_LOAD_PLUGINS leaves it out?): without it every request would be let in")
    app = web.Application(middlewares=middlewares, client_max_size=int(config.server.max_body_mb * 1024 * 1024))
    app[STATE] = state
    if state.hooks.has_authenticate:
        app.on_response_prepare.append(identity_headers)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await state.store.open()
        await settings.restore(state)
        await state.start()
        await settings.restore_backends(state)
        yield
        await state.stop()
        await state.store.close()
        await asyncio.to_thread(state.telemetry.close)  # flushes spans over the network: not on the loop

    app.cleanup_ctx.append(lifecycle)
    routes = core_routes()
    taken = {(r.method, r.path) for r in routes}
    for route in state.hooks.routes(state.view):
        if (route.method, route.path) in taken:
            raise ValueError(f"a plugin tried to replace the route {route.method} {route.path}")
        taken.add((route.method, route.path))
        routes.append(route)
    # Fixed paths before patterns: a plugin's GET /v1/models/loaded is not "the model
    # named 'loaded'" of the core's GET /v1/models/{model}.
    add_routes(app, sorted(routes, key=lambda r: "{" in r.path))
    app[ROUTES] = routes
    if config.server.cors_origins:
        setup_cors(app, config.server.cors_origins)
    return app
