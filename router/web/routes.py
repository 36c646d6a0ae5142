"""Routes as data: one table per app, so the router, the local-worker server and the fake
upstream of ``router.testing`` serve the same OpenAI endpoints from one list, plugins add
routes the same way (``register_routes``), and an OpenAPI document can be read off it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from router.request import ProxyRequest
    from router.streams.transform import ResponseTransform

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EndpointAdapter:
    """Another API's shape over an OpenAI endpoint, for a plugin's compatibility routes:
    ``router.proxy_handler(endpoint, adapter)`` serves it through the same machinery as
    ``/v1/*`` (hooks, routing, failover, limits), with the adapter's two ends added.
    Override what you need; the defaults change nothing.

    ``api`` names the API (``messages``, ``responses``) and ``native_endpoint`` its path
    below ``/v1``: a backend declaring that API in its ``apis`` gets the client's own body
    there, untouched, and its answer goes back byte for byte (no translation either way)."""

    api: str | None = None
    native_endpoint: str | None = None

    def request(self, body: bytes) -> bytes:
        """The client's body → the OpenAI body for the endpoint (raise ``InvalidRequest``
        saying what to fix)."""
        return body

    def response(self, request: ProxyRequest, status: int, content_type: str) -> ResponseTransform | None:
        """A transform applied after every plugin's, to reshape the OpenAI answer."""
        return None

#: The OpenAI endpoints that take a JSON body and may stream, as paths below ``/v1``.
OPENAI_ENDPOINTS: tuple[str, ...] = ("chat/completions", "completions", "embeddings")


@dataclasses.dataclass(frozen=True)
class Route:
    """One HTTP route: ``method`` and ``path`` as aiohttp takes them (``{name}`` and
    ``{name:regex}`` placeholders), the handler, and a one-line summary for docs."""

    method: str
    path: str
    handler: Handler
    summary: str = ""


def openai_routes(endpoint_handler: Callable[[str], Handler], list_models: Handler) -> list[Route]:
    """The OpenAI endpoints: ``POST /v1/<endpoint>`` for each of ``OPENAI_ENDPOINTS``
    (``endpoint_handler(endpoint)`` builds each handler) and ``GET /v1/models``."""
    routes = [Route("POST", f"/v1/{endpoint}", endpoint_handler(endpoint), f"OpenAI {endpoint}")
              for endpoint in OPENAI_ENDPOINTS]
    routes.append(Route("GET", "/v1/models", list_models, "the models served"))
    return routes


def add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)


#: The app's route table, kept on the app for whoever documents it (OpenAPI, /ui).
ROUTES: web.AppKey[list[Route]] = web.AppKey("routes", list)
