"""The typed facade over ``pm.hook``: the only code in the router that calls a hook.

Every hook may be implemented sync or async; the facade awaits what needs awaiting
(datasette's ``await_me_maybe``), since pluggy is synchronous. Per-request hooks are
skipped for free when no plugin implements them (``has_*`` flags, computed once). Hooks
that take the first answer (``authenticate``, ``answer_request``) walk the
implementations in pluggy's call order and stop at the first non-None result, awaiting
each before deciding, so an async implementation that returns None does not win.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

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

T = TypeVar("T")


async def await_maybe(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class Hooks:
    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        hook = pm.hook
        self.has_authenticate = bool(hook.authenticate.get_hookimpls())
        self.has_prepare_request = bool(hook.prepare_request.get_hookimpls())
        self.has_answer_request = bool(hook.answer_request.get_hookimpls())
        self.has_filter_backends = bool(hook.filter_backends.get_hookimpls())
        self.has_transform_response = bool(hook.transform_response.get_hookimpls())
        self.has_observe_response = bool(hook.observe_response.get_hookimpls())

    # -- registries -----------------------------------------------------------------------

    def providers(self) -> dict[str, type[Provider]]:
        return _named(self.pm.hook.register_providers, "provider")

    def strategies(self) -> dict[str, type[Strategy]]:
        return _named(self.pm.hook.register_strategies, "strategy")

    def workers(self) -> dict[str, Command]:
        return _by_name(self.pm.hook.register_workers, "worker")

    def commands(self) -> dict[str, Command]:
        return _by_name(self.pm.hook.register_commands, "command")

    def routes(self, router: RouterView) -> list[Route]:
        found: list[Route] = []
        self.pm.hook.register_routes(register=found.append, router=router)
        return found

    # -- lifecycle ------------------------------------------------------------------------

    async def startup(self, state: RouterView) -> None:
        for result in self.pm.hook.startup(state=state):
            await await_maybe(result)

    async def shutdown(self, state: RouterView) -> None:
        for result in self.pm.hook.shutdown(state=state):
            await await_maybe(result)

    # -- per request ----------------------------------------------------------------------

    async def authenticate(self, request: web.Request, router: RouterView) -> Any:
        return await self._first(self.pm.hook.authenticate, request=request, router=router)

    async def prepare_request(self, request: ProxyRequest, router: RouterView) -> None:
        for result in self.pm.hook.prepare_request(request=request, router=router):
            await await_maybe(result)

    async def answer_request(self, request: ProxyRequest, router: RouterView) -> UpstreamResponse | None:
        answer: UpstreamResponse | None = await self._first(self.pm.hook.answer_request, request=request,
                                                            router=router)
        return answer

    async def filter_backends(
        self, request: ProxyRequest, backends: Sequence[BackendView]
    ) -> Sequence[BackendView]:
        for result in self.pm.hook.filter_backends(request=request, backends=backends):
            narrowed = await await_maybe(result)
            if narrowed is not None:
                keep = {id(b) for b in narrowed}
                backends = [b for b in backends if id(b) in keep]
        return backends

    async def transform_response(
        self, request: ProxyRequest, backend: BackendView | None, status: int, content_type: str,
        router: RouterView,
    ) -> list[ResponseTransform]:
        # pluggy calls the newest registration first; transforms apply in registration
        # order, so built-in plugins (registered first) transform first.
        results = self.pm.hook.transform_response(
            request=request, backend=backend, status=status, content_type=content_type, router=router
        )
        transforms = [await await_maybe(r) for r in reversed(results)]
        return [t for t in transforms if t is not None]

    async def observe_response(
        self, request: ProxyRequest, backend: BackendView | None, status: int, elapsed_s: float
    ) -> None:
        for result in self.pm.hook.observe_response(
            request=request, backend=backend, status=status, elapsed_s=elapsed_s
        ):
            await await_maybe(result)

    @staticmethod
    async def _first(caller: pluggy.HookCaller, **kwargs: Any) -> Any:
        for impl in reversed(caller.get_hookimpls()):  # pluggy's own call order
            value = await await_maybe(impl.function(*(kwargs[name] for name in impl.argnames)))
            if value is not None:
                return value
        return None


def _named(hook: Callable[..., object], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def register(name: str, cls: Any) -> None:
        if name in found:
            raise ValueError(f"{kind} {name!r} is registered twice")
        found[name] = cls

    hook(register=register)
    return found


def _by_name(hook: Callable[..., object], kind: str) -> dict[str, Command]:
    found: dict[str, Command] = {}

    def register(command: Command) -> None:
        if command.name in found:
            raise ValueError(f"{kind} {command.name!r} is registered twice")
        found[command.name] = command

    hook(register=register)
    return found
