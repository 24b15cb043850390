"""Expected wait: how long a new request would queue on a worker before its prefill starts.

    score = (queued tokens + tokens dispatched since the last load report) / throughput
            + kv_pressure_weight * k / (1 - k)          with k = the worker's KV usage

Queued tokens come from the engine's report (uncached waiting tokens, else waiting requests times
the mean prompt size); tokens dispatched since that report are tallied by the policy so that a burst
between two polls is not all sent to the same "idle" worker. Workers without a report are scored by
their in-flight count at the fleet's nominal throughput; with no report at all the score is simply
the in-flight count.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from shepherd.config import PolicyOptions
from shepherd.workers.worker import Worker


class ExpectedWait:
    """Scores workers and keeps the per-worker "dispatched since the last poll" token tallies."""

    def __init__(self, options: PolicyOptions) -> None:
        self._options = options
        self._tallies: dict[str, tuple[int, int, int]] = {}  # worker id -> (report seq, tokens, requests)
        # worker id -> (the snapshot it was computed from, score): a reported worker's score changes
        # only with a new report (snapshots are replaced, never changed) or a record() on it.
        self._scores: dict[str, tuple[object, float]] = {}
        # The last fleet scored whole: its workers, their snapshots, the scores, each id's index.
        # The next decision over the same workers and snapshots (the common case between two
        # polls) compares those lists in C and rescores only the worker record() changed.
        self._fleet: tuple[Worker, ...] = ()
        self._fleet_snapshots: list[object] = []
        self._fleet_scores: list[float] = []
        self._fleet_index: dict[str, int] = {}

    def _tally(self, worker: Worker) -> tuple[int, int]:
        entry = self._tallies.get(worker.id)
        seq = worker.snapshot.seq if worker.snapshot is not None else -1
        if entry is None or entry[0] != seq:
            return 0, 0
        return entry[1], entry[2]

    def record(self, worker: Worker, tokens: int) -> None:
        seq = worker.snapshot.seq if worker.snapshot is not None else -1
        pending_tokens, pending_requests = self._tally(worker)
        self._tallies[worker.id] = (seq, pending_tokens + tokens, pending_requests + 1)
        self._scores.pop(worker.id, None)
        index = self._fleet_index.get(worker.id)
        if index is not None and worker.snapshot is not None and self._fleet[index] is worker:
            self._fleet_scores[index] = self.score(worker, self._fleet)
        else:
            self._drop_fleet()  # not one the fleet cache can update in place

    def dispatched_since_poll(self, worker: Worker) -> int:
        return self._tally(worker)[1]

    def nominal_throughput(self, workers: Sequence[Worker]) -> float:
        rates = [w.snapshot.gen_throughput for w in workers if w.snapshot is not None and w.snapshot.gen_throughput > 0]
        return sum(rates) / len(rates) if rates else self._options.least_load_default_throughput

    def score(self, worker: Worker, workers: Sequence[Worker]) -> float:
        """The worker's expected wait; `workers` (the candidates) matter only for one without a report."""
        options = self._options
        snapshot = worker.snapshot
        if snapshot is None:
            if not any(w.snapshot is not None for w in workers):
                return float(worker.load)
            return worker.load * options.least_load_mean_prefill_tokens / self.nominal_throughput(workers)
        pending_tokens, _ = self._tally(worker)
        queued = snapshot.waiting_uncached_tokens or snapshot.waiting * options.least_load_mean_prefill_tokens
        throughput = snapshot.gen_throughput if snapshot.gen_throughput > 0 else options.least_load_default_throughput
        usage = min(max(snapshot.token_usage, 0.0), 0.999)
        return (queued + pending_tokens) / throughput + options.least_load_kv_pressure_weight * usage / (1.0 - usage)

    def scores(self, workers: Sequence[Worker]) -> list[float]:
        """`[score(w, workers) for w in workers]`, reusing each reported worker's score until its
        next report or record(), and working the fleet-wide figures out once, not per worker."""
        fleet = tuple(workers)
        snapshots = list(map(_SNAPSHOT, fleet))
        if fleet == self._fleet and snapshots == self._fleet_snapshots:  # identity first: C-speed
            return list(self._fleet_scores)
        out = self._scores_of(workers)
        if None in snapshots:  # in-flight counts score those workers: they change between decisions
            self._drop_fleet()
        else:
            self._fleet, self._fleet_snapshots, self._fleet_scores = fleet, snapshots, list(out)
            self._fleet_index = {w.id: i for i, w in enumerate(fleet)}
        return out

    def _scores_of(self, workers: Sequence[Worker]) -> list[float]:
        cached = self._scores
        out: list[float] = []
        append = out.append
        reported: bool | None = None
        mean_prompt, nominal = self._options.least_load_mean_prefill_tokens, 1.0
        for worker in workers:
            snapshot = worker.snapshot
            if snapshot is None:
                if reported is None:
                    reported = any(w.snapshot is not None for w in workers)
                    if reported:
                        nominal = self.nominal_throughput(workers)
                append(worker.load * mean_prompt / nominal if reported else float(worker.load))
                continue
            entry = cached.get(worker.id)
            if entry is not None and entry[0] is snapshot:
                append(entry[1])
                continue
            score = self.score(worker, workers)
            cached[worker.id] = (snapshot, score)
            append(score)
        return out

    def over_waiting_cap(self, worker: Worker) -> bool:
        """The engine's queue now is at the cap: the report moved by what was sent and seen finish
        since (as the overload veto reads it), or, where the report does not say how many of this
        gateway's requests were on the worker then, by what was sent since (finishes unknown)."""
        cap = self._options.least_load_max_waiting_requests
        snapshot = worker.snapshot
        if cap <= 0 or snapshot is None:
            return False
        if snapshot.in_flight_at_report is not None:
            return snapshot.waiting_now(worker.load) >= cap
        return snapshot.waiting + self._tally(worker)[1] >= cap

    def forget(self, worker: Worker) -> None:
        self._tallies.pop(worker.id, None)
        self._scores.pop(worker.id, None)
        self._drop_fleet()

    def _drop_fleet(self) -> None:
        self._fleet, self._fleet_snapshots, self._fleet_scores, self._fleet_index = (), [], [], {}


_SNAPSHOT = attrgetter("snapshot")
