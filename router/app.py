"""The aiohttp application factory: ``init_app(config)``.

Backends start in a cleanup context (so they are closed only if they started) before the
first request is served; the admin API and the OpenAI endpoints are mounted here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pluggy
from aiohttp import web

from router import admin, views
from router.config import Config
from router.plugins import make_plugin_manager
from router.state import RouterState
from router.views import STATE


def init_app(config: Config, pm: pluggy.PluginManager | None = None) -> web.Application:
    app = web.Application(
        middlewares=[views.error_middleware],
        client_max_size=int(config.server.max_body_mb * 1024 * 1024),
    )
    app[STATE] = RouterState(config, pm or make_plugin_manager())

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        await state.start()
        yield
        await state.stop()

    app.cleanup_ctx.append(lifecycle)
    views.add_routes(app)
    admin.add_routes(app)
    return app
