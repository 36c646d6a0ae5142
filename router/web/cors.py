"""CORS for browsers (``server.cors_origins``), through aiohttp-cors: preflights answered
(they need no client key), the allowed origin echoed on every answer, streams included.

Credentials are allowed only for origins named one by one: with ``"*"`` the router never
sends ``Access-Control-Allow-Credentials``. Installed only when origins are configured,
so a router without CORS pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

#: Headers a browser script may read: the request id, the backend, the rate-limit headers.
EXPOSED = ("X-Request-ID", "X-Router-Backend", "Retry-After",
           *(f"x-ratelimit-{what}-{kind}" for kind in ("requests", "tokens") for what in ("limit", "remaining", "reset")))
MAX_AGE_S = 600


def setup_cors(app: web.Application, origins: Sequence[str]) -> None:
    import aiohttp_cors

    anyone = "*" in origins
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=not anyone, expose_headers=EXPOSED, allow_headers="*", max_age=MAX_AGE_S,
        allow_methods="*",
    )
    cors = aiohttp_cors.setup(app, defaults={"*": options} if anyone else {o: options for o in origins})
    for route in list(app.router.routes()):
        cors.add(route)
