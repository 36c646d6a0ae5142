"""Relay a response to the client: whole bodies, or streams chunk by chunk.

Without transforms, streams pass through byte for byte as they arrive (nothing is parsed
or re-encoded, each chunk is written and flushed at once). With transforms
(``router.streams.transform``), the stream is split into events and each event goes
through them; bodies are transformed whole. A failure after the stream has started ends
it with an OpenAI error event, never with a silent cut. A client that goes away closes
the upstream request at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from router.errors import RouterError, StreamIncomplete, UpstreamError, UpstreamTimeout
from router.http_upstream import describe_failure
from router.routing.dispatch import Exchange
from router.streams.continuation import Delivered, Rejoin
from router.streams.sse import SSESplitter
from router.streams.transform import TransformChain

log = logging.getLogger("router")

# Upstream headers that describe the upstream connection, not the response.
_HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Content-Encoding",
        "Content-Type", "Server", "Date", "Upgrade", "Proxy-Authenticate", "Trailer", "TE",
        "X-Router-Backend", "X-Router-Attempts", "X-Request-ID",
    )
)

SSE_DONE = b"data: [DONE]\n\n"
_TAIL = 32
_FINISH_COMPACT = b'"finish_reason":"'
_FINISH_SPACED = b'"finish_reason": "'
_USAGE = b'"usage"'
_ERROR_EVENT = b'data: {"error"'
_DATA, _DATA_JSON, _DATA_DONE = b"data: ", b"data: {", b"data: [DONE]"
_UPSTREAM_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError, UpstreamError)


def response_headers(exchange: Exchange, request_id: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {
        name: value
        for name, value in exchange.response.headers.items()
        if name.lower() not in _HOP_HEADERS
    }
    if exchange.backend is not None:
        headers["X-Router-Backend"] = exchange.backend.name
        headers["X-Router-Attempts"] = ", ".join(exchange.attempts)
    if extra:  # a plugin's (ProxyRequest.response_headers)
        headers.update(extra)
    headers["X-Request-ID"] = request_id
    return headers


async def relay_body(exchange: Exchange, request_id: str, chain: TransformChain | None = None,
                     limit: int | None = None, extra_headers: dict[str, str] | None = None) -> web.Response:
    response = exchange.response
    try:
        body = await response.read(limit)
    except _UPSTREAM_FAILURES as exc:
        exchange.finish(ok=False)
        raise as_router_error(exc) from exc
    except BaseException:
        exchange.finish(ok=None)
        raise
    exchange.finish(ok=True)
    exchange.first_byte_at = time.monotonic()
    exchange.usage_raw = body
    if chain is not None:
        body = chain.body(body, response.content_type)
    return web.Response(
        body=body,
        status=response.status,
        content_type=response.content_type,
        headers=response_headers(exchange, request_id, extra_headers),
    )


async def relay_stream(
    http_request: web.Request, exchange: Exchange, request_id: str, chain: TransformChain | None = None,
    extra_headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    response = exchange.response
    out = web.StreamResponse(status=response.status, headers=response_headers(exchange, request_id, extra_headers))
    out.content_type = response.content_type or "text/event-stream"
    out.headers["Cache-Control"] = "no-cache"
    out.headers["X-Accel-Buffering"] = "no"
    ok: bool | None = None
    at_boundary = True
    # Whether the stream ended properly: "data: [DONE]" last (it may be split across
    # chunks, so the tail of the last chunks is kept), or at least a finish reason seen.
    tail = b""
    finished = False
    splitter = SSESplitter() if chain is not None else None
    transform_failed = False
    if exchange.native:
        return await _relay_native(http_request, out, exchange, request_id)
    # Armed when another backend could continue this stream if it breaks: then only whole
    # events are written (a partial one is never left on the wire), the bytes written are
    # kept (references, parsed only on a break), and an error event counts as a break.
    continuer = exchange.continuer
    received: list[bytes] | None = [] if continuer is not None else None
    carry = b""
    rejoin: Rejoin | None = None
    current = exchange
    try:
        await out.prepare(http_request)
        held = current.held
        chunks = held.chunks if held is not None else response.iter_chunks()
        # What was read before the commit (router.streams.commit) goes first, as it came.
        backlog = held.held if held is not None else []
        while True:
            failure: RouterError | None = None
            cause: BaseException | None = None
            ended = False
            try:
                chunk = backlog.pop(0) if backlog else await chunks.__anext__()
            except StopAsyncIteration:
                chunk, ended = b"", True
            except _UPSTREAM_FAILURES as exc:
                failure, cause, chunk = as_router_error(exc), exc, b""
            if chunk and received is not None:
                if rejoin is not None:
                    chunk = rejoin.feed(chunk)
                cut = chunk.find(_ERROR_EVENT)
                if cut >= 0:
                    chunk = chunk[:cut]
                    failure = UpstreamError("the backend sent an error event in the middle of the answer")
                received.append(chunk)
            if chunk:
                if current.first_byte_at is None:
                    current.first_byte_at = time.monotonic()
                if not finished and (_FINISH_COMPACT in chunk or _FINISH_SPACED in chunk):
                    finished = True
                if _USAGE in chunk:  # the usage chunk comes last: keep it (a reference) for observers
                    exchange.usage_raw = chunk
                tail = (tail + chunk)[-_TAIL:] if len(chunk) < _TAIL else chunk[-_TAIL:]
                if _DATA in chunk and chunk.count(_DATA) != chunk.count(_DATA_JSON) + chunk.count(_DATA_DONE):
                    chunk, dropped = _without_malformed(chunk)
                    if dropped:
                        current.malformed += dropped
                        log.warning("dropped %d malformed event(s) from %s (request %s): not JSON, not [DONE]",
                                    dropped, current.backend.name if current.backend else "?", request_id)
                if splitter is None:
                    if received is None:
                        await out.write(chunk)
                        at_boundary = chunk.endswith(b"\n\n")
                    else:
                        data = carry + chunk if carry else chunk
                        whole = data.rfind(b"\n\n") + 2
                        if whole >= 2:
                            await out.write(data[:whole])
                        carry = data[whole:] if whole >= 2 else data
                else:
                    assert chain is not None
                    try:
                        events = chain.events(splitter.feed(chunk))
                    except Exception as exc:  # noqa: BLE001 - a plugin's bug must not cut the stream silently
                        transform_failed = True  # the backend did nothing wrong
                        await out.write(_transform_failed(exc, request_id))
                        break
                    if events:  # only whole events are written: the client is always at a boundary
                        await out.write(b"".join(e.encode() for e in events))
                    if not splitter.pending and chain.passthrough:
                        splitter = None  # every transform is done with this stream: its bytes as they come
                if failure is None:
                    continue
            elif failure is None and not ended:
                continue  # a continuation's role-only chunk, dropped
            if failure is None and not finished and not tail.rstrip().endswith(b"[DONE]"):
                failure = StreamIncomplete(
                    "the backend ended the stream before it was complete (no finish_reason "
                    "and no data: [DONE]); the answer above is cut short")
            if failure is not None and continuer is not None and received is not None:
                delivered = Delivered(received)
                following = await continuer(delivered) if delivered.continuable else None
                if following is not None:
                    log.warning("stream from %s broke mid-way (request %s): %s; continued on %s",
                                current.backend.name if current.backend else "?", request_id, failure.message,
                                following.backend.name if following.backend else "?")
                    current.finish(ok=False)
                    current = following
                    rejoin = Rejoin(delivered)
                    carry = b""  # the broken event was never written
                    if splitter is not None:
                        splitter.take_rest()
                    held = following.held
                    chunks = held.chunks if held is not None else following.response.iter_chunks()
                    backlog = list(held.held) if held is not None else []  # rewritten by the loop
                    tail, finished = b"", False
                    continue
            if failure is not None:
                ok = False
                if isinstance(failure, StreamIncomplete):
                    log.warning("stream from %s ended incomplete (request %s)",
                                current.backend.name if current.backend else "an early answer", request_id)
                else:
                    log.warning("stream from %s failed mid-way (request %s): %s (%r)",
                                current.backend.name if current.backend else "an early answer", request_id,
                                failure.message, cause.__cause__ or cause if cause is not None else None)
                renders_end = chain is not None and chain.renders_end
                if splitter is not None or renders_end:
                    assert chain is not None
                    try:
                        closing = chain.events(splitter.flush()) if splitter is not None else []
                        if renders_end:  # another API's stream: it says so in its own events
                            closing += chain.failed(failure.message)
                        closing += chain.end()
                    except Exception:  # noqa: BLE001 - the stream is failing anyway
                        closing = []
                    if closing:
                        await out.write(b"".join(e.encode() for e in closing))
                if not renders_end:
                    await out.write(_error_event(failure, at_boundary))
            break
        if ok is None and not transform_failed:
            if chain is not None and splitter is not None:
                try:
                    closing = chain.events(splitter.flush()) + chain.end()
                except Exception as exc:  # noqa: BLE001
                    transform_failed = True
                    await out.write(_transform_failed(exc, request_id))
                else:
                    if closing:
                        await out.write(b"".join(e.encode() for e in closing))
                    at_boundary = True
            elif carry:
                await out.write(carry)
                at_boundary = carry.endswith(b"\n\n")
            if rejoin is not None:
                rest = rejoin.flush()
                if rest:
                    await out.write(rest)
            if not tail.rstrip().endswith(b"[DONE]") and not transform_failed \
                    and not (chain is not None and chain.renders_end):
                # a proper finish without [DONE] (some servers omit it): add it
                await out.write((b"" if at_boundary else b"\n\n") + SSE_DONE)
        if ok is None:
            ok = True
        await out.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("client went away mid-stream (request %s); upstream closed", request_id)
    finally:
        current.finish(ok)  # closes the upstream response: on disconnect, at once
    return out


def _error_event(error: RouterError, at_boundary: bool) -> bytes:
    prefix = b"" if at_boundary else b"\n\n"
    return prefix + b"data: " + error.body() + b"\n\n" + SSE_DONE


def _transform_failed(exc: BaseException, request_id: str) -> bytes:
    log.exception("a response transform failed (request %s)", request_id, exc_info=exc)
    error = RouterError(f"a response transform failed: {exc}; see the router's log")
    return b"data: " + error.body() + b"\n\n" + SSE_DONE


def as_router_error(exc: BaseException) -> RouterError:
    if isinstance(exc, RouterError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeout("the backend stopped sending (read timeout)")
    return UpstreamError(f"the backend connection failed mid-response: {describe_failure(exc)}")


def _without_malformed(chunk: bytes) -> tuple[bytes, int]:
    """The chunk without its whole events whose data is neither JSON nor ``[DONE]``
    (strict clients such as the openai SDK raise on them); how many were dropped. A piece
    of an event split across chunks is never touched."""
    parts = chunk.split(b"\n\n")
    kept: list[bytes] = []
    dropped = 0
    for i, part in enumerate(parts):
        whole = i < len(parts) - 1  # the last piece has no blank line after it (yet)
        if whole and part.startswith(_DATA) and part[6:7] not in (b"{", b"[") and part != b"data: [DONE]":
            dropped += 1
            continue
        kept.append(part)
    return b"\n\n".join(kept), dropped


async def _relay_native(http_request: web.Request, out: web.StreamResponse, exchange: Exchange,
                        request_id: str) -> web.StreamResponse:
    """A stream in the client's own API (another API than OpenAI's, from a backend that
    serves it natively): its bytes as they come, nothing added. A failure mid-way ends the
    response (the API's own error event is the backend's to send)."""
    ok: bool | None = None
    try:
        await out.prepare(http_request)
        async for chunk in exchange.response.iter_chunks():
            if exchange.first_byte_at is None:
                exchange.first_byte_at = time.monotonic()
            if _USAGE in chunk:
                exchange.usage_raw = chunk
            await out.write(chunk)
        ok = True
        await out.write_eof()
    except _UPSTREAM_FAILURES as exc:
        ok = False
        log.warning("native stream from %s failed mid-way (request %s): %s", exchange.backend.name
                    if exchange.backend else "?", request_id, as_router_error(exc).message)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        log.info("client went away mid-stream (request %s); upstream closed", request_id)
    finally:
        exchange.finish(ok)
    return out
