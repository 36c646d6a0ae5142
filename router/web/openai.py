"""The OpenAI endpoints: ``POST /v1/chat/completions``, ``/v1/completions``,
``/v1/embeddings`` (one handler each, built by ``proxy_handler``) and ``/v1/models``.

One request, in order: authenticate (hook) → read and parse the body once → prepare
(hook) → early answer (hook) or ``routing.dispatch.open_upstream`` → transforms (hook) →
``streams.relay`` → observe (hook). Every hook is skipped for free when no plugin
implements it, and without transforms the relay is zero-copy.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time

from aiohttp import web

from router.errors import ModelNotAllowed, ModelNotFound, RequestTimeout, RouterError, UpstreamTimeout, shown
from router.request import ProxyRequest
from router.routing.deadlines import deadline
from router.routing.dispatch import Exchange, open_upstream
from router.state import RouterState
from router.streams.relay import relay_body, relay_stream
from router.streams.transform import TransformChain
from router.identity import Identity
from router.web.middlewares import IDENTITY, STATE, body_too_large, json_response, request_id_of
from router.web.routes import EndpointAdapter, Handler, Route, openai_routes


def proxy_handler(endpoint: str, adapter: EndpointAdapter | None = None) -> Handler:
    """The handler for one OpenAI endpoint; with an ``adapter``, for another API's route
    served through it (``router.EndpointAdapter``)."""

    async def view(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        max_response = int(state.config.server.max_response_mb * 1024 * 1024)
        hooks = state.hooks
        proxy_request = ProxyRequest(endpoint, request_id_of(request), request.headers)
        state.stats.requests += 1
        state.telemetry.started()
        status = 500
        exchange: Exchange | None = None
        routing_timeout = state.config.routing.timeout_s
        admission = state.admission
        admitted = False
        try:
            if hooks.has_authenticate:
                proxy_request.identity = request[IDENTITY] = await hooks.authenticate(request, state.view)
            if admission is not None:
                await admission.acquire()  # full: Overloaded (429), never a wait
                admitted = True
            try:
                # routing.timeout_s bounds the whole request up to the response headers,
                # reading the client's body included.
                async with deadline(routing_timeout):
                    try:  # the common case: the body arrived with the headers, no timer needed
                        body = (await request.read() if request.content.is_eof()
                                else await _read_body(request, state.config.server.body_timeout_s))
                    except web.HTTPRequestEntityTooLarge as exc:
                        raise body_too_large(request, exc) from exc
                    if adapter is not None:
                        proxy_request.body = body
                        if adapter.api is not None and adapter.native_endpoint is not None:
                            proxy_request.native = (adapter.api, adapter.native_endpoint, body)
                        body = adapter.request(body)
                    proxy_request.parse_body(body)
                    if hooks.has_prepare_request:
                        await hooks.prepare_request(proxy_request, state.view)
                    answer = await hooks.answer_request(proxy_request, state.view) if hooks.has_answer_request else None
                    exchange = Exchange(None, answer) if answer is not None else await open_upstream(state, proxy_request)
                    chain = (await _transforms(state, proxy_request, exchange)
                             if hooks.has_transform_response and not exchange.native else None)
                    # A backend that answered in the client's own API: its answer byte for byte.
                    if adapter is not None and not exchange.native:
                        chain = _adapted(chain, adapter, proxy_request, exchange)
                    if exchange.response.content_type != "text/event-stream":
                        response = await relay_body(exchange, proxy_request.request_id, chain, max_response,
                                                  proxy_request.response_headers)
                        status = response.status
                        return response
            except TimeoutError as exc:
                if not proxy_request.body:  # still reading the client's body: the client is slow
                    raise RequestTimeout(
                        f"the request body did not arrive within routing.timeout_s = {routing_timeout:g}s"
                    ) from exc
                raise UpstreamTimeout(f"no response within routing.timeout_s = {routing_timeout:g}s") from exc
            stream_response = await relay_stream(request, exchange, proxy_request.request_id, chain,
                                                 proxy_request.response_headers)
            status = stream_response.status
            return stream_response
        except RouterError as exc:
            status = exc.status
            proxy_request.error_code = exc.code
            raise
        except asyncio.CancelledError:
            status = 499  # the client closed the request (nginx's convention)
            raise
        finally:
            if admitted:
                admission.release()  # type: ignore[union-attr]
            state.stats.finished(status)
            if exchange is not None:
                exchange.finish(None)  # no-op unless something above failed before finishing
                proxy_request.first_byte_at, proxy_request.usage_raw = exchange.first_byte_at, exchange.usage_raw
            elapsed_s = time.monotonic() - proxy_request.started
            state.telemetry.finished(proxy_request, exchange.backend if exchange is not None else None,
                                     status, elapsed_s)
            if hooks.has_observe_response:
                backend = exchange.backend.view if exchange is not None and exchange.backend else None
                await hooks.observe_response(proxy_request, backend, status, elapsed_s)

    view.__name__ = f"proxy_{endpoint.replace('/', '_')}"
    view.authenticates = True  # type: ignore[attr-defined]  # see middlewares.auth_middleware
    return view


async def _read_body(request: web.Request, timeout_s: float) -> bytes:
    """A body still arriving, bounded in time (in size by ``server.max_body_mb``)."""
    try:
        async with deadline(timeout_s):
            return await request.read()
    except TimeoutError as exc:
        raise RequestTimeout(
            f"the request body did not arrive within server.body_timeout_s = {timeout_s:g}s"
        ) from exc


async def _transforms(state: RouterState, request: ProxyRequest, exchange: Exchange) -> TransformChain | None:
    response = exchange.response
    backend = exchange.backend.view if exchange.backend is not None else None
    transforms = await state.hooks.transform_response(request, backend, response.status, response.content_type,
                                                        state.view)
    return TransformChain(transforms) if transforms else None


def _adapted(chain: TransformChain | None, adapter: EndpointAdapter, request: ProxyRequest,
             exchange: Exchange) -> TransformChain | None:
    last = adapter.response(request, exchange.response.status, exchange.response.content_type)
    if last is None:
        return chain
    return TransformChain([*(chain.transforms if chain is not None else ()), last])


def model_list(state: RouterState) -> list[dict[str, object]]:
    out = []
    for model_id, card, backends in state.index.served():
        if card is not None and not card.listed:
            continue
        extra: dict[str, object] = dict(card.extra) if card else {}
        extra["backends"] = [b.name for b in backends]
        if card is None:
            extra["root"] = state.index.resolve(model_id)
        out.append({"id": model_id, "object": "model", "created": card.created if card else 0,
                    "owned_by": card.owned_by if card else "router", **extra})
    return out


def _identity(request: web.Request) -> Identity | None:
    identity = request.get(IDENTITY)
    return identity if isinstance(identity, Identity) else None


def _served_here(state: RouterState, model_id: str) -> bool:
    """Whether ``generation.allowed_models`` lets clients use the model (or what it aliases)."""
    globs = state.config.generation.allowed_models
    return globs == ["*"] or any(fnmatch.fnmatchcase(name, glob) for name in (model_id, state.index.resolve(model_id))
                                  for glob in globs)


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    models = [m for m in model_list(state) if _served_here(state, str(m["id"]))]
    identity = _identity(request)
    if identity is not None:  # only the models this client's key may use
        models = [m for m in models if identity.allows_model(str(m["id"]))]
    return json_response({"object": "list", "data": models})


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model"]
    identity = _identity(request)
    if identity is not None and not identity.allows_model(model_id):
        raise ModelNotAllowed(f"this API key may not use the model {shown(model_id)}", param="model")
    state = request.app[STATE]
    for entry in model_list(state):
        if entry["id"] == model_id and _served_here(state, model_id):
            return json_response(entry)
    raise ModelNotFound(f"The model {shown(model_id)} does not exist", param="model")


def routes() -> list[Route]:
    return [*openai_routes(proxy_handler, list_models),
            Route("GET", "/v1/models/{model:.+}", get_model, "one model")]
