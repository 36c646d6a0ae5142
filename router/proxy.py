"""One client request through the router: parse once, pick a backend, fail over.

``ProxyRequest`` is the parsed client request (the body is parsed exactly once).
``open_upstream`` chooses a backend with the model's strategy and sends the request,
retrying on another backend (never one already tried) while the error is retryable and
nothing has reached the client yet. Retries use tenacity.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_none

from router import jsonlib
from router.backend import Backend
from router.errors import (
    InvalidRequest,
    ModelNotFound,
    NoBackendAvailable,
    Overloaded,
    RouterError,
    shown,
)
from router.provider import UpstreamRequest, UpstreamResponse
from router.state import RouterState, call_hook

# Headers a client may send that are meant for the backend too.
FORWARDED_HEADERS = ("X-Request-ID", "OpenAI-Organization", "OpenAI-Project")


class ProxyRequest:
    __slots__ = (
        "endpoint", "body", "payload", "model", "target_model", "stream",
        "request_id", "headers", "started", "_body_dirty",
    )

    def __init__(
        self,
        endpoint: str,
        body: bytes,
        payload: dict[str, Any],
        request_id: str,
        headers: Mapping[str, str],
    ) -> None:
        self.endpoint = endpoint
        self.body = body
        self.payload = payload
        self.request_id = request_id
        self.headers = headers
        self.started = time.monotonic()
        self._body_dirty = False
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest(
                "you must provide a model parameter (a non-empty string)", param="model"
            )
        self.model = model
        self.target_model = model
        stream = payload.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be true or false", param="stream")
        self.stream = stream

    @classmethod
    def parse(
        cls, endpoint: str, body: bytes, request_id: str, headers: Mapping[str, str]
    ) -> ProxyRequest:
        if not body:
            raise InvalidRequest("the request body is empty; send a JSON object")
        try:
            payload = jsonlib.loads(body)
        except ValueError as exc:
            raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise InvalidRequest("the request body must be a JSON object")
        return cls(endpoint, body, payload, request_id, headers)

    def update_payload(self, **fields: Any) -> None:
        """Change body fields (for plugins); the body is re-serialized once before sending."""
        self.payload.update(fields)
        self._body_dirty = True

    def session_key(self, source: str) -> str | None:
        """The sticky-session key: ``auto`` (user field, else X-Session-ID), ``user``,
        or ``header:<Name>``."""
        if source in ("auto", "user"):
            user = self.payload.get("user")
            if isinstance(user, str) and user:
                return user
            if source == "user":
                return None
            return self.headers.get("X-Session-ID") or None
        if source.startswith("header:"):
            return self.headers.get(source[7:]) or None
        return None

    def upstream(self, served_model: str) -> UpstreamRequest:
        body = self.body
        if served_model != self.model or self._body_dirty:
            payload = self.payload if served_model == self.payload.get("model") else {
                **self.payload, "model": served_model
            }
            body = jsonlib.dumps(payload)
        headers = {"X-Request-ID": self.request_id}
        for name in FORWARDED_HEADERS[1:]:
            value = self.headers.get(name)
            if value is not None:
                headers[name] = value
        return UpstreamRequest(
            endpoint=self.endpoint,
            body=body,
            payload=self.payload,
            model=served_model,
            stream=self.stream,
            request_id=self.request_id,
            headers=headers,
        )


class Exchange:
    """A backend's response that has started; ``finish`` must be called exactly once."""

    __slots__ = ("backend", "response", "_done")

    def __init__(self, backend: Backend, response: UpstreamResponse) -> None:
        self.backend = backend
        self.response = response
        self._done = False

    def finish(self, ok: bool | None) -> None:
        if not self._done:
            self._done = True
            self.response.close()
            self.backend.finish(ok)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, RouterError) and exc.retryable


async def open_upstream(state: RouterState, request: ProxyRequest) -> Exchange:
    """Choose a backend and send; fail over on retryable errors before the first byte."""
    if state.has_prepare_hooks:
        await call_hook(state.pm.hook.prepare_request, request=request)
    request.target_model = state.resolve(request.model)
    serving = state.index.get(request.target_model)
    if not serving and await state.refresh_for_unknown_model(request.target_model):
        serving = state.index[request.target_model]
    if not serving:
        raise ModelNotFound(
            f"The model {shown(request.model)} does not exist or is not served by any backend. "
            f"Available models: {', '.join(m for m, _, _ in state.served_models()) or 'none'}",
            param="model",
        )
    strategy = state.strategy_for(request.target_model)
    tried: set[str] = set()
    last_error: RouterError | None = None

    async def attempt_once() -> Exchange:
        nonlocal last_error
        if tried:
            state.retries += 1
        now = time.monotonic()
        candidates = [
            b for b in state.index.get(request.target_model, serving)
            if b.name not in tried and b.available(now)
        ]
        if candidates and state.has_filter_hooks:
            for narrowed in state.pm.hook.filter_backends(request=request, backends=candidates):
                if narrowed is not None:
                    candidates = [b for b in candidates if b in narrowed]
        if not candidates:
            if last_error is not None:
                raise _final(last_error)
            raise _no_backend(request, serving, now)
        backend = strategy.choose(candidates, request)
        tried.add(backend.name)
        served_model = backend.config.aliases.get(request.target_model, request.target_model)
        try:
            response = await backend.send(request.upstream(served_model))
        except RouterError as exc:
            exc.backend = backend.name
            last_error = exc
            raise
        return Exchange(backend, response)

    # The first attempt runs without tenacity: building a retry controller costs more
    # than the rest of the routing, and most requests succeed at once. A retryable
    # failure hands the remaining ``retries`` attempts to tenacity, after one yield to
    # the loop.
    retries = state.config.routing.retries
    try:
        return await attempt_once()
    except RouterError as exc:
        if not exc.retryable or retries < 1:
            raise
    await asyncio.sleep(0)
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(retries),
        retry=retry_if_exception(_retryable),
        wait=wait_none(),
        reraise=True,
    ):
        with attempt:
            return await attempt_once()
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True always raises


def _final(error: RouterError) -> RouterError:
    """The error to send when no backend is left to try: never retried again."""
    error.retryable = False
    return error


def _no_backend(request: ProxyRequest, serving: list[Backend], now: float) -> RouterError:
    reasons = "; ".join(f"{b.name}: {b.unavailable_reason(now)}" for b in serving)
    waits = [b.circuit.retry_in(now) for b in serving if not b.draining]
    retry_after = min(waits) if waits and min(waits) > 0 else 5.0
    if all(b.limit is not None and b.limit.waiting >= b.limit.max_queue for b in serving):
        return Overloaded(f"every backend for {shown(request.model)} is full: {reasons}", retry_after=1)
    error = NoBackendAvailable(
        f"no backend can take requests for model {shown(request.model)} right now ({reasons})",
        retry_after=retry_after,
    )
    return error
