"""The soak (bench/soak.py) as a test: thousands of requests against three backends that
fail at random while one stays healthy; CI runs it (about 15 s here)."""

from __future__ import annotations

import pytest

from bench.soak import FAULTS, run_soak, verdict


@pytest.mark.soak
def test_soak_every_request_succeeds_or_fails_clearly_and_nothing_leaks():
    report = run_soak(requests=5000, concurrency=32, seed=7)
    assert verdict(report) == []
    assert report.requests == 5000 and report.ok > 4500
    assert set(report.faults_injected) == set(FAULTS)  # every kind of fault was met
    print(f"soak: {report}")
