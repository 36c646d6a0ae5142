"""The router's exception tree. Every error leaves the router in OpenAI's envelope.

    RouterError                      status, type, code, param, retryable, retry_after
    ├── InvalidRequest               400  client's fault, never retried
    │   ├── ContextLengthExceeded    400  the prompt does not fit the model's context
    │   ├── PayloadTooLarge          413  the body is over server.max_body_mb
    │   ├── RequestTimeout           408  the body took longer than server.body_timeout_s
    │   ├── MethodNotAllowed         405
    │   └── Conflict                 409  e.g. a backend name that exists already
    ├── AuthenticationFailed         401  invalid_api_key: a missing, wrong or revoked key
    ├── Forbidden                    403  forbidden (e.g. a CORS preflight from another origin)
    │   └── ModelNotAllowed          403  model_not_allowed: the key may not use this model
    ├── RateLimited                  429  rate_limit_exceeded: the key's rpm/tpm (never retried)
    ├── NotFound                     404  no such endpoint (or admin API off)
    │   └── ModelNotFound            404  model_not_found, lists what is available
    ├── Overloaded                   429  queue full (router or worker side); retryable elsewhere
    ├── NoBackendAvailable           503  every backend for the model is down / open / draining
    ├── EngineError                  500  a local engine failed while generating (worker side)
    └── UpstreamError                     raised at the provider boundary
        ├── UpstreamUnreachable      502  connection refused / reset before the first byte
        ├── UpstreamTimeout          504  connect or first-byte timeout
        ├── UpstreamHTTPError        the upstream's own status; retryable for 408/429/5xx
        ├── StreamIncomplete         502  a stream ended without [DONE] or a finish reason
        ├── ResponseTooLarge         502  a body over server.max_response_mb (not retried)
        ├── ModelLoadFailed          500  a local worker could not load its model
        └── WorkerCrashed            502  a local worker died while handling the request

Local workers raise the same classes, so one error has one status and envelope on both
sides of the process boundary. Errors are never mutated to change their status: each
status has its class.

Failover reads ``retryable``; it never matches on message text.
"""

from __future__ import annotations

import datetime
import email.utils
from typing import Any

from router import jsonlib

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class RouterError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str | None = None
    retryable: bool = False
    #: The backend the error came from, if any (sent as X-Router-Backend).
    backend: str | None = None
    #: The client's connection cannot be reused (e.g. its body was not read to the end).
    close_connection: bool = False
    #: The failure concerns one model of the backend (a load that failed, a model that
    #: crashed), not the backend: its circuit breaker does not count it.
    model_scoped: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    #: Also carry the message as a top-level ``detail`` string (FastAPI's shape, which
    #: clients of XandRouting-style management APIs read).
    with_detail: bool = False

    def envelope(self) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }
        if self.with_detail:
            envelope["detail"] = self.message
        return envelope

    def body(self) -> bytes:
        return jsonlib.dumps(self.envelope())

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        if self.backend is not None:
            headers["X-Router-Backend"] = self.backend
        return headers


class InvalidRequest(RouterError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"
    close_connection = True


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"

    def __init__(self, limit: int, tokens: int | None) -> None:
        got = f"your request has {tokens} tokens" if tokens is not None else "your request is longer"
        super().__init__(
            f"This model's maximum context length is {limit} tokens, and {got} (prompt plus at "
            "least one generated token must fit). Shorten the messages, or raise n_ctx in the "
            "model's config if the model supports a longer context.",
            param="messages",
        )
        self.limit = limit


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"
    close_connection = True


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class Conflict(InvalidRequest):
    status = 409
    code = "conflict"


class AuthenticationFailed(RouterError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(RouterError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class ModelNotAllowed(Forbidden):
    code = "model_not_allowed"


class RateLimited(RouterError):
    """A client key's own limit (``rpm``/``tpm``): the client waits; no other backend helps."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Overloaded(RouterError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"
    retryable = True


class NoBackendAvailable(RouterError):
    status = 503
    type = "service_unavailable"
    code = "no_backend_available"


class EngineError(RouterError):
    """A local engine failed while generating (raised inside a worker process)."""

    status = 500
    type = "server_error"
    code = "engine_error"


class UpstreamError(RouterError):
    """An error from or on the way to a backend."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    retryable = True


class UpstreamUnreachable(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout"
    code = "upstream_timeout"


class ModelLoadFailed(UpstreamError):
    """A local worker could not load its model (the message says why and what to do)."""

    status = 500
    type = "server_error"
    code = "model_load_failed"


class StreamIncomplete(UpstreamError):
    """The upstream ended a stream without ``data: [DONE]`` or a finish reason."""

    code = "upstream_stream_incomplete"


class ResponseTooLarge(UpstreamError):
    """The upstream's body is over ``server.max_response_mb``: retrying elsewhere would not help."""

    code = "upstream_response_too_large"
    retryable = False


class WorkerCrashed(UpstreamError):
    status = 502
    code = "worker_crashed"


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with an error status; its body is passed on when OpenAI-shaped."""

    def __init__(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.retryable = status in RETRYABLE_STATUSES
        self.raw_body = body
        self.content_type = content_type
        self._upstream_envelope = _openai_envelope(body)
        if self._upstream_envelope is not None:
            message = str(self._upstream_envelope["error"].get("message", ""))
        else:
            text = body[:500].decode("utf-8", "replace").strip()
            message = f"upstream returned HTTP {status}" + (f": {text}" if text else "")
        super().__init__(message, retry_after=retry_after)
        if status == 429:
            self.type = "rate_limit_error"
        elif status < 500:
            self.type = "invalid_request_error"

    @property
    def upstream_code(self) -> str | None:
        """The ``code`` of the upstream's own OpenAI-shaped error, if it sent one."""
        if self._upstream_envelope is None:
            return None
        code = self._upstream_envelope["error"].get("code")
        return code if isinstance(code, str) else None

    def body(self) -> bytes:
        if self._upstream_envelope is not None:
            return self.raw_body
        return super().body()


def _openai_envelope(body: bytes) -> dict[str, Any] | None:
    try:
        data = jsonlib.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data
    return None


def shown(name: str, limit: int = 200) -> str:
    """A client-supplied name for an error message: quoted, and cut if absurdly long."""
    return repr(name) if len(name) <= limit else repr(name[:limit]) + f"... ({len(name)} characters)"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
