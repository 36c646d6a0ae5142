"""The built-in routing strategies, a plugin like any other (``register_strategies``).

Each picks one backend among the candidates for a request (``router.Strategy``): the
candidates are read-only ``BackendView``s, never empty, and exclude backends already
tried, so failover never lands twice on the same backend.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from router import BackendView, Strategy, hookimpl

if TYPE_CHECKING:
    from router import ProxyRequest, RoutingConfig


class RoundRobin(Strategy):
    """Each model's backends in turn (a counter per model keeps models from interfering)."""

    def __init__(self, routing: RoutingConfig) -> None:
        super().__init__(routing)
        self._counters: dict[str, itertools.count[int]] = {}

    def choose(self, candidates: Sequence[BackendView], request: ProxyRequest) -> BackendView:
        counter = self._counters.get(request.target_model)
        if counter is None:
            counter = self._counters[request.target_model] = itertools.count()
        return candidates[next(counter) % len(candidates)]


class Random(Strategy):
    def choose(self, candidates: Sequence[BackendView], request: ProxyRequest) -> BackendView:
        return random.choice(candidates)


class Weighted(Strategy):
    """Smooth weighted round robin (as nginx): exact proportions, no bursts to one backend."""

    def __init__(self, routing: RoutingConfig) -> None:
        super().__init__(routing)
        self._current: dict[str, float] = {}

    def choose(self, candidates: Sequence[BackendView], request: ProxyRequest) -> BackendView:
        total = 0.0
        best: BackendView | None = None
        best_score = -math.inf
        current = self._current
        for backend in candidates:
            score = current.get(backend.name, 0.0) + backend.weight
            current[backend.name] = score
            total += backend.weight
            if score > best_score:
                best, best_score = backend, score
        assert best is not None
        current[best.name] -= total
        return best


class LeastConnections(Strategy):
    """Fewest in-flight requests (per unit of weight); ties broken at random."""

    def choose(self, candidates: Sequence[BackendView], request: ProxyRequest) -> BackendView:
        best = min(b.in_flight / b.weight for b in candidates)
        return random.choice([b for b in candidates if b.in_flight / b.weight == best])


class LeastLatency(Strategy):
    """Lowest EWMA of time to first byte; backends not measured yet are tried first."""

    def choose(self, candidates: Sequence[BackendView], request: ProxyRequest) -> BackendView:
        unmeasured = [b for b in candidates if b.ewma_ttfb_s is None]
        if unmeasured:
            return random.choice(unmeasured)
        return min(candidates, key=lambda b: b.ewma_ttfb_s or 0.0)


class Sticky(Strategy):
    """Weighted rendezvous (highest-random-weight) hashing on the session key.

    The same key reaches the same backend while it is a candidate; adding or removing a
    backend moves only the sessions that must move, and replicas agree without sharing
    state. Requests without a key fall back to least connections.
    """

    def __init__(self, routing: RoutingConfig) -> None:
        super().__init__(routing)
        self._fallback = LeastConnections(routing)

    def choose(self, candidates: Sequence[BackendView], request: ProxyRequest) -> BackendView:
        key = request.session_key(self.routing.sticky_key)
        if key is None:
            return self._fallback.choose(candidates, request)
        return max(candidates, key=lambda b: rendezvous_score(key, b.name, b.weight))


def rendezvous_score(key: str, node: str, weight: float = 1.0) -> float:
    digest = hashlib.blake2b(f"{key}\x00{node}".encode(), digest_size=8).digest()
    # Map the hash into (0, 1) and weight it as in Resendiz et al.'s weighted HRW.
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return -weight / math.log(unit)


BUILTIN: dict[str, type[Strategy]] = {
    "round_robin": RoundRobin,
    "random": Random,
    "weighted": Weighted,
    "least_connections": LeastConnections,
    "least_latency": LeastLatency,
    "sticky": Sticky,
}


@hookimpl
def register_strategies(register: Callable[[str, type[Strategy]], None]) -> None:
    for name, cls in BUILTIN.items():
        register(name, cls)
