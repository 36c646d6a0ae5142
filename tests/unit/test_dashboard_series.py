"""The dashboard's series (plugins/dashboard/series.py): percentiles, the latency ring's
window and the rates between samples of the router's counters."""

from __future__ import annotations

from plugins.dashboard.series import MAX_SAMPLES, WINDOW_S, History, Latencies, percentile


def test_percentile_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([0.3], 95) == 0.3
    assert percentile([], 50) is None


def test_latencies_keep_the_window_and_a_bounded_ring() -> None:
    ring = Latencies()
    ring.add(9.0, now=0.0)  # older than the window at t=1000
    for i in range(1, 21):
        ring.add(i / 1000, now=1000.0)
    summary = ring.summary(now=1000.0 + WINDOW_S - 1)
    assert summary == {"samples": 20, "p50_ms": 10.0, "p95_ms": 19.0}
    for _ in range(MAX_SAMPLES + 10):
        ring.add(0.001, now=2000.0)
    assert len(ring.samples) == MAX_SAMPLES


def status(requests: int, errors: int, served: int, failed: int) -> dict[str, object]:
    return {"requests": requests, "errors": errors,
            "backends": [{"name": "a", "served": served, "failed": failed}]}


def test_history_rates_are_differences_between_samples() -> None:
    history = History()
    history.sample(status(0, 0, 0, 0), now=100.0)
    history.sample(status(10, 1, 9, 1), now=101.0)
    history.sample(status(30, 1, 28, 1), now=103.0)
    series = history.series()
    assert series == {"t": [101.0, 103.0], "requests": [10.0, 10.0], "errors": [1.0, 0.0]}
    assert history.backend_rate("a") == round(29 / 3, 3)
    assert history.backend_rate("gone") is None
    for i in range(WINDOW_S + 50):
        history.sample(status(30, 1, 28, 1), now=200.0 + i)
    assert len(history.samples) == WINDOW_S + 1
