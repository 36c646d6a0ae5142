"""Anthropic's Messages API in front of every backend, a built-in plugin on
``register_routes``:

    POST /v1/messages               Anthropic request → chat completions → Anthropic answer
                                    (streamed: message_start, ping, content_block_start /
                                    _delta / _stop, message_delta, message_stop; error)
    POST /v1/messages/count_tokens  {"input_tokens": N}: counted by the backend when every
                                    backend serving the model is a local engine, else an
                                    estimate, flagged ("estimate": true)

``/v1/messages`` is an ``EndpointAdapter`` over ``/v1/chat/completions`` served by
``router.proxy_handler``, so model names, aliases, routing, failover, limits, keys
(``x-api-key``) and metrics are those of chat completions; a request that is not for
these routes pays nothing. ``request.py`` translates the request, ``response.py`` the
answer and the stream. Errors on these routes leave in Anthropic's shape,
``{"type": "error", "error": {"type", "message"}}``, with the router's status.
docs/apis.md has every field.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from router import (
    EndpointAdapter,
    ProxyRequest,
    ResponseTransform,
    Route,
    RouterError,
    RouterView,
    hookimpl,
    json_object,
    jsonlib,
    proxy_handler,
)

from plugins.anthropic_messages.request import estimate_tokens, to_chat
from plugins.anthropic_messages.response import ErrorBody, MessageBody, MessageStream, error_body, usage

#: Providers whose backends are the router's own engines: counting a prompt there (one
#: token generated) costs nothing and uses the model's tokenizer and chat template.
LOCAL_PROVIDERS = frozenset({"gguf", "gptq", "dynamic"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("router")


class MessagesAdapter(EndpointAdapter):
    api = "messages"  # a backend declaring it in ``apis`` gets the request as sent
    native_endpoint = "messages"

    def request(self, body: bytes) -> bytes:
        return jsonlib.dumps(to_chat(json_object(body)))

    def response(self, request: ProxyRequest, status: int, content_type: str) -> ResponseTransform | None:
        if status != 200:
            return ErrorBody(status)
        stop = request.payload.get("stop")
        stops = [s for s in stop if isinstance(s, str)] if isinstance(stop, list) else []
        if content_type == "text/event-stream":
            return MessageStream(stops)
        return MessageBody(stops)


def anthropic_errors(handler: Handler) -> Handler:
    """``handler`` with the router's errors in Anthropic's shape (same status, headers)."""

    async def view(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RouterError as exc:
            return error_response(exc)
        except web.HTTPException:
            raise
        except Exception:  # noqa: BLE001 - a bug still answers in the client's shape
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(RouterError("internal router error; see the router's log"))

    view.__name__ = getattr(handler, "__name__", "anthropic")
    view.authenticates = getattr(handler, "authenticates", False)  # type: ignore[attr-defined]
    return view


def error_response(exc: RouterError) -> web.Response:
    response = web.Response(body=jsonlib.dumps(error_body(exc.status, exc.message)), status=exc.status,
                            content_type="application/json", headers=exc.headers())
    if exc.close_connection:
        response.force_close()
    return response


class CountAdapter(EndpointAdapter):
    """``count_tokens`` on a local engine: the prompt sent with ``max_tokens: 1``; its
    ``usage.prompt_tokens`` is the count."""

    def request(self, body: bytes) -> bytes:
        return jsonlib.dumps(to_chat({**json_object(body), "max_tokens": 1, "stream": False}))

    def response(self, request: ProxyRequest, status: int, content_type: str) -> ResponseTransform | None:
        return ErrorBody(status) if status != 200 else CountBody()


class CountBody(ResponseTransform):
    def body(self, body: bytes, content_type: str) -> bytes:
        try:
            data = jsonlib.loads(body)
        except ValueError:
            return jsonlib.dumps(error_body(502, "the backend's answer is not JSON"))
        return jsonlib.dumps({"input_tokens": usage(data.get("usage") if isinstance(data, dict) else None)
                              ["input_tokens"]})


def count_tokens(router: RouterView) -> Handler:
    exact = proxy_handler("chat/completions", CountAdapter())

    async def handler(request: web.Request) -> web.StreamResponse:
        payload: dict[str, Any] = json_object(await request.read())
        count = estimate_tokens(payload)  # validates the body too
        if _local(router, str(payload["model"])):
            return await exact(request)
        return web.Response(body=jsonlib.dumps({"input_tokens": count, "estimate": True}),
                            content_type="application/json")

    return handler


def _local(router: RouterView, model: str) -> bool:
    """Whether every backend serving ``model`` (or what it aliases) is a local engine."""
    names = {model, router.resolve(model)}
    backends = [b for model_id, _, serving in router.models() if model_id in names for b in serving]
    return bool(backends) and all(router.backends[b].provider in LOCAL_PROVIDERS for b in backends)


@hookimpl
def register_routes(register: Callable[[Route], None], router: RouterView) -> None:
    register(Route("POST", "/v1/messages", anthropic_errors(proxy_handler("chat/completions", MessagesAdapter())),
                   "Anthropic Messages, over chat completions"))
    register(Route("POST", "/v1/messages/count_tokens", anthropic_errors(count_tokens(router)),
                   "Anthropic token count (by a local engine, else an estimate)"))
