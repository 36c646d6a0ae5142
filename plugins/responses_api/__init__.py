"""OpenAI's Responses API in front of every backend, a built-in plugin:

    POST   /v1/responses        Responses request → chat completions → a Response object
                                (streamed: response.created ... response.completed)
    GET    /v1/responses/{id}   a stored response (``store: true``, the default)
    DELETE /v1/responses/{id}   forget it

``POST`` is an ``EndpointAdapter`` over ``/v1/chat/completions`` served by
``router.proxy_handler``: model names, aliases, routing, failover, limits, keys and
metrics are those of chat completions, and a chat request pays nothing for this plugin.
``request.py`` translates the request (``previous_response_id`` continues a stored
conversation), ``response.py`` the answer and the stream, ``store.py`` keeps responses
(``responses:`` in the config: an SQLite file, a TTL, a count). Errors leave in OpenAI's
envelope, as the Responses API's do. docs/apis.md has every field.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from router import (
    EndpointAdapter,
    NotFound,
    ProxyRequest,
    ResponseTransform,
    Route,
    RouterView,
    hookimpl,
    json_object,
    jsonlib,
    proxy_handler,
)

from plugins.responses_api.request import Pending, to_chat
from plugins.responses_api.response import ResponseBody, ResponseStream
from plugins.responses_api.store import ResponseStore

#: One store per router (keyed by its view), opened at startup.
_STORES: dict[int, ResponseStore] = {}
#: The request being served, from ``request`` to ``response`` (both run in its task).
_PENDING: contextvars.ContextVar[Pending | None] = contextvars.ContextVar("responses_pending", default=None)


class ResponsesAdapter(EndpointAdapter):
    api = "responses"  # a backend declaring it in ``apis`` gets the request as sent
    native_endpoint = "responses"

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    def request(self, body: bytes) -> bytes:
        chat, pending = to_chat(json_object(body), self.store)
        _PENDING.set(pending)
        return jsonlib.dumps(chat)

    def response(self, request: ProxyRequest, status: int, content_type: str) -> ResponseTransform | None:
        pending = _PENDING.get()
        if status != 200 or pending is None:
            return None  # errors leave in OpenAI's envelope, as the Responses API's do
        if content_type == "text/event-stream":
            return ResponseStream(pending, self.store)
        return ResponseBody(pending, self.store)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=jsonlib.dumps(data), status=status, content_type="application/json")


def stored_routes(store: ResponseStore) -> list[Route]:
    async def get(request: web.Request) -> web.Response:
        entry = store.get(request.match_info["id"])
        if entry is None:
            raise NotFound(f"no stored response {request.match_info['id']!r} (never stored, store: false, "
                           "deleted or expired)", param="id")
        return _json(entry.response)

    async def delete(request: web.Request) -> web.Response:
        response_id = request.match_info["id"]
        if not store.delete(response_id):
            raise NotFound(f"no stored response {response_id!r}", param="id")
        return _json({"id": response_id, "object": "response", "deleted": True})

    return [Route("GET", "/v1/responses/{id}", get, "a stored response"),
            Route("DELETE", "/v1/responses/{id}", delete, "delete a stored response")]


@hookimpl
def register_routes(register: Callable[[Route], None], router: RouterView) -> None:
    config = router.config
    path = config.responses.store
    if path is not None and not Path(path).is_absolute():
        path = str(config.base_dir / path)
    store = _STORES[id(router)] = ResponseStore(path, config.responses.ttl_s, config.responses.max_responses)
    register(Route("POST", "/v1/responses", proxy_handler("chat/completions", ResponsesAdapter(store)),
                   "OpenAI Responses, over chat completions"))
    for route in stored_routes(store):
        register(route)


@hookimpl
async def startup(state: RouterView) -> None:
    store = _STORES.get(id(state))
    if store is not None:
        await store.open()


@hookimpl
async def shutdown(state: RouterView) -> None:
    store = _STORES.pop(id(state), None)
    if store is not None:
        await store.close()
