"""The floor: a minimal aiohttp pass-through proxy, ``python -m bench.passthrough``.

``--upstream URL --port P``. Every request is forwarded to the same path on the
upstream through one pooled ``ClientSession``; bodies are relayed as bytes and streams
chunk by chunk as they arrive. No routing, parsing, metrics or checks: what any Python
(aiohttp) proxy costs at the least. Same loop (uvloop) and server settings as the router.
"""

from __future__ import annotations

import argparse
import sys

import aiohttp
from aiohttp import web

from bench.upstream import run_loop

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


def make_app(upstream: str) -> web.Application:
    root = upstream.rstrip("/")

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        session = request.app[SESSION]
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with session.request(request.method, root + request.path_qs, data=body,
                                   headers=headers) as upstream_response:
            if upstream_response.content_type == "text/event-stream":
                out = web.StreamResponse(status=upstream_response.status,
                                         headers={"Content-Type": "text/event-stream"})
                await out.prepare(request)
                async for chunk in upstream_response.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
            data = await upstream_response.read()
            return web.Response(body=data, status=upstream_response.status,
                                content_type=upstream_response.content_type)

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(upstream: str, host: str, port: int) -> None:
    import asyncio

    runner = web.AppRunner(make_app(upstream), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    print(f"Passthrough listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        run_loop(serve(args.upstream, args.host, args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
