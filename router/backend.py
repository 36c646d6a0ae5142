"""A configured backend at run time: its provider plus the router's own view of it.

The router counts in-flight requests itself (least_connections never scrapes backend
metrics), keeps a latency EWMA of time to first byte, a circuit breaker, the models last
discovered, and a bounded wait queue when ``max_concurrent`` is set.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from router.circuit import CircuitBreaker, CircuitState
from router.deadlines import deadline
from router.config import BackendConfig, CircuitBreakerConfig
from router.errors import (
    Overloaded,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
    parse_retry_after,
)
from router.provider import ModelCard, Provider, UpstreamRequest, UpstreamResponse

EWMA_ALPHA = 0.3
DEFAULT_429_COOLDOWN_S = 1.0


class ConcurrencyLimit:
    """At most ``max_concurrent`` at once, at most ``max_queue`` waiting; beyond, Overloaded."""

    __slots__ = ("max_concurrent", "max_queue", "_sem", "waiting")

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._sem = asyncio.Semaphore(max_concurrent)
        self.waiting = 0

    async def acquire(self, backend_name: str) -> None:
        if self._sem.locked():
            if self.waiting >= self.max_queue:
                raise Overloaded(
                    f"backend {backend_name!r} is at max_concurrent={self.max_concurrent} "
                    f"with {self.waiting} requests queued (max_queue={self.max_queue})",
                    retry_after=1,
                )
            self.waiting += 1
            try:
                await self._sem.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._sem.acquire()

    def release(self) -> None:
        self._sem.release()


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
        self.served = 0
        self.failed = 0
        self.ewma_ttfb_s: float | None = None
        self.models: dict[str, ModelCard] = {}
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.limit = (
            ConcurrencyLimit(config.max_concurrent, config.max_queue)
            if config.max_concurrent
            else None
        )

    def available(self, now: float) -> bool:
        return self.healthy is not False and not self.draining and self.circuit.allows(now)

    def unavailable_reason(self, now: float) -> str:
        if self.draining:
            return "draining"
        if self.healthy is False:
            return f"unhealthy ({self.last_error or 'health check failed'})"
        if now < self.circuit.cooled_until:
            return f"cooling down for {self.circuit.cooled_until - now:.1f}s"
        if self.circuit.state is not CircuitState.CLOSED:
            return f"circuit {self.circuit.state.value}"
        return "available"

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send through the provider, keeping counters and circuit state, and bounding
        the wait for the response headers by ``first_byte_timeout_s``.

        On success the caller owns the slot and must call ``finish`` once the body is done.
        """
        if self.limit is not None:
            await self.limit.acquire(self.name)
        self.in_flight += 1
        self.idle.clear()
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
            self._release(ok=False)
            self.last_error = exc.message
            raise
        except BaseException:
            self.circuit.release_trial()
            self._release(ok=None)
            raise
        if response.status >= 400:
            try:
                body = await response.read()
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
                self.circuit.cool_down(error.retry_after or DEFAULT_429_COOLDOWN_S)
                self._release(ok=None)
            elif error.retryable:
                if error.retry_after:
                    self.circuit.cool_down(error.retry_after)
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
        if self.in_flight == 0:
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
            **({"provider_status": s} if (s := self.provider.status()) else {}),
        }
