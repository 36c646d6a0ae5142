"""Relay a backend's response to the client: whole bodies, or streams chunk by chunk.

Streams pass through byte for byte as they arrive (nothing is parsed or re-encoded, each
chunk is written and flushed at once). A failure after the stream has started ends it with
an OpenAI error event, never with a silent cut. A client that goes away closes the
upstream request at once.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from router.errors import RouterError, UpstreamError, UpstreamTimeout
from router.proxy import Exchange

log = logging.getLogger("router")

# Upstream headers that describe the upstream connection, not the response.
_HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Content-Encoding",
        "Content-Type", "Server", "Date", "Upgrade", "Proxy-Authenticate", "Trailer", "TE",
        "X-Router-Backend", "X-Request-ID",
    )
)

SSE_DONE = b"data: [DONE]\n\n"


def response_headers(exchange: Exchange, request_id: str) -> dict[str, str]:
    headers = {
        name: value
        for name, value in exchange.response.headers.items()
        if name.lower() not in _HOP_HEADERS
    }
    headers["X-Router-Backend"] = exchange.backend.name
    headers["X-Request-ID"] = request_id
    return headers


async def relay_body(exchange: Exchange, request_id: str) -> web.Response:
    response = exchange.response
    try:
        body = await response.read()
    except (aiohttp.ClientError, asyncio.TimeoutError, UpstreamError) as exc:
        exchange.finish(ok=False)
        raise _as_router_error(exc) from exc
    except BaseException:
        exchange.finish(ok=None)
        raise
    exchange.finish(ok=True)
    return web.Response(
        body=body,
        status=response.status,
        content_type=response.content_type,
        headers=response_headers(exchange, request_id),
    )


async def relay_stream(
    http_request: web.Request, exchange: Exchange, request_id: str
) -> web.StreamResponse:
    response = exchange.response
    out = web.StreamResponse(status=response.status, headers=response_headers(exchange, request_id))
    out.content_type = response.content_type or "text/event-stream"
    out.headers["Cache-Control"] = "no-cache"
    out.headers["X-Accel-Buffering"] = "no"
    ok: bool | None = None
    at_boundary = True
    try:
        await out.prepare(http_request)
        chunks = response.iter_chunks()
        while True:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except (aiohttp.ClientError, asyncio.TimeoutError, UpstreamError) as exc:
                ok = False
                error = _as_router_error(exc)
                log.warning(
                    "stream from %s failed mid-way (request %s): %s",
                    exchange.backend.name, request_id, error.message,
                )
                prefix = b"" if at_boundary else b"\n\n"
                await out.write(prefix + b"data: " + error.body() + b"\n\n" + SSE_DONE)
                break
            await out.write(chunk)
            at_boundary = chunk.endswith(b"\n\n")
        if ok is None:
            ok = True
        await out.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("client went away mid-stream (request %s); upstream closed", request_id)
    finally:
        exchange.finish(ok)  # closes the upstream response: on disconnect, at once
    return out


def _as_router_error(exc: BaseException) -> RouterError:
    if isinstance(exc, RouterError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout("the backend stopped sending (read timeout)")
    return UpstreamError(f"the backend connection failed mid-response: {exc or type(exc).__name__}")
