"""Connection guards: no client may hold a connection (or a backend slot) forever.

aiohttp bounds none of these by itself: a connection that sends nothing or trickles its
request head stays open, and a client that stops reading makes every write wait on flow
control. One sweep per second over all connections (not a timer per request) enforces:

- ``server.header_timeout_s``: total time from the first byte of a request head (or from
  the connection's start) to the end of its headers; past it the client gets a 408 and the
  connection is closed;
- ``server.write_timeout_s``: time the response's output may sit unsent without any
  progress; past it the connection is aborted, which cancels the handler, closes the
  upstream request and frees the backend's slot.

Between requests ``server.keepalive_timeout_s`` applies (aiohttp's own timer); the body is
bounded in the handler (``server.body_timeout_s``). Protocol errors aiohttp answers itself
(an oversized header or URL, a bad chunk) leave in OpenAI's envelope with 431/414/400.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from router import jsonlib

log = logging.getLogger("router")


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    write_timeout_s: float = 60.0
    keepalive_timeout_s: float = 75.0


def _envelope(status: int, message: str, code: str) -> bytes:
    return jsonlib.dumps({"error": {"message": message, "type": "invalid_request_error",
                                    "param": None, "code": code}})


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol, plus what the sweep needs to know."""

    __slots__ = ("head_started", "stalled_size", "stalled_since")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_started: float | None = None  # waiting for (the rest of) a request head
        self.stalled_size = 0
        self.stalled_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.head_started = self._loop.time()  # a connection that sends nothing is bounded too

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # a whole request head arrived
            self.head_started = None
        elif self.head_started is None and self._waiter is not None and not self._waiter.done():
            # Between requests, part of the next head arrived: its clock starts now.
            self.head_started = self._loop.time()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a protocol error, in OpenAI's envelope."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        code = "bad_request"
        text = str(exc or message or "malformed HTTP request")
        if isinstance(exc, LineTooLong):
            # aiohttp says only what it was reading: the request line starts with the
            # target ("/..."), a header line with its name.
            line = text.partition("when reading: ")[2].removeprefix("bytearray(").lstrip("b'\"")
            if line.startswith(("/", "http:", "https:", "*")):
                status, code = 414, "uri_too_long"
            else:
                status, code = 431, "request_header_fields_too_large"
        elif "too many headers" in text.lower():
            status, code = 431, "request_header_fields_too_large"
        response = web.Response(status=status, body=_envelope(status, f"malformed HTTP request: {text[:300]}", code),
                                content_type="application/json")
        response.force_close()
        return response


class GuardedServer(web.Server):
    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """``web.AppRunner`` with guarded connections and the sweep that enforces the limits."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", limits.keepalive_timeout_s)
        # After an answer to a request whose body was not read (408, 413), aiohttp keeps
        # reading ("lingering") before it closes, 10 s by default; a trickler gets 1 s.
        kwargs.setdefault("lingering_time", 1.0)
        super().__init__(app, **kwargs)
        self.limits = limits
        self._sweeper: asyncio.Task[None] | None = None

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        server = GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                               handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                               **plain._kwargs)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(server))
        return server

    async def cleanup(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await super().cleanup()

    async def _sweep(self, server: web.Server) -> None:
        limits = self.limits
        period = max(0.05, min(1.0, limits.header_timeout_s / 4, limits.write_timeout_s / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for conn in server.connections:
                if isinstance(conn, GuardedRequestHandler):
                    try:
                        check(conn, now, limits)
                    except Exception:  # noqa: BLE001 - the sweep must survive one bad connection
                        log.exception("connection guard failed")


def check(conn: GuardedRequestHandler, now: float, limits: ConnectionLimits) -> None:
    transport = conn.transport
    if transport is None or transport.is_closing():
        return
    started = conn.head_started
    if started is not None and now - started > limits.header_timeout_s:
        log.info("closing a connection that sent no complete request head within "
                 "server.header_timeout_s = %gs", limits.header_timeout_s)
        body = _envelope(408, f"the request head did not arrive within server.header_timeout_s = "
                              f"{limits.header_timeout_s:g}s", "request_timeout")
        transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        conn.head_started = None
        transport.close()
        return
    pending = transport.get_write_buffer_size()
    if pending == 0 or pending < conn.stalled_size:  # nothing queued, or the client read some
        conn.stalled_size, conn.stalled_since = pending, (now if pending else None)
        return
    if conn.stalled_since is None:
        conn.stalled_size, conn.stalled_since = pending, now
    elif now - conn.stalled_since > limits.write_timeout_s:
        log.info("dropping a client that read nothing for server.write_timeout_s = %gs "
                 "(%d bytes unsent)", limits.write_timeout_s, pending)
        transport.abort()
    else:
        conn.stalled_size = pending
