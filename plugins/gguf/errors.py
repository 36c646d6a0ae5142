"""Errors a worker answers with, each mapped to an OpenAI error envelope and status.

Engine-free so the worker's HTTP layer and the router side can both use them.
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    status = 500
    type = "server_error"
    code = "engine_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(EngineError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(BadRequest):
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


class ModelLoadError(EngineError):
    status = 500
    code = "model_load_failed"


class QueueFull(EngineError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"
