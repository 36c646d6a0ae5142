"""Prometheus metrics at ``GET /metrics``, built at scrape time from the router's own counters.

Nothing is recorded per request beyond the counters the router keeps anyway (requests,
retries, errors, responses by status, per-backend served/failed/in-flight/latency EWMA),
so metrics cost the hot path nothing. prometheus-client formats them; it comes with the
``metrics`` extra (``pip install '.[metrics]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web

from router.errors import NotFound
from router.state import RouterState
from router.web.middlewares import STATE
from router.web.routes import Route

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class RouterCollector:
    def __init__(self, state: RouterState) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.state.stats
        yield CounterMetricFamily("router_requests", "Client requests received.", value=stats.requests)
        yield CounterMetricFamily(
            "router_retries", "Extra attempts made on another backend (failover).", value=stats.retries
        )
        yield CounterMetricFamily(
            "router_continuations", "Streams broken mid-answer and continued on another backend.",
            value=stats.continuations,
        )
        yield CounterMetricFamily(
            "router_hedges", "Second attempts started because the first had no first token in time.",
            value=stats.hedges,
        )
        responses = CounterMetricFamily(
            "router_responses", "Client responses by HTTP status.", labels=["code"]
        )
        for code, count in sorted(stats.responses_by_status.items()):
            responses.add_metric([str(code)], count)
        yield responses

        per_backend: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "served": CounterMetricFamily(
                "router_backend_requests", "Requests a backend answered successfully.", labels=["backend"]
            ),
            "failed": CounterMetricFamily(
                "router_backend_failures", "Requests a backend failed (errors, timeouts, 5xx).", labels=["backend"]
            ),
            "in_flight": GaugeMetricFamily("router_backend_in_flight", "Requests in flight.", labels=["backend"]),
            "queued": GaugeMetricFamily(
                "router_backend_queued", "Requests waiting for a max_concurrent slot.", labels=["backend"]
            ),
            "healthy": GaugeMetricFamily(
                "router_backend_healthy", "1 if the last health check passed.", labels=["backend"]
            ),
            "circuit_open": GaugeMetricFamily(
                "router_backend_circuit_open", "1 if the circuit is open or half-open.", labels=["backend"]
            ),
            "models": GaugeMetricFamily(
                "router_backend_models", "Models a backend serves now (loaded or listed).", labels=["backend"]
            ),
            "latency": GaugeMetricFamily(
                "router_backend_latency_ewma_seconds", "EWMA of time to first byte.", labels=["backend"]
            ),
        }
        for backend in self.state.backends.backends.values():
            label = [backend.name]
            per_backend["served"].add_metric(label, backend.served)
            per_backend["failed"].add_metric(label, backend.failed)
            per_backend["in_flight"].add_metric(label, backend.in_flight)
            per_backend["queued"].add_metric(label, backend.limit.waiting if backend.limit else 0)
            per_backend["healthy"].add_metric(label, 1.0 if backend.healthy else 0.0)
            per_backend["circuit_open"].add_metric(label, 0.0 if backend.circuit.state.value == "closed" else 1.0)
            per_backend["models"].add_metric(label, len(backend.models))
            if backend.ewma_ttfb_s is not None:
                per_backend["latency"].add_metric(label, backend.ewma_ttfb_s)
        yield from per_backend.values()


def render(state: RouterState) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(state))
    requests = state.telemetry.metrics
    return generate_latest(registry) + (generate_latest(requests.registry) if requests is not None else b"")


async def metrics_view(request: web.Request) -> web.Response:
    if not available():
        raise NotFound("metrics need prometheus-client: pip install '.[metrics]'")
    return web.Response(body=render(request.app[STATE]), headers={"Content-Type": CONTENT_TYPE})


def routes() -> list[Route]:
    return [Route("GET", "/metrics", metrics_view, "Prometheus metrics")]
