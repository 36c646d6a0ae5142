"""The shared aiohttp side of talking to an HTTP backend: pooled sessions, lazily read
responses with an idle watchdog, and aiohttp failures mapped onto the router's errors.

Remote providers (``openai_compatible``) and the local-worker client both reach their
servers through this module, so a worker on loopback behaves exactly like a remote server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp

from router.errors import ResponseTooLarge, UpstreamError, UpstreamTimeout
from router.provider import UpstreamResponse


def pooled_session(connect_timeout_s: float, *, skip_auto_headers: tuple[str, ...] = ()) -> aiohttp.ClientSession:
    """One pooled session per backend. The first-byte and idle-read limits are applied per
    phase (around ``send`` and while reading), so the session only bounds connecting.
    Callers send a fixed User-Agent of their own (aiohttp would rebuild its default per
    request); ``skip_auto_headers`` costs a little per request, so it is empty by default."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout_s),
        auto_decompress=True,
        skip_auto_headers=skip_auto_headers or None,
    )


def too_large(limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"the backend's response is larger than server.max_response_mb = {limit / (1024 * 1024):g} MB"
    )


class IdleWatchdog:
    """Calls ``on_expire`` once the stream has waited ``timeout`` seconds for data.

    One timer per ``timeout`` period instead of one per chunk (a stream of tokens has
    thousands of chunks): reading only flips ``waiting`` and, after a chunk, stamps the
    time. Time the consumer spends with a chunk (writing to a slow client) never counts.
    """

    __slots__ = ("_loop", "_timeout", "_on_expire", "_last", "_handle", "waiting", "expired")

    def __init__(self, timeout: float, on_expire: Callable[[], object]) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._on_expire = on_expire
        self._last = self._loop.time()
        self.waiting = False
        self.expired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self._last + timeout, self._check)

    def touch(self) -> None:
        self._last = self._loop.time()

    def _check(self) -> None:
        now = self._loop.time()
        if not self.waiting:
            self._last = now  # the consumer had the chunk: the wait starts over
        elif now - self._last >= self._timeout:
            self.expired = True
            self._handle = None
            self._on_expire()
            return
        self._handle = self._loop.call_at(self._last + self._timeout, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class AiohttpUpstreamResponse(UpstreamResponse):
    """An ``aiohttp.ClientResponse`` whose headers are in, read lazily under
    ``read_timeout`` (the longest silence allowed between two pieces of the body)."""

    __slots__ = ("_response", "_read_timeout", "status", "content_type", "headers")

    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float) -> None:
        self._response = response
        self._read_timeout = read_timeout
        self.status = response.status
        self.content_type = response.content_type
        self.headers: Mapping[str, str] = response.headers

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body, with ``read_timeout`` as the longest silence between two pieces
        of it (as for streams, not a total), and at most ``limit`` bytes."""
        response = self._response
        if response.content.is_eof():  # all of it is here already: no watchdog needed
            try:
                body = await response.read()
            except aiohttp.ClientError as exc:
                raise UpstreamError(f"the backend connection failed mid-response: {exc}") from exc
            if limit is not None and len(body) > limit:
                raise too_large(limit)
            return body
        length = response.content_length
        if limit is not None and length is not None and length > limit:
            response.close()
            raise too_large(limit)
        parts: list[bytes] = []
        size = 0
        async for chunk in self.iter_chunks():
            size += len(chunk)
            if limit is not None and size > limit:
                response.close()
                raise too_large(limit)
            parts.append(chunk)
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        response = self._response
        content = response.content
        timeout = self._read_timeout
        watchdog = IdleWatchdog(timeout, response.close)
        try:
            while True:
                watchdog.waiting = True
                chunk = await content.readany()
                watchdog.waiting = False
                if not chunk:
                    break
                yield chunk
                watchdog.touch()
        except aiohttp.ClientError as exc:
            if watchdog.expired:
                raise UpstreamTimeout(f"the stream sent nothing for read_timeout_s = {timeout:g}s") from exc
            raise UpstreamError(f"the backend connection failed mid-stream: {describe_failure(exc)}") from exc
        finally:
            watchdog.stop()
        if watchdog.expired:  # closed by the watchdog between two reads: no error was raised
            raise UpstreamTimeout(f"the backend sent nothing for read_timeout_s = {timeout:g}s")

    def close(self) -> None:
        self._response.close()


def describe_failure(exc: BaseException) -> str:
    """A backend connection's failure in words for the client (aiohttp's own messages
    carry misleading numbers, such as "TransferEncodingError: 400"; the log has them)."""
    if isinstance(exc, UpstreamError):
        return exc.message
    if isinstance(exc, asyncio.TimeoutError):
        return "it stopped sending"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection closed in the middle of the answer"
    return "the connection failed"
