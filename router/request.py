"""``ProxyRequest``: one client request to an OpenAI endpoint, parsed exactly once.

It is what the per-request hooks receive. It exists before the body is parsed, so a
request rejected for its body (400, 413) or its key (401) is still observed
(``observe_response``); ``parse`` fills ``payload``, ``model`` and ``stream``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from router import jsonlib
from router.errors import InvalidRequest
from router.provider import UpstreamRequest

# Headers a client may send that are meant for the backend too.
FORWARDED_HEADERS = ("OpenAI-Organization", "OpenAI-Project")
#: Also forwarded to a backend that serves the client's API natively (Anthropic's).
NATIVE_HEADERS = ("anthropic-version", "anthropic-beta")


class AttemptLog(list[str]):
    """The attempts of a request, each with the monotonic time it was appended (settled)."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[float] = []

    def append(self, attempt: str) -> None:
        super().append(attempt)
        self.ended.append(time.monotonic())


class ProxyRequest:
    __slots__ = (
        "endpoint", "body", "payload", "model", "target_model", "stream",
        "request_id", "headers", "started", "identity", "context", "response_headers", "_body_dirty",
        "first_byte_at", "usage_raw", "error_code", "attempts", "native",
    )

    def __init__(self, endpoint: str, request_id: str, headers: Mapping[str, str],
                 body: bytes = b"") -> None:
        #: The OpenAI path below ``/v1`` (``chat/completions``, ``completions``, ``embeddings``).
        self.endpoint = endpoint
        self.request_id = request_id
        self.headers = headers
        self.body = body
        self.started = time.monotonic()
        #: Who sent it, as the ``authenticate`` hook said (None: anonymous).
        self.identity: Any = None
        #: What plugins note about this request for their later hooks (prepare_request
        #: → transform_response, say); keys are the plugin's own.
        self.context: dict[str, Any] = {}
        #: Headers a plugin adds to the answer (None: none), e.g. ``X-Router-Cache``.
        self.response_headers: dict[str, str] | None = None
        #: Filled when the answer is done, for observers (``observe_response``): when its
        #: first byte was relayed, the raw bytes that carry its usage (see ``usage()``),
        #: and the error code it ended with, if any.
        self.first_byte_at: float | None = None
        self.usage_raw = b""
        self.error_code: str | None = None
        #: Each backend tried, in order: "name" for the one that answered, "name=code"
        #: for one that failed (sent as X-Router-Attempts); ``attempts.ended`` says when
        #: each attempt was settled (for traces).
        self.attempts: AttemptLog = AttemptLog()
        #: For another API's route (``EndpointAdapter.api``): the API, its endpoint below
        #: ``/v1`` and the client's own body, for backends that serve it natively.
        self.native: tuple[str, str, bytes] | None = None
        self.payload: dict[str, Any] = {}
        #: The model the client named ("" until parsed), and after global aliases.
        self.model = ""
        self.target_model = ""
        self.stream = False
        self._body_dirty = False

    @classmethod
    def parse(cls, endpoint: str, body: bytes, request_id: str, headers: Mapping[str, str]) -> ProxyRequest:
        request = cls(endpoint, request_id, headers, body)
        request.parse_body(body)
        return request

    def parse_body(self, body: bytes) -> None:
        """Parse and check the body; raises ``InvalidRequest`` saying what to fix."""
        self.body = body
        if not body:
            raise InvalidRequest("the request body is empty; send a JSON object")
        payload = json_object(body)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("you must provide a model parameter (a non-empty string)", param="model")
        stream = payload.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be true or false", param="stream")
        check_shape(self.endpoint, payload)
        self.payload = payload
        self.model = self.target_model = model
        self.stream = stream

    @property
    def ttft_s(self) -> float | None:
        """Seconds from receipt to the answer's first byte (for a whole body: all of it)."""
        return None if self.first_byte_at is None else self.first_byte_at - self.started

    def usage(self) -> dict[str, int] | None:
        """The answer's token usage (``prompt_tokens``, ``completion_tokens``, ...), parsed
        on demand from what the relay kept; None when the answer said none."""
        raw = self.usage_raw
        if not raw:
            return None
        if raw.lstrip().startswith(b"{"):
            candidates = [raw]
        else:  # stream events: the last one that mentions usage
            candidates = [line[5:] for line in raw.splitlines() if line.startswith(b"data:") and b'"usage"' in line]
        for candidate in reversed(candidates):
            try:
                data = jsonlib.loads(candidate)
            except ValueError:
                continue
            usage = data.get("usage") if isinstance(data, dict) else None
            if isinstance(usage, dict):
                return {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
        return None

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

    def _native(self, served_model: str, api: str, endpoint: str, original: bytes) -> UpstreamRequest:
        body = original
        payload = jsonlib.loads(original)  # parsed by the adapter already: valid JSON
        if payload.get("model") != served_model:  # a backend's own name for the model
            payload["model"] = served_model
            body = jsonlib.dumps(payload)
        headers = {"X-Request-ID": self.request_id}
        for name in (*FORWARDED_HEADERS, *NATIVE_HEADERS):
            value = self.headers.get(name)
            if value is not None:
                headers[name] = value
        return UpstreamRequest(endpoint=endpoint, body=body, payload=payload, model=served_model,
                               stream=self.stream, request_id=self.request_id, headers=headers)

    def upstream(self, served_model: str, native: bool = False) -> UpstreamRequest:
        """The request as sent to a backend that calls the model ``served_model``
        (``native``: in the client's own API, as the client sent it)."""
        if native and self.native is not None:
            return self._native(served_model, *self.native)
        body = self.body
        if served_model != self.model or self._body_dirty:
            payload = self.payload if served_model == self.payload.get("model") else {
                **self.payload, "model": served_model
            }
            try:
                body = jsonlib.dumps(payload)
            except ValueError as exc:  # e.g. a lone surrogate, legal in JSON, not in UTF-8
                raise InvalidRequest(f"the request cannot be sent on as UTF-8 JSON: {exc}") from exc
        headers = {"X-Request-ID": self.request_id}
        for name in FORWARDED_HEADERS:
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


def json_object(body: bytes) -> dict[str, Any]:
    """A request body parsed as a JSON object; ``InvalidRequest`` (400) saying what is
    wrong otherwise. For plugins' own routes too."""
    try:
        payload = jsonlib.loads(body)
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return payload


def check_shape(endpoint: str, payload: dict[str, Any]) -> None:
    """The minimal checks before routing, each naming its ``param``; everything else
    passes through untouched for the backend to judge."""
    if endpoint == "chat/completions":
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty list of message objects", param="messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise InvalidRequest(f"messages[{i}] must be an object with a role and content",
                                     param=f"messages[{i}]")
    elif endpoint == "completions":
        if "prompt" not in payload:
            raise InvalidRequest("'prompt' is required (a string or a list of strings)", param="prompt")
    elif endpoint == "embeddings":
        if "input" not in payload:
            raise InvalidRequest("'input' is required (a string or a list of strings)", param="input")
