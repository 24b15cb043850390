"""A per-worker circuit breaker fed by real request outcomes.

closed --(failure_threshold failures in a row, each within window_secs of the previous)--> open
open --(timeout_secs elapsed, or a health probe succeeded)--> half-open
half-open: at most `success_threshold` trial requests at a time; `success_threshold` successes
           --> closed, one failure --> open again.

Outcomes: a worker answer of 2xx-4xx is a success (the worker is fine, the request was not), 429 is
neither (a busy worker is not a broken one), 408 and 5xx answers and transport failures are failures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING

from shepherd.workers import availability

if TYPE_CHECKING:
    from shepherd.config import BreakerConfig


class BreakerState(IntEnum):  # values match SMG's smg_worker_cb_state gauge
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


CAPACITY_STATUSES = frozenset({429})
FAILURE_STATUSES = frozenset({408, 500, 502, 503, 504})

Listener = Callable[[BreakerState, BreakerState], None]


class CircuitBreaker:
    __slots__ = ("_config", "_clock", "state", "failures", "successes", "trials", "_last_failure", "_opened_at",
                 "listener")

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive failures while closed
        self.successes = 0  # consecutive trial successes while half-open
        self.trials = 0  # trial requests in flight while half-open
        self._last_failure = 0.0
        self._opened_at = 0.0
        self.listener: Listener | None = None

    def allows(self) -> bool:
        """Whether a new request may go to this worker now (no side effects beyond open -> half-open)."""
        state = self.state
        if state is BreakerState.CLOSED or self._config.disabled:
            return True
        if state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self._config.timeout_secs:
                return False
            self._move(BreakerState.HALF_OPEN)
        return self.trials < self._config.success_threshold

    def on_healthy_probe(self) -> None:
        """An active health probe succeeded. An open breaker lets its trial requests through at
        once: a restarted worker is back within a probe interval instead of waiting out the open
        timeout (and then for traffic to notice). The trials still decide whether it closes."""
        if self.state is BreakerState.OPEN and not self._config.disabled:
            self._move(BreakerState.HALF_OPEN)

    def on_dispatch(self) -> None:
        """A request was sent: in half-open it takes one of the trial slots."""
        if self.state is BreakerState.HALF_OPEN:
            self.trials += 1

    def release(self) -> None:
        """A dispatched request ended without a verdict on the worker (the client left)."""
        if self.state is BreakerState.HALF_OPEN and self.trials > 0:
            self.trials -= 1

    def record(self, status: int | None) -> None:
        """The outcome of a dispatched request: the worker's status code, or None for a worker failure."""
        self.release()
        if status in CAPACITY_STATUSES or self._config.disabled:
            return
        if status is None or status in FAILURE_STATUSES:
            self._failure()
        else:
            self._success()

    def _failure(self) -> None:
        now = self._clock()
        if self.state is BreakerState.HALF_OPEN:
            self._open(now)
            return
        if self.state is BreakerState.CLOSED:
            if self.failures and now - self._last_failure > self._config.window_secs:
                self.failures = 0  # the previous failures are too old to count
            self.failures += 1
            self._last_failure = now
            if self.failures >= self._config.failure_threshold:
                self._open(now)

    def _success(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.successes += 1
            if self.successes >= self._config.success_threshold:
                self._move(BreakerState.CLOSED)
        elif self.state is BreakerState.CLOSED:
            self.failures = 0

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        previous = self.state
        self.state = state
        availability.changed()
        self.failures = 0
        self.successes = 0
        self.trials = 0
        if self.listener is not None and previous is not state:
            self.listener(previous, state)

    def info(self) -> dict[str, object]:
        return {"state": self.state.name.lower(), "consecutive_failures": self.failures,
                "half_open_successes": self.successes}
