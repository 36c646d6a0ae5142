"""Each built-in strategy on its own, over real Backend objects (not started)."""

from __future__ import annotations

import collections
import json

import pytest

from plugins.openai_compatible import OpenAICompatibleProvider
from plugins.strategies import (
    LeastConnections,
    LeastLatency,
    Random,
    RoundRobin,
    Sticky,
    Weighted,
    rendezvous_score,
)
from router.config.schema import BackendConfig, CircuitBreakerConfig, RoutingConfig
from router.request import ProxyRequest
from router.routing.backend import Backend, BackendView

ROUTING = RoutingConfig()


def views(*specs: tuple[str, float]) -> list[BackendView]:
    out = []
    for name, weight in specs:
        cfg = BackendConfig(name=name, provider="openai_compatible", base_url="http://127.0.0.1:9", weight=weight)
        out.append(Backend(cfg, OpenAICompatibleProvider(cfg), CircuitBreakerConfig()).view)
    return out


def request(model: str = "m", user: str | None = None, headers: dict[str, str] | None = None) -> ProxyRequest:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **({"user": user} if user else {})}
    return ProxyRequest.parse("chat/completions", json.dumps(body).encode(), "rid", headers or {})


def test_round_robin_is_even_and_per_model():
    backends = views(("a", 1), ("b", 1), ("c", 1))
    rr = RoundRobin(ROUTING)
    picks = [rr.choose(backends, request("m")).name for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]
    assert rr.choose(backends, request("other")).name == "a"  # its own counter


def test_weighted_gives_exact_shares_without_bursts():
    backends = views(("a", 5), ("b", 1), ("c", 1))
    w = Weighted(ROUTING)
    picks = [w.choose(backends, request()).name for _ in range(70)]
    assert collections.Counter(picks) == {"a": 50, "b": 10, "c": 10}
    assert "aaaaaa" not in "".join(picks)  # smooth: never six in a row for 5/7


def test_random_reaches_every_candidate():
    backends = views(("a", 1), ("b", 1))
    assert {Random(ROUTING).choose(backends, request()).name for _ in range(200)} == {"a", "b"}


def test_least_connections_prefers_the_idlest_per_weight():
    a, b, c = views(("a", 1), ("b", 2), ("c", 1))
    a._backend.in_flight, b._backend.in_flight, c._backend.in_flight = 2, 3, 4
    assert LeastConnections(ROUTING).choose([a, b, c], request()).name == "b"  # 3/2 < 2/1


def test_least_latency_tries_unmeasured_first_then_the_fastest():
    a, b = views(("a", 1), ("b", 1))
    a._backend.ewma_ttfb_s = 0.2
    assert LeastLatency(ROUTING).choose([a, b], request()).name == "b"
    b._backend.ewma_ttfb_s = 0.5
    assert LeastLatency(ROUTING).choose([a, b], request()).name == "a"


@pytest.mark.parametrize("source,req", [
    ("auto", request(user="u1")),
    ("auto", request(headers={"X-Session-ID": "s1"})),
    ("header:X-Tenant", request(headers={"X-Tenant": "t1"})),
])
def test_sticky_keeps_a_key_on_one_backend_and_moves_only_what_must(source, req):
    sticky = Sticky(RoutingConfig(sticky_key=source))
    backends = views(("a", 1), ("b", 1), ("c", 1))
    first = sticky.choose(backends, req).name
    assert all(sticky.choose(backends, req).name == first for _ in range(10))
    others = [b for b in backends if b.name != first]
    moved = sticky.choose(others, req).name
    assert moved != first
    # Removing a backend the key was not on changes nothing.
    kept = [b for b in backends if b.name != next(n for n in "abc" if n not in (first, moved))]
    assert sticky.choose(kept, req).name == first


def test_rendezvous_weights_shift_share():
    keys = [f"k{i}" for i in range(2000)]
    heavy = sum(rendezvous_score(k, "a", 3.0) > rendezvous_score(k, "b", 1.0) for k in keys)
    assert 0.7 < heavy / len(keys) < 0.8  # weight 3 of 4
