"""Run an aiohttp app until SIGINT/SIGTERM: written once for the router, local workers
and the test servers' processes."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable

from aiohttp import web

from router.web.connections import ConnectionLimits, GuardedAppRunner


def bound_port(site: web.TCPSite, asked: int) -> int:
    """The port a site listens on (the OS's choice when ``asked`` was 0)."""
    server = site._server  # aiohttp has no public way to read port 0's choice
    sockets = getattr(server, "sockets", None)
    return int(sockets[0].getsockname()[1]) if sockets else asked


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    on_listening: Callable[[int], object] | None = None,
    access_log: logging.Logger | None = None,
    backlog: int = 1024,
    stop: asyncio.Event | None = None,
    limits: ConnectionLimits | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then clean up (the app's cleanup contexts
    run). ``on_listening(port)`` is called once the socket is bound and the signal
    handlers are installed, so a stop sent right after it is graceful. Setting ``stop``
    (an event of the caller's) ends serving too. With ``limits``, connections are guarded
    (header, write and keep-alive timeouts; ``router.web.connections``). With
    ``ssl_context``, it serves HTTPS."""
    runner = (
        web.AppRunner(app, handler_cancellation=True, access_log=access_log)
        if limits is None
        else GuardedAppRunner(app, limits, handler_cancellation=True, access_log=access_log)
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=backlog, ssl_context=ssl_context)
        await site.start()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if on_listening is not None:
            on_listening(bound_port(site, port))
        await stop.wait()
    finally:
        await runner.cleanup()
