"""The hooks a plugin can implement. Each is documented in docs/plugins.md too.

Implementations may take any subset of a hook's arguments (pluggy matches by name), so a
hook can gain arguments without breaking plugins. Implementations may return a value or an
awaitable; the router awaits what needs awaiting (pluggy itself is synchronous).

Per-request hooks run once per request, never per streamed token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from router.backend import Backend
    from router.provider import Provider
    from router.proxy import ProxyRequest
    from router.state import RouterState
    from router.strategies import Strategy

PROJECT = "router"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


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
def startup(state: RouterState) -> Any:
    """Called once after backends have started, before the first request is served.

    :param state: the router's state (config, backends); may return an awaitable.
    """


@hookspec
def shutdown(state: RouterState) -> Any:
    """Called once when the router stops, before backends are closed.

    :param state: the router's state; may return an awaitable.
    """


@hookspec
def prepare_request(request: ProxyRequest) -> Any:
    """Inspect or change a request before a backend is chosen.

    Change the body through ``request.update_payload(...)`` so the router knows to
    re-serialize it. Raise a ``router.errors.RouterError`` to reject the request.

    :param request: the parsed client request; may return an awaitable.
    """


@hookspec
def filter_backends(request: ProxyRequest, backends: list[Backend]) -> list[Backend] | None:
    """Narrow the candidate backends for a request (return None to leave them as they are).

    :param request: the client request.
    :param backends: the healthy backends that serve the request's model.
    """


@hookspec
def observe_response(
    request: ProxyRequest, backend: Backend | None, status: int, elapsed_s: float
) -> None:
    """Called once when a request has finished (stream included), for metrics and logs.

    :param request: the client request.
    :param backend: the backend that answered last, or None if none was reached.
    :param status: the HTTP status sent to the client.
    :param elapsed_s: seconds from receiving the request to the end of the response.
    """
