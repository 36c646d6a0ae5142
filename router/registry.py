"""What plugins registered, by the names config.yaml uses: providers and strategies.

Collected once per process (``Registry.collect``) and handed to the config loader (to
check ``provider:`` and ``routing.strategy`` with file and line) and to the router.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pluggy

from router.hooks import Hooks
from router.provider import Provider
from router.routing.strategy import Strategy


@dataclasses.dataclass(frozen=True)
class Registry:
    providers: Mapping[str, type[Provider]]
    strategies: Mapping[str, type[Strategy]]

    @classmethod
    def collect(cls, hooks: Hooks | pluggy.PluginManager) -> Registry:
        if isinstance(hooks, pluggy.PluginManager):
            hooks = Hooks(hooks)
        return cls(providers=hooks.providers(), strategies=hooks.strategies())
