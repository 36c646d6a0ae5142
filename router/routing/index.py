"""The model index: client-facing model name -> the backends that serve it.

Rebuilt whenever discovery or the admin API changes a backend's models, so routing a
request is one dict lookup. It also holds the global ``aliases:`` and the strategy for
each model (``routing.strategy``, or the first matching ``routing.model_strategies``
glob), cached per model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping

from router.config.schema import Config
from router.provider import ModelCard
from router.routing.backend import Backend
from router.routing.strategy import Strategy


class ModelIndex:
    def __init__(self, config: Config, strategies: Mapping[str, type[Strategy]]) -> None:
        self.aliases: dict[str, str] = dict(config.aliases)
        self.by_model: dict[str, list[Backend]] = {}
        self._strategy_cache: dict[str, Strategy] = {}
        self.set_strategies(config, strategies)

    def set_strategies(self, config: Config, strategies: Mapping[str, type[Strategy]]) -> None:
        """(Re)build the strategies from ``routing`` (at start, and when a setting changes live)."""
        self.default_strategy: Strategy = strategies[config.routing.strategy](config.routing)
        self.model_strategies: list[tuple[str, Strategy]] = [
            (pattern, strategies[name](config.routing))
            for pattern, name in config.routing.model_strategies.items()
        ]
        self._strategy_cache.clear()

    def rebuild(self, backends: Iterable[Backend]) -> None:
        by_model: dict[str, list[Backend]] = {}
        for backend in backends:
            for model in backend.models:
                by_model.setdefault(model, []).append(backend)
        self.by_model = by_model
        self._strategy_cache.clear()

    def get(self, model: str) -> list[Backend] | None:
        return self.by_model.get(model)

    def __contains__(self, model: str) -> bool:
        return model in self.by_model

    def resolve(self, model: str) -> str:
        """A client-facing model name after global aliases."""
        return self.aliases.get(model, model)

    def served(self) -> Iterator[tuple[str, ModelCard | None, list[Backend]]]:
        """Every model served, sorted, then each alias whose target is served."""
        for model_id, backends in sorted(self.by_model.items()):
            yield model_id, backends[0].models.get(model_id), backends
        for alias, target in sorted(self.aliases.items()):
            if alias not in self.by_model and target in self.by_model:
                yield alias, None, self.by_model[target]

    def strategy_for(self, model: str) -> Strategy:
        cached = self._strategy_cache.get(model)
        if cached is not None:
            return cached
        strategy = self.default_strategy
        for pattern, candidate in self.model_strategies:
            if fnmatch.fnmatchcase(model, pattern):
                strategy = candidate
                break
        self._strategy_cache[model] = strategy
        return strategy
