"""The provider interface: what a provider plugin implements.

A provider turns one configured backend into something the router can send OpenAI-shaped
requests to. It is shaped like httpx's ``AsyncBaseTransport``: a few async methods plus
``aclose()``. The router owns routing, retries, circuit state and the client-facing
response; a provider only talks to its backend and maps failures onto
``router.errors.UpstreamError`` subclasses (with ``raise ... from exc``).

A plugin registers its class through the ``register_providers`` hook::

    from router import Provider, hookimpl

    class MyProvider(Provider):
        ...

    @hookimpl
    def register_providers(register):
        register("my_provider", MyProvider)
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from router.config.schema import BackendConfig


@dataclasses.dataclass(frozen=True, slots=True)
class ModelCard:
    """One model a backend serves, as listed by ``/v1/models``."""

    id: str
    owned_by: str = "router"
    created: int = 0
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: False: routable under this name but not listed (another spelling of a listed model).
    listed: bool = True


@dataclasses.dataclass(slots=True)
class UpstreamRequest:
    """One request as sent to a backend.

    ``endpoint`` is the OpenAI path below ``/v1`` (``chat/completions``, ``completions``,
    ``embeddings``). ``body`` is the exact JSON to send (the client's bytes unless the
    router rewrote the model name); ``payload`` is the same body parsed, for providers
    that need fields (read it, don't change it).
    """

    endpoint: str
    body: bytes
    payload: dict[str, Any]
    model: str
    stream: bool
    request_id: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


class UpstreamResponse(abc.ABC):
    """A backend's response whose headers have arrived; the body is read lazily."""

    status: int
    content_type: str
    headers: Mapping[str, str]

    @abc.abstractmethod
    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; past ``limit`` bytes, raise ``router.errors.ResponseTooLarge``."""

    @abc.abstractmethod
    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, chunk by chunk, with nothing held back."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection at once (also mid-body: the upstream sees the close)."""


class StaticResponse(UpstreamResponse):
    """A response made in the router (an early answer, a test): a whole body, or a stream
    given as its chunks."""

    def __init__(self, body: bytes | list[bytes], *, status: int = 200,
                 content_type: str = "application/json", headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.content_type = content_type
        self.headers = dict(headers or {})
        self._chunks = [body] if isinstance(body, bytes) else list(body)

    async def read(self, limit: int | None = None) -> bytes:
        body = b"".join(self._chunks)
        if limit is not None and len(body) > limit:
            from router.errors import ResponseTooLarge

            raise ResponseTooLarge(f"the response body is over {limit} bytes")
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    def close(self) -> None:
        self._chunks = []


class Provider(abc.ABC):
    """Base class for provider plugins.

    ``options_class`` is a dataclass describing the provider's own backend keys (beyond
    the common ones in ``router.BackendConfig``); the config loader validates
    them with file, key and line in every error, and passes the instance as
    ``config.options``.
    """

    options_class: ClassVar[type | None] = None
    #: Whether a model may be cold (not loaded) here: then ``is_warm`` is asked, and a
    #: request goes to a backend where its model is warm when one is.
    loads_on_demand: ClassVar[bool] = False
    #: Whether it continues a trailing assistant message by default (``continuation``).
    continues_prefill: ClassVar[bool] = False
    #: The APIs it serves natively by default (``apis``).
    default_apis: ClassVar[tuple[str, ...]] = ("chat", "completions", "embeddings")
    #: Common backend keys this provider cannot work without (e.g. ``base_url``).
    required_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: BackendConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self) -> None:
        """Open pools, start workers marked for preload. Called once before serving."""

    async def aclose(self) -> None:
        """Release everything ``start`` and ``send`` opened."""

    @abc.abstractmethod
    async def list_models(self) -> list[ModelCard]:
        """The models this backend serves now (discovery). Raise UpstreamError if it can't say."""

    @abc.abstractmethod
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send one request; return once the response headers are in.

        Raise an ``UpstreamError`` (never a bare aiohttp/OS error) when the backend is
        unreachable, times out before the first byte, or fails to start.
        """

    async def load_model(self, model: str) -> None:
        """Load ``model`` now (``POST /admin/backends/{name}/models/{model}/load``), for
        providers that load on demand; others have nothing to load."""
        from router.errors import NotFound

        raise NotFound(f"backend {self.name!r} does not load models on demand")

    async def unload_model(self, model: str) -> bool:
        """Unload ``model`` if it is idle; False if a request holds it (or it is not loaded)."""
        from router.errors import NotFound

        raise NotFound(f"backend {self.name!r} does not load models on demand")

    def is_warm(self, model: str) -> bool:
        """Whether ``model`` can be served now without a load (asked only when
        ``loads_on_demand``)."""
        return True

    def declared_models(self) -> list[ModelCard]:
        """Models known from the config alone (no globs), routable even before discovery
        succeeds, so a request for them gets 503 while the backend is down, not 404."""
        return []

    async def health_check(self) -> None:
        """A cheap liveness probe, never a billed completion. Raise UpstreamError if down."""
        await self.list_models()

    def status(self) -> dict[str, Any]:
        """Provider-specific facts for ``/status`` (loaded models, queue depths...)."""
        return {}

    async def __aenter__(self) -> Provider:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
