"""least_load: the worker with the lowest expected wait (see expected_wait.py); ties at random.

Once every worker of the fleet has a load report, each one's score depends on itself alone, so the
fleet is kept in a ScoreIndex (fleet_index.py) and a decision reads its lowest bucket; a fleet with
an unreported worker (whose score uses the fleet's mean throughput), or the waiting-requests cap,
takes the scan below."""

from __future__ import annotations

import random
from collections.abc import Sequence

from shepherd.config import PolicyOptions
from shepherd.policies.base import Policy, RoutingRequest
from shepherd.policies.expected_wait import ExpectedWait
from shepherd.policies.fleet_index import FleetCache, ScoreIndex
from shepherd.workers.worker import Worker


class LeastLoadPolicy(Policy):
    name = "least_load"
    balances_load = True

    def __init__(self, options: PolicyOptions, rng: random.Random | None = None) -> None:
        self._wait = ExpectedWait(options)
        self._capped = options.least_load_max_waiting_requests > 0
        self._rng = rng or random.Random()
        self._fleets = FleetCache(self._index)

    def _index(self, fleet: tuple[Worker, ...]) -> ScoreIndex:
        wait = self._wait
        # A reported worker's score reads its snapshot and the policy's own tally (rescored below);
        # an unreported one's reads its load and the fleet's throughput, so it is left to the scan.
        return ScoreIndex(fleet, lambda worker: wait.score(worker, fleet), _reported, _SCORE_FIELDS)

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        index = self._fleets.get(workers) if not self._capped else None
        if index is not None and not index.unscored:
            tied = index.lowest()
            best = tied[0] if len(tied) == 1 else self._rng.choice(tied)
        else:
            best_or_none = self._scan(workers)
            if best_or_none is None:
                return None
            best = best_or_none
        self._wait.record(best, request.estimated_tokens)
        kept = self._fleets.current  # whichever fleet it indexes: `best`'s tally just changed
        if kept is not None:
            kept.rescore(best)
        return best

    def _scan(self, workers: Sequence[Worker]) -> Worker | None:
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
        return best

    def on_worker_removed(self, worker: Worker) -> None:
        self._wait.forget(worker)
        self._fleets.clear()


_SCORE_FIELDS = frozenset({"snapshot"})


def _reported(worker: Worker) -> bool:
    return worker.snapshot is not None
