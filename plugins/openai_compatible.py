"""Provider for any OpenAI-compatible server: vLLM, SGLang, Ollama, llama.cpp, OpenAI...

Written as a third-party plugin would be: it imports nothing but ``router``'s public API
(``hookimpl``, ``Provider``, the shared aiohttp response and the errors). One pooled
``aiohttp.ClientSession`` per backend; connect, first-byte and idle-read timeouts so no
wait is unbounded; the backend's API key goes in the Authorization header.

Config keys (beyond the common backend keys)::

    models: ["llama-*", "qwen2.5-7b"]   # names or globs; default: everything discovered
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

import aiohttp
from yarl import URL

from router import (
    AiohttpUpstreamResponse,
    BackendConfig,
    ModelCard,
    Provider,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamRequest,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
    __version__,
    hookimpl,
    jsonlib,
    pooled_session,
)

_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass
class OpenAICompatibleOptions:
    models: list[str] = dataclasses.field(default_factory=list)
    #: Fields merged into every request body (the request's own fields win), e.g.
    #: ``{backend: llamacpp, device: cuda}`` for a remote XandRouting server.
    extra_body: dict[str, Any] = dataclasses.field(default_factory=dict)


class OpenAICompatibleProvider(Provider):
    options_class = OpenAICompatibleOptions
    required_keys = ("base_url",)

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.root = normalize_base_url(config.base_url or "")
        options: OpenAICompatibleOptions = config.options or OpenAICompatibleOptions()
        self.patterns = [p for p in options.models if _GLOB_CHARS & set(p)]
        self.literals = [p for p in options.models if not _GLOB_CHARS & set(p)]
        self.extra_body = options.extra_body
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
        self.session = pooled_session(self.config.connect_timeout_s)

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
        body = request.body
        if self.extra_body:  # only then is the body rebuilt
            body = jsonlib.dumps({**self.extra_body, **request.payload, "model": request.model})
        try:
            response = await session.post(url, data=body, headers=headers)
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
def register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    register("openai_compatible", OpenAICompatibleProvider)
