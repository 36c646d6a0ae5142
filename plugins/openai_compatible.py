"""Provider for any OpenAI-compatible server: vLLM, SGLang, Ollama, llama.cpp, OpenAI...

Written as a third-party plugin would be: it uses only ``router``'s public interface
(``hookimpl``, ``Provider``, ``UpstreamResponse`` and the errors). One pooled
``aiohttp.ClientSession`` per backend; connect, first-byte and idle-read timeouts so no
wait is unbounded; the backend's API key goes in the Authorization header.

Config keys (beyond the common backend keys)::

    models: ["llama-*", "qwen2.5-7b"]   # names or globs; default: everything discovered
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
from yarl import URL

from router import __version__, hookimpl, jsonlib
from router.config import BackendConfig
from router.deadlines import deadline
from router.errors import UpstreamError, UpstreamHTTPError, UpstreamTimeout, UpstreamUnreachable
from router.provider import ModelCard, Provider, UpstreamRequest, UpstreamResponse

_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass
class OpenAICompatibleOptions:
    models: list[str] = dataclasses.field(default_factory=list)


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
    __slots__ = ("_response", "_read_timeout", "status", "content_type", "headers")

    def __init__(self, response: aiohttp.ClientResponse, read_timeout: float) -> None:
        self._response = response
        self._read_timeout = read_timeout
        self.status = response.status
        self.content_type = response.content_type
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        try:
            if self._response.content.is_eof():  # all of it is here already: no timer needed
                return await self._response.read()
            async with deadline(self._read_timeout):
                return await self._response.read()
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no data for read_timeout_s = {self._read_timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"the backend connection failed mid-response: {exc}") from exc

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
                    return
                yield chunk
                watchdog.touch()
        except aiohttp.ClientError as exc:
            if watchdog.expired:
                raise UpstreamTimeout(f"the stream sent nothing for read_timeout_s = {timeout:g}s") from exc
            raise UpstreamError(f"the backend connection failed mid-stream: {exc}") from exc
        finally:
            watchdog.stop()

    def close(self) -> None:
        self._response.close()


class OpenAICompatibleProvider(Provider):
    options_class = OpenAICompatibleOptions
    required_keys = ("base_url",)

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.root = normalize_base_url(config.base_url or "")
        options: OpenAICompatibleOptions = config.options or OpenAICompatibleOptions()
        self.patterns = [p for p in options.models if _GLOB_CHARS & set(p)]
        self.literals = [p for p in options.models if not _GLOB_CHARS & set(p)]
        # Everything per-request that can be built once is built here: the headers (no
        # session defaults, which aiohttp would merge into a new multidict per request; a
        # fixed User-Agent, since aiohttp's default is rebuilt per request) and the URLs
        # (parsed once instead of per request).
        self.headers: dict[str, str] = {"User-Agent": f"router/{__version__}", **config.headers}
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"
        self.post_headers = {**self.headers, "Content-Type": "application/json"}
        self.stream_headers = {**self.post_headers, "Accept": "text/event-stream"}
        self.urls = {e: URL(f"{self.root}/v1/{e}") for e in ("chat/completions", "completions", "embeddings")}
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        cfg = self.config
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, ttl_dns_cache=300),
            # The first-byte and idle-read limits are applied per phase in send/iter_chunks.
            timeout=aiohttp.ClientTimeout(total=None, connect=cfg.connect_timeout_s),
            auto_decompress=True,
        )

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            raise UpstreamUnreachable(f"backend {self.name!r} is not started")
        return self.session

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        session = self._session()
        headers = {**(self.stream_headers if request.stream else self.post_headers), **request.headers}
        url = self.urls.get(request.endpoint) or URL(f"{self.root}/v1/{request.endpoint}")
        # The router bounds the wait for the response headers (first_byte_timeout_s).
        try:
            response = await session.post(url, data=request.body, headers=headers)
        except aiohttp.ServerTimeoutError as exc:
            raise UpstreamTimeout(
                f"backend {self.name!r}: no connection within connect_timeout_s = "
                f"{self.config.connect_timeout_s:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"backend {self.name!r} is unreachable: {exc}") from exc
        return AiohttpUpstreamResponse(response, self.config.read_timeout_s)

    async def _get(self, path: str) -> aiohttp.ClientResponse:
        try:
            async with asyncio.timeout(self.config.connect_timeout_s + 5):
                response = await self._session().get(f"{self.root}{path}", headers=self.headers)
                await response.read()
                return response
        except TimeoutError as exc:
            raise UpstreamTimeout(f"backend {self.name!r}: GET {path} timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"backend {self.name!r} is unreachable: {exc}") from exc

    async def list_models(self) -> list[ModelCard]:
        response = await self._get("/v1/models")
        body = await response.read()
        if response.status != 200:
            raise UpstreamHTTPError(response.status, body)
        try:
            data = jsonlib.loads(body)["data"]
            cards = [_card(item) for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"backend {self.name!r}: /v1/models is not an OpenAI model list") from exc
        if self.patterns or self.literals:
            cards = [c for c in cards if self.wants(c.id)]
        seen = {c.id for c in cards}
        return cards + [c for c in self.declared_models() if c.id not in seen]

    def wants(self, model_id: str) -> bool:
        return model_id in self.literals or any(fnmatch.fnmatchcase(model_id, p) for p in self.patterns)

    def declared_models(self) -> list[ModelCard]:
        return [ModelCard(id=name) for name in self.literals]

    async def health_check(self) -> None:
        path = self.config.health_check_path
        response = await self._get(path)
        if response.status >= 400:
            raise UpstreamHTTPError(response.status, await response.read())


def normalize_base_url(url: str) -> str:
    """The server root: a trailing slash and a trailing ``/v1`` are both accepted."""
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    return url


def _card(item: Any) -> ModelCard:
    extra = {k: v for k, v in item.items() if k not in ("id", "object", "owned_by", "created")}
    return ModelCard(
        id=str(item["id"]),
        owned_by=str(item.get("owned_by") or "upstream"),
        created=int(item.get("created") or 0),
        extra=extra,
    )


@hookimpl
def register_providers(register):  # type: ignore[no-untyped-def]
    register("openai_compatible", OpenAICompatibleProvider)
