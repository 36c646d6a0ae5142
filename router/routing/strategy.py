"""The strategy interface: pick one backend among the candidates for a request.

Strategies are plugins (``register_strategies``); the built-in ones live in
``plugins.strategies``. ``choose`` is called once per attempt with a non-empty candidate
list that excludes backends already tried, so failover never lands twice on one backend.
Candidates are read-only ``BackendView``s: a strategy reads load and latency, it never
changes a backend.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.config.schema import RoutingConfig
    from router.request import ProxyRequest
    from router.routing.backend import BackendView


class Strategy(abc.ABC):
    def __init__(self, routing: RoutingConfig) -> None:
        self.routing = routing

    @abc.abstractmethod
    def choose(self, candidates: Sequence[BackendView], request: ProxyRequest) -> BackendView:
        """Return one of ``candidates`` (never empty)."""
