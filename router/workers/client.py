"""The router's side of talking to a worker: one pooled session, lease-tracked responses.

A worker is reached like any remote server (``router.http_upstream``), with three
differences that only a supervisor can make: a dropped connection is explained by the
process (``crash_error``: "crashed (killed by SIGKILL)"), the model's lease is released
exactly once when the response is closed, and a worker's 429 (its own queue is full)
becomes ``Overloaded``, a router-side "busy", so it does not cool the whole backend down
(an upstream 429 would, with every other model of the backend).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp

from router.errors import (
    Overloaded,
    ResponseTooLarge,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamUnreachable,
    WorkerCrashed,
    parse_retry_after,
)
from router.http_upstream import AiohttpUpstreamResponse, pooled_session
from router.workers.process import ManagedProcess


class LeasedResponse(AiohttpUpstreamResponse):
    """A worker's response: calls ``release`` once when closed, and turns a failed read
    into the process's crash error when the process has died."""

    __slots__ = ("_process", "_release")

    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float, process: ManagedProcess,
                 release: Callable[[], None]) -> None:
        super().__init__(response, read_timeout)
        self._process = process
        self._release: Callable[[], None] | None = release

    async def read(self, limit: int | None = None) -> bytes:
        try:
            return await super().read(limit)
        except (WorkerCrashed, ResponseTooLarge):  # explained already / not the process's fault
            raise
        except UpstreamError as exc:
            raise (await self._process.crash_error() or exc) from exc

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in super().iter_chunks():
                yield chunk
        except UpstreamError as exc:
            raise (await self._process.crash_error() or exc) from exc

    def close(self) -> None:
        super().close()
        release, self._release = self._release, None
        if release is not None:
            release()


class WorkerClient:
    """Posts to workers through one pooled session (``session`` is also what
    ``ManagedProcess`` health checks use)."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float) -> None:
        self.session = pooled_session(connect_timeout_s, skip_auto_headers=("User-Agent",))
        self.read_timeout_s = read_timeout_s

    async def post(self, process: ManagedProcess, path: str, body: bytes, *,
                   headers: Mapping[str, str] | None = None,
                   release: Callable[[], None] = lambda: None) -> LeasedResponse:
        """POST ``body`` to ``path`` on the (ready) worker; return once the headers are in.

        ``release`` is called exactly once: when the response is closed, or here if no
        response is returned.
        """
        sent = {"Content-Type": "application/json", **(headers or {})}
        try:
            try:
                raw = await self.session.post(process.url + path, data=body, headers=sent)
            except aiohttp.ClientError as exc:
                crashed = await process.crash_error()
                raise (crashed or UpstreamUnreachable(f"the {process.label} is unreachable: {exc}")) from exc
            if raw.status == 429:  # the model's own queue is full
                try:
                    data = await raw.read()
                finally:
                    raw.close()
                retry_after = parse_retry_after(raw.headers.get("Retry-After")) or 1.0
                raise Overloaded(UpstreamHTTPError(429, data).message, retry_after=retry_after)
        except BaseException:
            release()
            raise
        return LeasedResponse(raw, self.read_timeout_s, process, release)

    async def aclose(self) -> None:
        await self.session.close()
