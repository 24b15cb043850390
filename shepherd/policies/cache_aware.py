"""cache_aware: send a request where its prompt prefix is most likely already in the KV cache.

For each request the policy looks up its prompt in an approximate radix tree of what every worker
has been sent (characters for HTTP traffic, token ids when they are known):

1. KV pressure (optional, needs engine load reports): when the hottest worker's KV usage passes
   --overload-token-usage-threshold, or the spread passes --balance-token-usage-threshold, cache
   affinity is abandoned for the least-loaded worker.
2. A match longer than --cache-threshold of the prompt goes to the least-loaded worker holding it,
   unless that worker is overloaded by both the relative and the absolute spill gate, in which case
   the least-loaded worker takes it (and so gets a copy of the hot prefix).
3. Anything else (a miss, or holders that are all gone) goes to the least-loaded worker.

The prompt is then recorded under the chosen worker. The absolute spill margin is capped at the
in-flight count's natural swing (2 standard deviations of a Poisson count at the fleet mean, never
under 4), otherwise a small fleet could never reach the default margin of 64 and would never spill.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from shepherd.config import PolicyOptions
from shepherd.policies.base import Policy, RoutingRequest, least_loaded
from shepherd.policies.fleet_index import FleetCache, LoadIndex
from shepherd.policies.radix_tree import RadixTree
from shepherd.workers.worker import Worker


class CacheAwarePolicy(Policy):
    name = "cache_aware"
    balances_load = True

    def __init__(self, options: PolicyOptions, rng: random.Random | None = None) -> None:
        self._options = options
        self._rng = rng or random.Random()
        self.text_tree = RadixTree("")
        self.token_tree = RadixTree(())
        self.hits = 0
        self.misses = 0
        # Told of every decision (the mesh shares them with other instances); None: nobody listens.
        self.observer: Callable[[str | tuple[int, ...], Worker], None] | None = None
        # The fleet's loads, kept current, instead of three Python scans per decision (least loaded,
        # least-loaded holder, mean load): worth it from a few workers on. At 16 it takes about as
        # much off the decision as the load writes then pay for it; at 256, 40 us off.
        self._fleets = FleetCache(LoadIndex, min_size=4)
        self._least_margin = min(options.balance_abs_threshold, 4.0)  # the spill margin's floor
        self._path: list[int] = []  # the tree nodes the lookup matched, for the insert that follows

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        tokens = request.tokens
        key: str | tuple[int, ...] = tokens if tokens is not None else request.text
        tree = self.token_tree if tokens is not None else self.text_tree
        index = self._fleets.get(workers)
        chosen: Worker | None = None  # None: the least-loaded worker (looked up only then)
        path = self._path
        path.clear()
        if len(workers) > 1 and key and not self._kv_pressure(workers):
            matched, holders = tree.match(key, path)
            if matched / len(key) > self._options.cache_threshold:
                tied = index.least_loaded_of(holders) if index is not None else _least_loaded_of(workers, holders)
                if tied:
                    self.hits += 1
                    chosen = tied[0] if len(tied) == 1 else self._rng.choice(tied)
                    total = index.total_load if index is not None else sum(w.load for w in workers)
                    if self._should_spill(chosen, total / len(workers)):
                        chosen = None
                else:
                    self.misses += 1
            else:
                self.misses += 1
        if chosen is None:
            chosen = index.least_loaded() if index is not None else least_loaded(workers)
        if key:
            tree.insert(key, chosen.id, path)
            if self.observer is not None:
                self.observer(key, chosen)
        return chosen

    def _should_spill(self, worker: Worker, mean: float) -> bool:
        load = worker.load
        if load <= mean + self._least_margin:  # no margin is smaller: no need to work it out
            return False
        margin = min(self._options.balance_abs_threshold, max(4.0, 2.0 * math.sqrt(mean)))
        return load > mean * self._options.balance_rel_threshold and load > mean + margin

    def _kv_pressure(self, workers: Sequence[Worker]) -> bool:
        options = self._options
        if options.overload_token_usage_threshold >= 1.0 and options.balance_token_usage_threshold >= 1.0:
            return False
        usages = [w.snapshot.token_usage for w in workers if w.snapshot is not None]
        if not usages:
            return False
        hottest, coolest = max(usages), min(usages)
        return (hottest > options.overload_token_usage_threshold
                or hottest - coolest > options.balance_token_usage_threshold)

    def on_worker_removed(self, worker: Worker) -> None:
        self._fleets.clear()
        self.text_tree.remove_tenant(worker.id)
        self.token_tree.remove_tenant(worker.id)

    def maintain(self) -> None:
        limit = self._options.max_tree_size
        self.text_tree.evict(limit)
        self.token_tree.evict(limit)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def _least_loaded_of(workers: Sequence[Worker], holders: dict[str, int]) -> list[Worker]:
    """The holders among `workers` with the fewest in flight, in fleet order (LoadIndex's scan)."""
    candidates = [w for w in workers if w.id in holders]
    if not candidates:
        return []
    lowest = min(w.load for w in candidates)
    return [w for w in candidates if w.load == lowest]
