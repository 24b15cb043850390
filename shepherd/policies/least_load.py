"""least_load: the worker with the lowest expected wait (see expected_wait.py); ties at random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from shepherd.config import PolicyOptions
from shepherd.policies.base import Policy, RoutingRequest
from shepherd.policies.expected_wait import ExpectedWait
from shepherd.workers.worker import Worker


class LeastLoadPolicy(Policy):
    name = "least_load"

    def __init__(self, options: PolicyOptions, rng: random.Random | None = None) -> None:
        self._wait = ExpectedWait(options)
        self._capped = options.least_load_max_waiting_requests > 0
        self._rng = rng or random.Random()

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        candidates = workers
        if self._capped:
            candidates = [w for w in workers if not self._wait.over_waiting_cap(w)]
            if not candidates:
                return None  # every worker's queue is at the cap: the router answers 503
        scores = self._wait.scores(candidates)
        best_score = min(scores)
        if scores.count(best_score) == 1:
            best = candidates[scores.index(best_score)]
        else:  # uniform among exact ties
            best = self._rng.choice([w for w, score in zip(candidates, scores, strict=True) if score == best_score])
        self._wait.record(best, request.estimated_tokens)
        return best

    def on_worker_removed(self, worker: Worker) -> None:
        self._wait.forget(worker)
