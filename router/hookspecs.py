"""The hooks a plugin can implement. Each is documented in docs/plugins.md too.

Implementations may take any subset of a hook's arguments (pluggy matches by name), so a
hook can gain arguments without breaking plugins. Every hook may be a plain function or
a coroutine function; ``router.hooks.Hooks`` (the only caller of ``pm.hook``) awaits
what needs awaiting, since pluggy itself is synchronous.

Per-request hooks run once per request, never per streamed token, and are skipped
entirely when no plugin implements them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from router.commands import Command
    from router.provider import Provider, UpstreamResponse
    from router.request import ProxyRequest
    from router.routing.strategy import Strategy
    from router.streams.transform import ResponseTransform
    from router.routing.backend import BackendView
    from router.view import RouterView
    from router.web.routes import Route

PROJECT = "router"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- registries: called once, at start-up ---------------------------------------------------


@hookspec
def register_providers(register: Callable[[str, type[Provider]], None]) -> None:
    """Register provider classes: ``register("name", ProviderClass)``.

    :param register: call once per provider; the name is what ``provider:`` in a backend's
        config refers to. Registering a name twice is an error.
    """


@hookspec
def register_strategies(register: Callable[[str, type[Strategy]], None]) -> None:
    """Register routing strategies: ``register("name", StrategyClass)``.

    :param register: call once per strategy; the name is what ``routing.strategy`` (or a
        per-model override) refers to.
    """


@hookspec
def register_workers(register: Callable[[Command], None]) -> None:
    """Register a local engine's standalone worker: ``register(Command(name, ...))``, run
    as ``python -m router worker --provider NAME <its flags>``.

    :param register: call once per engine; ``Command.name`` is the ``--provider`` value.
    """


@hookspec
def register_commands(register: Callable[[Command], None]) -> None:
    """Register CLI subcommands: ``register(Command(name, help, run, add_arguments))``,
    run as ``python -m router NAME <its flags>``.

    :param register: call once per command; a name taken by the core or another plugin
        is an error.
    """


@hookspec
def register_routes(register: Callable[[Route], None], router: RouterView) -> None:
    """Register HTTP routes on the router's app: ``register(Route("GET", "/api/x", handler))``.

    Handlers are aiohttp handlers; a ``RouterError`` they raise leaves in OpenAI's
    envelope like any other. A route the core already serves cannot be replaced.

    :param register: call once per route.
    :param router: the read-only view of the router, for handlers to read.
    """


# -- lifecycle --------------------------------------------------------------------------------


@hookspec
def startup(state: RouterView) -> Any:
    """Called once after backends have started, before the first request is served.

    :param state: the read-only view of the router (config, backends, models).
    """


@hookspec
def shutdown(state: RouterView) -> Any:
    """Called once when the router stops, before backends are closed.

    :param state: the read-only view of the router.
    """


# -- per request, in the order they run ------------------------------------------------------


@hookspec
def authenticate(request: web.Request, router: RouterView) -> Any:
    """Say who sent a request, before anything else is done with it.

    Runs for every request except CORS preflights (``OPTIONS``). Return an identity (any
    object; the first one returned wins and becomes ``ProxyRequest.identity``), None to
    leave the decision to other plugins (a request no plugin identifies is anonymous),
    or raise a ``RouterError`` (e.g. ``AuthenticationFailed``, 401) to refuse it.

    :param request: the aiohttp request (headers, path, method; the body is not read yet).
    :param router: the read-only view of the router.
    """


@hookspec
def prepare_request(request: ProxyRequest, router: RouterView) -> Any:
    """Inspect or change a request before a backend is chosen.

    Change the body through ``request.update_payload(...)`` so the router knows to
    re-serialize it. Raise a ``RouterError`` to reject the request. What later hooks of
    the same plugin need to know goes in ``request.context``.

    :param request: the parsed client request.
    :param router: the read-only view of the router (its config, backends, models).
    """


@hookspec
def answer_request(request: ProxyRequest, router: RouterView) -> UpstreamResponse | None:
    """Answer a request without calling any backend (a cache hit), or return None.

    The first response returned is relayed to the client like a backend's (streams
    included, transforms applied); ``observe_response`` sees it with ``backend=None``.

    :param request: the parsed client request, after ``prepare_request``.
    :param router: the read-only view of the router.
    """


@hookspec
def filter_backends(request: ProxyRequest, backends: Sequence[BackendView]) -> Sequence[BackendView] | None:
    """Narrow the candidate backends for a request (return None to leave them as they are).

    :param request: the client request.
    :param backends: the available backends that serve the request's model.
    """


@hookspec
def transform_response(
    request: ProxyRequest, backend: BackendView | None, status: int, content_type: str, router: RouterView
) -> ResponseTransform | None:
    """Return a ``ResponseTransform`` to change this response on its way to the client,
    or None. Called once per request when the response headers are in.

    :param request: the client request.
    :param backend: the backend that answered (None for an early answer).
    :param status: the response's HTTP status.
    :param content_type: the response's content type (``text/event-stream`` for streams).
    :param router: the read-only view of the router.
    """


@hookspec
def observe_response(
    request: ProxyRequest, backend: BackendView | None, status: int, elapsed_s: float
) -> Any:
    """Called once when a request has finished (stream included), for metrics and logs.

    Every request to an OpenAI endpoint is observed, rejected ones (400, 401, 413) too.

    :param request: the client request (``model`` is "" if the body could not be parsed).
    :param backend: the backend that answered last, or None if none was reached.
    :param status: the HTTP status sent to the client (499: the client went away).
    :param elapsed_s: seconds from receiving the request to the end of the response.
    """
