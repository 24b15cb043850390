"""power_of_two: sample two distinct workers at random and take the less loaded one.

`--power-of-two-load-metric` picks what "less loaded" means: `expected_wait` (default, the
least_load score), `requests` (this gateway's in-flight count) or `least_requests` (the engine's
running plus waiting requests, falling back to the in-flight count when it has not reported).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from shepherd.config import PolicyOptions
from shepherd.policies.base import Policy, RoutingRequest
from shepherd.policies.expected_wait import ExpectedWait
from shepherd.workers.worker import Worker


class PowerOfTwoPolicy(Policy):
    name = "power_of_two"
    balances_load = True

    def __init__(self, options: PolicyOptions, rng: random.Random | None = None) -> None:
        self._metric = options.power_of_two_load_metric
        self._wait = ExpectedWait(options)
        self._rng = rng or random.Random()

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        count = len(workers)
        if count == 1:
            chosen = workers[0]
        else:
            first = self._rng.randrange(count)
            second = (first + 1 + self._rng.randrange(count - 1)) % count
            a, b = workers[first], workers[second]
            chosen = a if self._cost(a, workers) <= self._cost(b, workers) else b
        self._wait.record(chosen, request.estimated_tokens)
        return chosen

    def _cost(self, worker: Worker, workers: Sequence[Worker]) -> float:
        if self._metric == "requests":
            return float(worker.load)
        if self._metric == "least_requests":
            snapshot = worker.snapshot
            if snapshot is None:
                return float(worker.load)
            return float(snapshot.running + snapshot.waiting + self._wait.dispatched_since_poll(worker))
        return self._wait.score(worker, workers)

    def on_worker_removed(self, worker: Worker) -> None:
        self._wait.forget(worker)
