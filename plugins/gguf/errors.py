"""Errors a worker answers with, each mapped to an OpenAI error envelope and status.

Engine-free so the worker's HTTP layer and the router side can both use them. They share
the router's error base (message, param, code, ``envelope()``).
"""

from __future__ import annotations

from router.errors import RouterError


class EngineError(RouterError):
    status = 500
    type = "server_error"
    code = "engine_error"


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
