"""Per-backend circuit breaker: closed -> open -> half-open -> closed.

Opens after ``failure_threshold`` consecutive failures, stays open ``cooldown_s``, then lets
one trial request at a time through (half-open); ``success_threshold`` successes close it,
a failure opens it again. ``cool_down(seconds)`` keeps a backend out of rotation for a
while without counting a failure (an upstream 429 with Retry-After).
"""

from __future__ import annotations

import asyncio
import enum
import time

from router.config.schema import CircuitBreakerConfig


class CircuitState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    __slots__ = ("cfg", "state", "failures", "successes", "opened_at", "trial_in_flight", "cooled_until",
                 "_trial_waiters")

    def __init__(self, cfg: CircuitBreakerConfig) -> None:
        self.cfg = cfg
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.successes = 0
        self.opened_at = 0.0
        self.trial_in_flight = False
        self.cooled_until = 0.0
        self._trial_waiters: list[asyncio.Future[None]] = []

    def allows(self, now: float | None = None) -> bool:
        """Whether a request may be sent now (without reserving a half-open trial)."""
        now = time.monotonic() if now is None else now
        if now < self.cooled_until:
            return False
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            return now - self.opened_at >= self.cfg.cooldown_s
        return not self.trial_in_flight

    def acquire(self) -> None:
        """Called when a request is actually sent; turns an expired open circuit half-open."""
        if self.state is CircuitState.OPEN:
            self.state = CircuitState.HALF_OPEN
            self.successes = 0
        if self.state is CircuitState.HALF_OPEN:
            self.trial_in_flight = True

    def record_success(self) -> None:
        self.failures = 0
        if self.state is CircuitState.HALF_OPEN:
            self.successes += 1
            if self.successes >= self.cfg.success_threshold:
                self.state = CircuitState.CLOSED
            self._trial_ended()

    def record_failure(self) -> None:
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.cfg.failure_threshold:
            self.trip()
        self._trial_ended()

    def probe_passed(self) -> None:
        """A health check passed after failing: an open circuit's cool-down is over (its
        next request is the half-open trial), so a recovered backend is back in seconds."""
        if self.state is CircuitState.OPEN:
            self.opened_at = time.monotonic() - self.cfg.cooldown_s

    def trip(self) -> None:
        self.state = CircuitState.OPEN
        self.opened_at = time.monotonic()

    def release_trial(self) -> None:
        """A half-open trial ended without a verdict (e.g. the client went away)."""
        self._trial_ended()

    @property
    def trial_pending(self) -> bool:
        """A half-open trial is in flight: its verdict may reopen the circuit soon."""
        return self.state is CircuitState.HALF_OPEN and self.trial_in_flight

    def trial_settled(self) -> asyncio.Future[None]:
        """A future done when the trial in flight ends (for requests that would rather
        wait for its verdict than fail while the backend is probably back)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.trial_pending:
            future.set_result(None)
        else:
            self._trial_waiters.append(future)
        return future

    def _trial_ended(self) -> None:
        self.trial_in_flight = False
        if self._trial_waiters:
            waiters, self._trial_waiters = self._trial_waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def cool_down(self, seconds: float) -> None:
        self.cooled_until = max(self.cooled_until, time.monotonic() + seconds)

    def retry_in(self, now: float | None = None) -> float:
        """Seconds until this backend may take a request again (0 if it may now)."""
        now = time.monotonic() if now is None else now
        wait = max(0.0, self.cooled_until - now)
        if self.state is CircuitState.OPEN:
            wait = max(wait, self.cfg.cooldown_s - (now - self.opened_at))
        return wait
