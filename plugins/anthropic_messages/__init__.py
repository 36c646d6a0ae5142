"""Anthropic's Messages API in front of every backend, a built-in plugin on
``register_routes``:

    POST /v1/messages               Anthropic request → chat completions → Anthropic answer
                                    (streamed: message_start, ping, content_block_start /
                                    _delta / _stop, message_delta, message_stop; error)
    POST /v1/messages/count_tokens  {"input_tokens": N, "estimate": true}

``/v1/messages`` is an ``EndpointAdapter`` over ``/v1/chat/completions`` served by
``router.proxy_handler``, so model names, aliases, routing, failover, limits, keys
(``x-api-key``) and metrics are those of chat completions; a request that is not for
these routes pays nothing. ``request.py`` translates the request, ``response.py`` the
answer and the stream. Errors on these routes leave in Anthropic's shape,
``{"type": "error", "error": {"type", "message"}}``, with the router's status.
docs/apis.md has every field.
"""

from __future__ import annotations

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
    jsonlib,
    proxy_handler,
)

from plugins.anthropic_messages.request import estimate_tokens, load, to_chat
from plugins.anthropic_messages.response import ErrorBody, MessageBody, MessageStream, error_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MessagesAdapter(EndpointAdapter):
    def request(self, body: bytes) -> bytes:
        return jsonlib.dumps(to_chat(load(body)))

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

    view.__name__ = getattr(handler, "__name__", "anthropic")
    view.authenticates = getattr(handler, "authenticates", False)  # type: ignore[attr-defined]
    return view


def error_response(exc: RouterError) -> web.Response:
    response = web.Response(body=jsonlib.dumps(error_body(exc.status, exc.message)), status=exc.status,
                            content_type="application/json", headers=exc.headers())
    if exc.close_connection:
        response.force_close()
    return response


async def count_tokens(request: web.Request) -> web.Response:
    payload: dict[str, Any] = load(await request.read())
    count = estimate_tokens(payload)
    return web.Response(body=jsonlib.dumps({"input_tokens": count, "estimate": True}),
                        content_type="application/json")


@hookimpl
def register_routes(register: Callable[[Route], None], router: RouterView) -> None:
    register(Route("POST", "/v1/messages", anthropic_errors(proxy_handler("chat/completions", MessagesAdapter())),
                   "Anthropic Messages, over chat completions"))
    register(Route("POST", "/v1/messages/count_tokens", anthropic_errors(count_tokens),
                   "Anthropic token count (an estimate: about 4 characters a token)"))
