"""A configured backend at run time: its provider plus the router's own view of it.

The router counts in-flight requests itself (least_connections never scrapes backend
metrics), keeps a latency EWMA of time to first byte, a circuit breaker, the models last
discovered, and a bounded wait queue (``router.routing.limits.Admission``) when
``max_concurrent`` is set. Plugins see it only through its read-only ``view``.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Mapping
from typing import Any, TypeVar

from router.config.schema import BackendConfig, CircuitBreakerConfig
from router.errors import (
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
    parse_retry_after,
)
from router.provider import ModelCard, Provider, UpstreamRequest, UpstreamResponse
from router.routing.circuit import CircuitBreaker, CircuitState
from router.routing.deadlines import deadline
from router.routing.limits import Admission

P = TypeVar("P", bound=Provider)

EWMA_ALPHA = 0.3
ERROR_BODY_LIMIT = 1 << 20  # an upstream's error body is read up to 1 MiB
DEFAULT_429_COOLDOWN_S = 1.0


class BackendView:
    """What hooks and strategies see of a backend: its live state, read-only."""

    __slots__ = ("_backend",)

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    @property
    def name(self) -> str:
        return self._backend.name

    @property
    def weight(self) -> float:
        return self._backend.weight

    @property
    def provider(self) -> str:
        """The provider's registered name (``openai_compatible``, ``gguf``...)."""
        return self._backend.config.provider

    @property
    def config(self) -> BackendConfig:
        """The backend's config, as loaded (treat it as read-only)."""
        return self._backend.config

    @property
    def healthy(self) -> bool | None:
        """The last health check's verdict (None before the first one)."""
        return self._backend.healthy

    @property
    def in_flight(self) -> int:
        return self._backend.in_flight

    @property
    def queued(self) -> int:
        limit = self._backend.limit
        return limit.waiting if limit is not None else 0

    @property
    def ewma_ttfb_s(self) -> float | None:
        """EWMA of the time to the response headers, None until measured."""
        return self._backend.ewma_ttfb_s

    @property
    def circuit(self) -> str:
        return self._backend.circuit.state.value

    @property
    def models(self) -> Mapping[str, ModelCard]:
        return types.MappingProxyType(self._backend.models)

    def status(self) -> dict[str, Any]:
        return self._backend.status()

    def provider_of(self, cls: type[P]) -> P | None:
        """The backend's provider if it is a ``cls`` (a plugin reaching its own
        providers, e.g. for its management routes), else None."""
        provider = self._backend.provider
        return provider if isinstance(provider, cls) else None

    def __repr__(self) -> str:
        return f"<BackendView {self.name!r}>"



class Backend:
    def __init__(
        self, config: BackendConfig, provider: Provider, breaker: CircuitBreakerConfig
    ) -> None:
        self.config = config
        self.name = config.name
        self.weight = config.weight
        self.provider = provider
        self.circuit = CircuitBreaker(breaker)
        self.healthy: bool | None = None  # None until the first check
        self.last_error: str | None = None
        self.in_flight = 0
        #: In flight plus waiting in the queue: what draining waits for.
        self.pending = 0
        #: Served model -> monotonic time until which an upstream Retry-After keeps it
        #: off this backend (a 429 for one model says nothing about the others).
        self.model_cooldowns: dict[str, float] = {}
        self.served = 0
        self.failed = 0
        self.ewma_ttfb_s: float | None = None
        self.models: dict[str, ModelCard] = {}
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.limit = (
            Admission(config.max_concurrent, config.max_queue, label=f"backend {config.name!r}")
            if config.max_concurrent
            else None
        )
        #: Whether a broken stream may be continued here (an assistant prefill).
        self.continuation = config.continuation if config.continuation is not None else provider.continues_prefill
        #: The APIs served natively (``apis``): others are translated to chat completions.
        self.apis = frozenset(config.apis if config.apis is not None else provider.default_apis)
        #: What hooks and strategies see of this backend (read-only, built once).
        self.view = BackendView(self)

    def available(self, now: float) -> bool:
        return self.healthy is not False and not self.draining and self.circuit.allows(now)

    def cooling(self, model: str, now: float) -> float:
        """Seconds this backend still keeps ``model`` off after a Retry-After (0: none)."""
        until = self.model_cooldowns.get(model)
        if until is None:
            return 0.0
        if until <= now:
            del self.model_cooldowns[model]
            return 0.0
        return until - now

    def cool_down(self, model: str, seconds: float) -> None:
        until = time.monotonic() + seconds
        self.model_cooldowns[model] = max(until, self.model_cooldowns.get(model, 0.0))

    def unavailable_reason(self, now: float, model: str | None = None) -> str:
        if self.draining:
            return "draining"
        if self.healthy is False:
            return f"unhealthy ({self.last_error or 'health check failed'})"
        if now < self.circuit.cooled_until:
            return f"cooling down for {self.circuit.cooled_until - now:.1f}s"
        if model is not None and (wait := self.cooling(model, now)):
            return f"cooling down {model!r} for {wait:.1f}s (Retry-After)"
        if self.circuit.state is not CircuitState.CLOSED:
            return f"circuit {self.circuit.state.value}"
        return "available"

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send through the provider, keeping counters and circuit state, and bounding
        the wait for the response headers by ``first_byte_timeout_s``.

        On success the caller owns the slot and must call ``finish`` once the body is done.
        """
        self.pending += 1
        self.idle.clear()
        if self.limit is not None:
            try:
                await self.limit.acquire()
            except BaseException:  # full, or cancelled while queued
                self._unpend()
                raise
        self.in_flight += 1
        self.circuit.acquire()
        started = time.monotonic()
        try:
            try:
                async with deadline(self.config.first_byte_timeout_s):
                    response = await self.provider.send(request)
            except TimeoutError as exc:
                raise UpstreamTimeout(
                    f"backend {self.name!r} sent no response within "
                    f"first_byte_timeout_s = {self.config.first_byte_timeout_s:g}s"
                ) from exc
        except UpstreamError as exc:
            if exc.model_scoped:  # the backend is fine; one of its models is not
                self._release(ok=None)
            else:
                self._release(ok=False)
                self.last_error = exc.message
            raise
        except BaseException:
            self.circuit.release_trial()
            self._release(ok=None)
            raise
        if response.status >= 400:
            try:
                body = await response.read(ERROR_BODY_LIMIT)
            except Exception:  # noqa: BLE001 - the status already tells what happened
                body = b""
            finally:
                response.close()
            error = UpstreamHTTPError(
                response.status,
                body,
                content_type=response.content_type,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
            if response.status == 429:
                self.cool_down(request.model, error.retry_after or DEFAULT_429_COOLDOWN_S)
                self._release(ok=None)
            elif error.retryable:
                if error.retry_after:
                    self.cool_down(request.model, error.retry_after)
                self.last_error = error.message
                self._release(ok=False)
            else:  # the client's fault: the backend itself is fine
                self._release(ok=True)
            raise error
        ttfb = time.monotonic() - started
        previous = self.ewma_ttfb_s
        self.ewma_ttfb_s = ttfb if previous is None else previous + EWMA_ALPHA * (ttfb - previous)
        return response

    def finish(self, ok: bool | None) -> None:
        """The response body is done: ok True/False feeds the circuit; None is neutral."""
        self._release(ok)

    def _release(self, ok: bool | None) -> None:
        self.in_flight -= 1
        if self.limit is not None:
            self.limit.release()
        if ok is True:
            self.served += 1
            self.circuit.record_success()
        elif ok is False:
            self.failed += 1
            self.circuit.record_failure()
        else:
            self.circuit.release_trial()
        self._unpend()

    def _unpend(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.idle.set()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "name": self.name,
            "provider": self.config.provider,
            "base_url": self.config.base_url,
            "healthy": self.healthy,
            "state": self.unavailable_reason(now),
            "circuit": self.circuit.state.value,
            "consecutive_failures": self.circuit.failures,
            "in_flight": self.in_flight,
            "queued": self.limit.waiting if self.limit else 0,
            "max_concurrent": self.config.max_concurrent,
            "max_queue": self.config.max_queue if self.limit else None,
            "weight": self.weight,
            "served": self.served,
            "failed": self.failed,
            "latency_ewma_ms": None if self.ewma_ttfb_s is None else round(self.ewma_ttfb_s * 1000, 3),
            "last_error": self.last_error,
            "models": sorted(self.models),
            "draining": self.draining,
            "cooling": {m: round(w, 1) for m in list(self.model_cooldowns) if (w := self.cooling(m, now))},
            **({"provider_status": s} if (s := self.provider.status()) else {}),
        }
