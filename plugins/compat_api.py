"""Seed 002's ``/api/*`` endpoints, a built-in plugin on ``register_routes``.

    GET  /api/llms              {"models": [{"id", "backends", "loaded"?}]}
    POST /api/generate          {"prompt", "model", ...} → {"id", "model", "text", "finish_reason", "usage"}
    POST /api/chat              {"messages", "model", ...} → {"id", "model", "message", "finish_reason", "usage"}
    POST /api/generate/stream   SSE: data: {"text"} (and "reasoning" for thinking), then
    POST /api/chat/stream            data: {"finish_reason", "usage"}, then data: [DONE]

Each POST is an ``EndpointAdapter`` over ``/v1/chat/completions`` (a prompt becomes one
user message), served by ``router.proxy_handler``: the same hooks (keys, generation
defaults and limits, thinking separation), strategies, failover and limits as ``/v1/*``.
Errors leave in OpenAI's envelope; in a stream that has started, as
``data: {"error": {...}}`` then ``data: [DONE]``. docs/api-compat.md has examples.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from router import (
    EndpointAdapter,
    InvalidRequest,
    ProxyRequest,
    ResponseTransform,
    Route,
    RouterView,
    SSEEvent,
    hookimpl,
    jsonlib,
    proxy_handler,
)

#: Fields both endpoints accept and check; anything else is passed on as it came.
SAMPLING = {"max_tokens": int, "temperature": float, "top_p": float}


def _load(body: bytes) -> dict[str, Any]:
    try:
        payload = jsonlib.loads(body)
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for name, kind in SAMPLING.items():
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or (kind is int and not isinstance(value, int))):
            raise InvalidRequest(f"'{name}' must be {'a whole number' if kind is int else 'a number'}", param=name)
    stop = payload.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list)
                                                           and all(isinstance(s, str) for s in stop))):
        raise InvalidRequest("'stop' must be a string or a list of strings", param="stop")
    return payload


class CompatAdapter(EndpointAdapter):
    def __init__(self, kind: str, stream: bool) -> None:
        self.kind = kind  # "generate" or "chat"
        self.stream = stream

    def request(self, body: bytes) -> bytes:
        payload = _load(body)
        if self.kind == "generate":
            prompt = payload.pop("prompt", None)
            if not isinstance(prompt, str) or not prompt:
                raise InvalidRequest("'prompt' is required (a non-empty string)", param="prompt")
            if "messages" in payload:
                raise InvalidRequest("/api/generate takes a 'prompt', not 'messages' (use /api/chat)",
                                     param="messages")
            payload["messages"] = [{"role": "user", "content": prompt}]
        elif "prompt" in payload:
            raise InvalidRequest("/api/chat takes 'messages', not a 'prompt' (use /api/generate)", param="prompt")
        payload["stream"] = self.stream
        if self.stream:
            payload["stream_options"] = {"include_usage": True}
        else:
            payload.pop("stream_options", None)
        return jsonlib.dumps(payload)

    def response(self, request: ProxyRequest, status: int, content_type: str) -> ResponseTransform | None:
        if status != 200:
            return None
        if content_type == "text/event-stream":
            return CompatStream()
        return CompatBody(self.kind)


class CompatBody(ResponseTransform):
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def body(self, body: bytes, content_type: str) -> bytes:
        try:
            data = jsonlib.loads(body)
        except ValueError:
            return body
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return body
        choice = choices[0]
        message: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
        out: dict[str, Any] = {"id": data.get("id"), "model": data.get("model")}
        reasoning = message.get("reasoning_content")
        if self.kind == "generate":
            out["text"] = message.get("content") or ""
            if reasoning:
                out["reasoning_content"] = reasoning
        else:
            reply: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
            if reasoning:
                reply["reasoning_content"] = reasoning
            out["message"] = reply
        out["finish_reason"] = choice.get("finish_reason")
        out["usage"] = _usage(data.get("usage"))
        return jsonlib.dumps(out)


class CompatStream(ResponseTransform):
    """OpenAI chunks → ``{"text"}`` pieces; the finish reason waits for the usage chunk
    (``stream_options.include_usage``), or for ``[DONE]`` when the backend sends none."""

    def __init__(self) -> None:
        self.finish: Any = None
        self.closed = False

    def event(self, event: SSEEvent) -> Iterable[SSEEvent]:
        if event.is_done:
            return [*self._close(None), event]
        try:
            chunk = jsonlib.loads(event.data)
        except ValueError:
            return (event,)
        if not isinstance(chunk, dict) or "choices" not in chunk:
            return (event,)  # an error event, say: passed on as it is
        out: list[SSEEvent] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta: dict[str, Any] = choice["delta"] if isinstance(choice.get("delta"), dict) else {}
            text = delta.get("content") or ""
            reasoning = delta.get("reasoning_content")
            if reasoning:
                out.append(_event({"text": text, "reasoning": reasoning}))
            elif text:
                out.append(_event({"text": text}))
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
        if isinstance(chunk.get("usage"), dict):
            out += self._close(chunk["usage"])
        return out

    def _close(self, usage: Any) -> list[SSEEvent]:
        if self.closed or (self.finish is None and usage is None):
            return []
        self.closed = True
        return [_event({"finish_reason": self.finish, "usage": _usage(usage)})]


def _event(data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(jsonlib.dumps(data))


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens") if k in usage}


def list_llms(router: RouterView) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        allowed = router.config.generation.allowed_models
        models = []
        for model_id, card, backends in router.models():
            names = (model_id, router.resolve(model_id))
            if allowed != ["*"] and not any(fnmatch.fnmatchcase(n, g) for n in names for g in allowed):
                continue
            entry: dict[str, Any] = {"id": model_id, "backends": backends}
            if card is not None and "loaded" in card.extra:
                entry["loaded"] = card.extra["loaded"]
            models.append(entry)
        return web.json_response({"models": models}, dumps=lambda o: jsonlib.dumps(o).decode())
    return handler


@hookimpl
def register_routes(register: Callable[[Route], None], router: RouterView) -> None:
    register(Route("GET", "/api/llms", list_llms(router), "the models served (seed 002)"))
    for kind in ("generate", "chat"):
        register(Route("POST", f"/api/{kind}", proxy_handler("chat/completions", CompatAdapter(kind, False)),
                       f"{kind} (seed 002)"))
        register(Route("POST", f"/api/{kind}/stream", proxy_handler("chat/completions", CompatAdapter(kind, True)),
                       f"{kind}, streamed (seed 002)"))
