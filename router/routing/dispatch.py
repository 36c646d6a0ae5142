"""One request to the backends: candidates, strategy, send, failover.

``open_upstream`` resolves the model, narrows the backends that serve it to those
available now (and the ``filter_backends`` hook's choice), asks the model's strategy for
one, and sends. A retryable error before any byte reached the client is retried on
another backend (never one already tried) with tenacity, up to ``routing.retries``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_none

import aiohttp

from router.errors import (
    ModelNotFound,
    NoBackendAvailable,
    Overloaded,
    RouterError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamUnreachable,
    shown,
)
from router.provider import UpstreamResponse
from router.request import ProxyRequest
from router.routing.backend import Backend, BackendView
from router.state import RouterState
from router import jsonlib
from router.streams.commit import HeldStream, hold_first_content
from router.streams.continuation import Delivered, continuation_payload


#: How long a request waits for half-open trials' verdicts when no backend is available.
TRIAL_WAIT_S = 5.0


class Exchange:
    """A response that has started (from a backend, or an early answer with no backend);
    ``finish`` must be called exactly once."""

    __slots__ = ("backend", "response", "_done", "first_byte_at", "usage_raw", "held", "attempts", "continuer",
                 "malformed", "native")

    def __init__(self, backend: Backend | None, response: UpstreamResponse) -> None:
        self.backend = backend
        self.response = response
        self._done = False
        #: When the first byte of the answer reached the relay (time to first token).
        self.first_byte_at: float | None = None
        #: The bytes that carry the answer's ``usage`` (a whole body, or the last stream
        #: chunk that mentions it), kept by reference and parsed only if someone asks.
        self.usage_raw = b""
        #: A stream's first events, read before it was committed to the client.
        self.held: HeldStream | None = None
        #: The backends tried for it (``ProxyRequest.attempts``).
        self.attempts: list[str] = []
        #: Set when a break mid-stream can be continued on another backend: given what
        #: the client was sent, the continuation's exchange (committed), or None.
        self.continuer: Callable[[Delivered], Awaitable[Exchange | None]] | None = None
        #: Malformed stream events dropped (not JSON, not [DONE]).
        self.malformed = 0
        #: Sent in the client's own API to a backend that serves it (relayed untouched).
        self.native = False

    def finish(self, ok: bool | None) -> None:
        if not self._done:
            self._done = True
            self.response.close()
            if self.backend is not None:
                self.backend.finish(ok)


async def open_upstream(state: RouterState, request: ProxyRequest) -> Exchange:
    """Choose a backend and send; fail over on retryable errors before the first byte."""
    index = state.index
    request.target_model = index.resolve(request.model)
    serving = index.get(request.target_model)
    if not serving and await state.backends.refresh_for_unknown_model(request.target_model):
        serving = index.get(request.target_model)
    if not serving:
        served = ", ".join(m for m, _, _ in index.served()) or "none"
        raise ModelNotFound(
            f"The model {shown(request.model)} does not exist or is not served by any backend. "
            f"Available models: {served}",
            param="model",
        )
    strategy = index.strategy_for(request.target_model)
    hooks = state.hooks
    stats = state.stats
    tried: set[str] = set()
    last_error: RouterError | None = None
    exhausted = False  # no candidate left: the last error is final, never retried

    target = request.target_model
    serving_now: list[Backend] = serving

    def available(now: float) -> list[BackendView]:
        return [
            b.view for b in (index.get(target) or serving_now)
            if b.name not in tried and b.available(now)
            and not (b.model_cooldowns and b.cooling(b.config.aliases.get(target, target), now))
        ]

    async def wait_for_trials(now: float) -> list[BackendView]:
        """No backend now, but some circuit is half-open with its trial in flight: wait
        for the verdicts (usually milliseconds) rather than fail while a backend is
        probably back. Bounded by TRIAL_WAIT_S and the request's deadline."""
        until = now + TRIAL_WAIT_S
        while True:
            trials = [b.circuit.trial_settled() for b in serving
                      if b.name not in tried and b.circuit.trial_pending and b.healthy is not False
                      and not b.draining]
            if not trials or now >= until:
                for future in trials:
                    future.cancel()
                return []
            await asyncio.wait(trials, timeout=until - now, return_when=asyncio.FIRST_COMPLETED)
            for future in trials:
                future.cancel()
            now = time.monotonic()
            candidates = available(now)
            if candidates:
                return candidates

    routing = state.config.routing
    hedge = routing.hedge
    retry_budget, hedge_budget = state.retry_budget, state.hedge_budget
    if retry_budget is not None:
        retry_budget.request()
    if hedge_budget is not None:
        hedge_budget.request()
    options = request.payload.pop("x_router", None) if "x_router" in request.payload else None
    if options is not None:
        request.update_payload()  # the body is sent without it
    continuable = (request.stream and request.endpoint == "chat/completions" and routing.max_continuations > 0
                   and not (isinstance(options, dict) and options.get("continuation") is False)
                   and not (routing.no_continuation
                            and any(fnmatch.fnmatchcase(request.target_model, g) for g in routing.no_continuation)))
    #: Only a context_length_exceeded narrows the candidates: to contexts above this.
    context_floor: list[int | None] = []

    def fits_context(b: BackendView) -> bool:
        if not context_floor:
            return True
        known = _context_length(b, b.config.aliases.get(target, target))
        return known is None or context_floor[0] is None or known > context_floor[0]

    async def send(backend: Backend, served_model: str, native: bool = False) -> UpstreamResponse:
        """Send, retrying the same backend for what a second try usually cures (a 429 with
        a short Retry-After, a 500, a reset), at most ``same_backend_retries`` times."""
        left = routing.same_backend_retries
        while True:
            try:
                return await backend.send(request.upstream(served_model, native))
            except RouterError as exc:
                wait = _same_backend_wait(exc, routing.max_retry_after_s)
                if left <= 0 or wait is None or (retry_budget is not None and not retry_budget.spend()):
                    raise
                left -= 1
                stats.retries += 1
                request.attempts.append(f"{backend.name}={exc.code or exc.status}")
                if wait:
                    await asyncio.sleep(wait)

    async def attempt_once() -> Exchange:
        nonlocal exhausted
        if tried:
            if retry_budget is not None and not retry_budget.spend():
                exhausted = True
                raise NoBackendAvailable(
                    f"the retry budget is spent (routing.retry_budget_pct = {routing.retry_budget_pct:g}% of the "
                    f"requests of the last 10 s, plus {routing.retry_budget_min}): failing fast rather than "
                    "adding load; the last error: " + (last_error.message if last_error else "none"),
                    code="retry_budget_exhausted", retry_after=1.0)
            stats.retries += 1
        now = time.monotonic()
        candidates = await candidates_now(now)
        if not candidates:
            exhausted = True
            if last_error is not None:
                raise last_error
            raise _no_backend(request, serving, now)
        backend = strategy.choose(candidates, request)._backend
        if hedge is None or tried or len(candidates) < 2:
            return await attempt_on(backend)
        return await hedged(backend)

    async def candidates_now(now: float) -> list[BackendView]:
        candidates = available(now)
        if not candidates and last_error is None:
            candidates = await wait_for_trials(now)
        if context_floor:
            candidates = [c for c in candidates if fits_context(c)]
        if candidates and hooks.has_filter_backends:
            candidates = list(await hooks.filter_backends(request, candidates))
        if len(candidates) > 1:
            candidates = _warm_first(candidates, request.target_model)
        return candidates

    async def attempt_on(backend: Backend) -> Exchange:
        """Send to ``backend`` and, for a stream, hold it until its first token."""
        nonlocal last_error
        tried.add(backend.name)
        served_model = backend.config.aliases.get(request.target_model, request.target_model)
        # The client's own API, where the backend serves it: its body and answer untouched.
        native = request.native is not None and request.native[0] in backend.apis
        try:
            response = await send(backend, served_model, native)
        except RouterError as exc:
            exc.backend = backend.name
            last_error = exc
            request.attempts.append(f"{backend.name}={exc.code or exc.status}")
            if _context_exceeded(exc) and not context_floor:
                context_floor.append(_context_length(backend.view, served_model))
            raise
        exchange = Exchange(backend, response)
        exchange.native = native
        if (request.stream and routing.commit_after_bytes and response.status == 200 and not native
                and response.content_type == "text/event-stream"):
            try:
                exchange.held = await hold_first_content(
                    response.iter_chunks(), backend=backend.name, limit_bytes=routing.commit_after_bytes,
                    timeout_s=backend.config.first_token_timeout_s or routing.first_token_timeout_s)
            except UpstreamError as exc:  # nothing reached the client: fail over
                exchange.finish(ok=False)
                backend.last_error = exc.message
                exc.backend = backend.name
                last_error = exc
                request.attempts.append(f"{backend.name}={exc.code}")
                raise
            except BaseException:
                exchange.finish(ok=None)
                raise
            exchange.first_byte_at = time.monotonic()
        request.attempts.append(backend.name)
        exchange.attempts = request.attempts
        if continuable and not native and any(b.continuation and b.name not in tried for b in serving_now):
            exchange.continuer = continuer
        return exchange

    async def hedged(first: Backend) -> Exchange:
        """The first attempt, with a second one on another backend if the first has no
        first token after ``routing.hedge.after_ms``: the first to answer wins."""
        assert hedge is not None and hedge_budget is not None
        primary = asyncio.ensure_future(attempt_on(first))
        first_done, _ = await asyncio.wait({primary}, timeout=hedge.after_ms / 1000)
        if first_done:
            return primary.result()
        others = [c for c in await candidates_now(time.monotonic()) if c._backend is not first]
        if not others or not hedge_budget.spend() or (retry_budget is not None and not retry_budget.spend()):
            return await primary
        stats.hedges += 1
        second = strategy.choose(others, request)._backend
        secondary = asyncio.ensure_future(attempt_on(second))
        names: dict[asyncio.Future[Exchange], str] = {primary: first.name, secondary: second.name}
        pending: set[asyncio.Future[Exchange]] = {primary, secondary}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                winners = [t for t in done if t.exception() is None]
                if winners:
                    for extra in winners[1:]:
                        extra.result().finish(ok=None)
                    return winners[0].result()
                error = next(iter(done)).exception()
        finally:
            for loser in pending:  # closed at once; a result that raced in is let go
                loser.cancel()
                request.attempts.append(f"{names[loser]}=abandoned (hedged)")
            for outcome in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(outcome, Exchange):
                    outcome.finish(ok=None)
        assert error is not None
        raise error

    continuations = 0

    async def continuer(delivered: Delivered) -> Exchange | None:
        """Go on from ``delivered`` on another backend that accepts a prefill; the first
        whose stream commits wins (routing.max_continuations bounds how often)."""
        nonlocal continuations
        if continuations >= routing.max_continuations:
            return None
        continuations += 1
        payload = continuation_payload(request.payload, delivered)
        while True:
            now = time.monotonic()
            candidates = [c for c in available(now) if c._backend.continuation]
            if not candidates:
                return None
            backend = strategy.choose(candidates, request)._backend
            tried.add(backend.name)
            served_model = backend.config.aliases.get(target, target)
            upstream = request.upstream(served_model)
            upstream.body = jsonlib.dumps({**payload, "model": served_model})
            upstream.payload = payload
            try:
                response = await backend.send(upstream)
                following = Exchange(backend, response)
                try:
                    following.held = await hold_first_content(
                        response.iter_chunks(), backend=backend.name, limit_bytes=routing.commit_after_bytes or 1,
                        timeout_s=backend.config.first_token_timeout_s or routing.first_token_timeout_s)
                except BaseException:
                    following.finish(ok=False)
                    raise
            except RouterError as exc:
                request.attempts.append(f"{backend.name}={exc.code or exc.status} (continuation)")
                continue
            stats.continuations += 1
            request.attempts.append(f"{backend.name} (continuation)")
            following.attempts = request.attempts
            following.continuer = continuer
            return following

    def retryable(exc: BaseException) -> bool:
        if not isinstance(exc, RouterError) or exhausted:
            return False
        return exc.retryable or (_context_exceeded(exc) and bool(context_floor))

    # The first attempt runs without tenacity: building a retry controller costs more
    # than the rest of the routing, and most requests succeed at once. A retryable
    # failure hands the remaining ``retries`` attempts to tenacity, after one yield to
    # the loop.
    retries = state.config.routing.retries
    try:
        return await attempt_once()
    except RouterError as exc:
        if not retryable(exc) or retries < 1:
            raise
    await asyncio.sleep(0)
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(retries),
        retry=retry_if_exception(retryable),
        wait=wait_none(),
        reraise=True,
    ):
        with attempt:
            return await attempt_once()
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True always raises


#: Keys of a model card that give its context length (vLLM, the gguf and gptq providers).
_CONTEXT_KEYS = ("max_model_len", "context_length", "n_ctx")


def _context_exceeded(exc: RouterError) -> bool:
    """A 400 saying the prompt does not fit: another backend with a larger context may take it."""
    return isinstance(exc, UpstreamHTTPError) and exc.status == 400 and exc.upstream_code == "context_length_exceeded"


def _context_length(backend: BackendView, model: str) -> int | None:
    """The model's context length on ``backend``: its ``context_length`` key, else what
    its model card reports, else None (unknown)."""
    if backend.config.context_length:
        return backend.config.context_length
    card = backend.models.get(model)
    if card is not None:
        for key in _CONTEXT_KEYS:
            value = card.extra.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _same_backend_wait(exc: RouterError, max_retry_after_s: float) -> float | None:
    """Seconds to wait before trying the same backend again, or None to fail over: a 429
    with a short Retry-After, a 500, a connection reset."""
    if isinstance(exc, UpstreamHTTPError):
        if exc.status == 429 and exc.retry_after is not None and exc.retry_after <= max_retry_after_s:
            return exc.retry_after
        return 0.0 if exc.status == 500 else None
    if isinstance(exc, UpstreamUnreachable) and isinstance(
            exc.__cause__, (aiohttp.ServerDisconnectedError, ConnectionResetError)):
        return 0.0
    if isinstance(exc, UpstreamUnreachable) and isinstance(exc.__cause__, aiohttp.ClientOSError) \
            and exc.__cause__.errno == 104:  # ECONNRESET
        return 0.0
    return None


def _warm_first(candidates: list[BackendView], model: str) -> list[BackendView]:
    """Where the model is loaded already, when it is somewhere: a cold load never holds
    up a request that a warm backend can take."""
    if not any(c._backend.provider.loads_on_demand for c in candidates):
        return candidates
    warm = [c for c in candidates if not c._backend.provider.loads_on_demand
            or c._backend.provider.is_warm(c.config.aliases.get(model, model))]
    return warm or candidates


def _no_backend(request: ProxyRequest, serving: list[Backend], now: float) -> RouterError:
    target = request.target_model
    served = {b.name: b.config.aliases.get(target, target) for b in serving}
    reasons = "; ".join(f"{b.name}: {b.unavailable_reason(now, served[b.name])}" for b in serving)
    waits = [max(b.circuit.retry_in(now), b.cooling(served[b.name], now)) for b in serving if not b.draining]
    retry_after = min(waits) if waits and min(waits) > 0 else 5.0
    if all(b.limit is not None and b.limit.waiting >= b.limit.max_queue for b in serving):
        return Overloaded(f"every backend for {shown(request.model)} is full: {reasons}", retry_after=1)
    return NoBackendAvailable(
        f"no backend can take requests for model {shown(request.model)} right now ({reasons})",
        retry_after=retry_after,
    )
