"""``RouterView``: the read-only view of the whole router that hooks receive.

It reads the config, the backends (as ``BackendView``s, see ``router.routing.backend``),
the served models and the counters; it cannot change anything (backends are added and
removed through the admin API, requests through their own hooks). It is built once and
reads the live objects, so holding one is cheap and always current.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from router.config.schema import Config
from router.provider import ModelCard
from router.routing.backend import Backend, BackendView
from router.routing.backends import BackendSet
from router.routing.index import ModelIndex
from router.stats import Stats


class _BackendViews(Mapping[str, BackendView]):
    """The live backends by name, as views."""

    __slots__ = ("_backends",)

    def __init__(self, backends: Mapping[str, Backend]) -> None:
        self._backends = backends

    def __getitem__(self, name: str) -> BackendView:
        return self._backends[name].view

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)


class RouterView:
    __slots__ = ("_config", "_index", "_backends", "_stats", "backends")

    def __init__(self, config: Config, index: ModelIndex, backends: BackendSet, stats: Stats) -> None:
        self._config = config
        self._index = index
        self._backends = backends
        self._stats = stats
        #: The live backends by name (a read-only mapping of ``BackendView``).
        self.backends: Mapping[str, BackendView] = _BackendViews(backends.backends)

    @property
    def config(self) -> Config:
        """The router's config, as loaded (treat it as read-only)."""
        return self._config

    def resolve(self, model: str) -> str:
        """A client-facing model name after the global ``aliases:``."""
        return self._index.resolve(model)

    def models(self) -> list[tuple[str, ModelCard | None, list[str]]]:
        """Every served model: (id, its card or None for an alias, backend names)."""
        return [(m, card, [b.name for b in backends]) for m, card, backends in self._index.served()]

    def ready(self) -> bool:
        return self._backends.ready()

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` shows."""
        stats = self._stats
        return {
            "ready": self._backends.ready(),
            "strategy": self._config.routing.strategy,
            "requests": stats.requests,
            "retries": stats.retries,
            "continuations": stats.continuations,
            "hedges": stats.hedges,
            "errors": stats.errors,
            "backends": [b.status() for b in self._backends.backends.values()],
            "aliases": self._index.aliases,
        }
