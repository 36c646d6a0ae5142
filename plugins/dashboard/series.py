"""What the Overview page charts and the router does not keep: recent latencies per
backend (for p50/p95) and a per-second history of requests and errors.

- ``Latencies``: a bounded ring of ``(time, seconds)`` per backend, filled by the
  ``observe_response`` hook (one append per request: no parsing, no copy of the body).
- ``History``: one sample a second of the router's own counters (``/status``: requests,
  errors, and each backend's served and failed), kept for ``WINDOW_S``; a sampler task
  reads them, so it costs requests nothing. Rates are the differences between samples.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any

#: How far back the Overview looks (seconds): the chart and the latency percentiles.
WINDOW_S = 300
#: Latencies kept per backend at most (the oldest go first).
MAX_SAMPLES = 4096
#: Requests per second are averaged over this many seconds.
RATE_WINDOW_S = 60


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Latencies:
    """Recent request durations of one backend."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=MAX_SAMPLES)

    def add(self, elapsed_s: float, now: float) -> None:
        self.samples.append((now, elapsed_s))

    def recent(self, now: float, window_s: float = WINDOW_S) -> list[float]:
        since = now - window_s
        return [s for t, s in self.samples if t >= since]

    def summary(self, now: float) -> dict[str, Any]:
        values = self.recent(now)
        p50, p95 = percentile(values, 50), percentile(values, 95)
        return {"samples": len(values),
                "p50_ms": None if p50 is None else round(p50 * 1000, 3),
                "p95_ms": None if p95 is None else round(p95 * 1000, 3)}


class History:
    """Samples of the router's counters, one a second."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        #: (wall time, requests, errors, {backend: served + failed}, {backend: failed})
        self.samples: collections.deque[tuple[float, int, int, dict[str, int], dict[str, int]]] = (
            collections.deque(maxlen=WINDOW_S + 1))

    def sample(self, status: dict[str, Any], now: float | None = None) -> None:
        backends = status.get("backends", [])
        self.samples.append((
            time.time() if now is None else now,
            int(status.get("requests", 0)),
            int(status.get("errors", 0)),
            {b["name"]: int(b.get("served", 0)) + int(b.get("failed", 0)) for b in backends},
            {b["name"]: int(b.get("failed", 0)) for b in backends},
        ))

    def series(self) -> dict[str, list[float]]:
        """Per-second rates between consecutive samples: time, requests/s, errors/s."""
        times: list[float] = []
        requests: list[float] = []
        errors: list[float] = []
        previous = None
        for sample in self.samples:
            if previous is not None:
                dt = sample[0] - previous[0]
                if dt > 0:
                    times.append(round(sample[0], 3))
                    requests.append(round(max(0, sample[1] - previous[1]) / dt, 3))
                    errors.append(round(max(0, sample[2] - previous[2]) / dt, 3))
            previous = sample
        return {"t": times, "requests": requests, "errors": errors}

    def backend_rate(self, name: str, window_s: float = RATE_WINDOW_S) -> float | None:
        """A backend's requests per second over the last ``window_s`` (None: too few samples)."""
        if len(self.samples) < 2:
            return None
        last = self.samples[-1]
        first = next((s for s in self.samples if s[0] >= last[0] - window_s), self.samples[0])
        dt = last[0] - first[0]
        if dt <= 0 or name not in last[3]:
            return None
        return round(max(0, last[3][name] - first[3].get(name, 0)) / dt, 3)
