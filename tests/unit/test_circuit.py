"""The circuit breaker on its own: closed -> open -> half-open -> closed, cool-downs."""

from __future__ import annotations

import time

from router.config.schema import CircuitBreakerConfig
from router.routing.circuit import CircuitBreaker, CircuitState


def breaker(**kw: float) -> CircuitBreaker:
    return CircuitBreaker(CircuitBreakerConfig(**kw))  # type: ignore[arg-type]


def test_opens_after_consecutive_failures_only():
    cb = breaker(failure_threshold=3, cooldown_s=30)
    cb.record_failure()
    cb.record_failure()
    cb.record_success()  # a success resets the count
    cb.record_failure()
    cb.record_failure()
    assert cb.state is CircuitState.CLOSED and cb.allows()
    cb.record_failure()
    assert cb.state is CircuitState.OPEN and not cb.allows()
    assert 29 < cb.retry_in() <= 30


def test_half_open_lets_one_trial_through_then_closes_or_reopens():
    cb = breaker(failure_threshold=1, cooldown_s=0.05, success_threshold=2)
    cb.record_failure()
    assert not cb.allows()
    time.sleep(0.06)
    assert cb.allows()
    cb.acquire()
    assert cb.state is CircuitState.HALF_OPEN and not cb.allows()  # one trial at a time
    cb.record_success()
    assert cb.state is CircuitState.HALF_OPEN and cb.allows()  # needs 2 successes
    cb.acquire()
    cb.record_success()
    assert cb.state is CircuitState.CLOSED
    cb.record_failure()
    time.sleep(0.06)
    cb.acquire()
    cb.record_failure()  # a failed trial opens it again at once
    assert cb.state is CircuitState.OPEN and not cb.allows()


def test_a_trial_without_verdict_frees_the_slot():
    cb = breaker(failure_threshold=1, cooldown_s=0)
    cb.record_failure()
    cb.acquire()
    assert not cb.allows()
    cb.release_trial()
    assert cb.allows()


def test_cool_down_blocks_without_counting_a_failure():
    cb = breaker(failure_threshold=1)
    cb.cool_down(0.05)
    assert not cb.allows() and cb.failures == 0 and cb.state is CircuitState.CLOSED
    assert 0 < cb.retry_in() <= 0.05
    time.sleep(0.06)
    assert cb.allows() and cb.retry_in() == 0
