"""Fleet indexes stay equal to a scan of the fleet under any sequence of load and snapshot writes,
and an indexed policy decides exactly as the same policy scanning (same seeded random source)."""

from __future__ import annotations

import gc
import random
import sys
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shepherd.config import PolicyOptions
from shepherd.policies.base import RoutingRequest, least_loaded
from shepherd.policies.cache_aware import CacheAwarePolicy, _least_loaded_of
from shepherd.policies.fleet_index import FleetCache, LoadIndex, MinBuckets, ScoreIndex
from shepherd.policies.least_load import LeastLoadPolicy
from shepherd.workers.worker import LoadSnapshot, Worker

snapshots = st.one_of(
    st.none(),
    st.builds(LoadSnapshot, waiting=st.integers(0, 3), waiting_uncached_tokens=st.sampled_from([0, 1000]),
              gen_throughput=st.sampled_from([0.0, 1000.0]), token_usage=st.sampled_from([0.0, 0.5]),
              seq=st.integers(0, 2)),
)
# (worker index, what is written, value): the writes the request path and the load monitor make
writes = st.one_of(
    st.tuples(st.integers(0, 9), st.just("load"), st.integers(0, 4)),
    st.tuples(st.integers(0, 9), st.just("dispatch"), st.just(0)),
    st.tuples(st.integers(0, 9), st.just("processed"), st.integers(0, 3)),
    st.tuples(st.integers(0, 9), st.just("snapshot"), snapshots),
)


def fleet_of(count: int) -> list[Worker]:
    return [Worker(id=f"w{i}", url=f"http://10.0.0.{i}:8000", model_ids=("m",)) for i in range(count)]


def apply(workers: list[Worker], write: tuple[int, str, Any]) -> None:
    index, what, value = write
    worker = workers[index % len(workers)]
    if what == "dispatch":  # as an Attempt: two writes in a row
        worker.load += 1
        worker.processed += 1
    else:
        setattr(worker, what, value)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10), st.lists(writes, max_size=300), st.lists(st.sets(st.integers(0, 11)), min_size=1))
def test_load_index_answers_as_a_scan(count: int, changes: list, holder_sets: list) -> None:
    workers = fleet_of(count)
    index = LoadIndex(tuple(workers))
    by_load = LoadIndex(tuple(workers))
    by_load.few_ids = 0  # always the walk by load, never the one-by-one lookup
    for step, write in enumerate(changes):
        apply(workers, write)
        assert index.least_loaded() is least_loaded(workers)
        assert index.total_load == sum(w.load for w in workers)
        holders = {f"w{i}": 0 for i in holder_sets[step % len(holder_sets)]}  # w10, w11: not in the fleet
        expected = _least_loaded_of(workers, holders)
        assert index.least_loaded_of(holders) == expected
        assert by_load.least_loaded_of(holders) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10), st.lists(writes, max_size=200))
def test_score_index_answers_as_a_scan(count: int, changes: list) -> None:
    workers = fleet_of(count)

    def score(worker: Worker) -> float:
        assert worker.snapshot is not None
        return float(worker.snapshot.waiting + worker.snapshot.seq)

    index = ScoreIndex(tuple(workers), score, lambda w: w.snapshot is not None, frozenset({"snapshot"}))
    for write in changes:
        apply(workers, write)
        scored = [w for w in workers if w.snapshot is not None]
        assert index.unscored == count - len(scored)
        if scored:
            best = min(map(score, scored))
            assert index.lowest() == [w for w in scored if score(w) == best]


def test_min_buckets_drop_stale_keys_and_stay_bounded() -> None:
    buckets = MinBuckets()
    for step in range(10_000):  # one member moving through ever new keys
        buckets.discard(float(step - 1), 0)
        buckets.add(float(step), 0)
        assert buckets.lowest() == (float(step), {0})
    assert len(buckets._heap) <= 2 * len(buckets._groups) + 33
    assert len(buckets) == 1


def test_load_index_heap_is_compacted() -> None:
    workers = fleet_of(4)
    index = LoadIndex(tuple(workers))
    for _ in range(5_000):
        workers[1].load += 1
        workers[1].load -= 1
    assert len(index._heap) <= 2 * len(workers) + 65
    assert index.least_loaded() is least_loaded(workers)


def test_fleet_cache_indexes_a_fleet_seen_twice_in_a_row_and_unwatches_on_change() -> None:
    workers = fleet_of(3)
    cache = FleetCache(LoadIndex, min_size=2)
    assert cache.get(workers) is None  # first sight: scanned
    index = cache.get(workers)
    assert index is not None and index.fleet == tuple(workers)
    assert cache.get(list(workers)) is index  # the same workers, as another list
    assert cache.get(workers[:2]) is None  # a retry without one worker: scanned, index kept
    assert cache.get(workers) is index
    assert cache.get(workers[:2]) is None
    smaller = cache.get(workers[:2])  # the smaller fleet stays: indexed in its place
    assert smaller is not None and smaller is not index
    assert all(not w.__dict__.get("_watchers") for w in workers[2:])  # the old index no longer watches
    cache.clear()
    assert all(not w.__dict__.get("_watchers") for w in workers)
    assert FleetCache(LoadIndex, min_size=4).get(workers) is None and FleetCache(LoadIndex).get(workers) is None


def test_duplicate_ids_are_never_indexed() -> None:
    workers = fleet_of(2) + [Worker(id="w0", url="http://10.0.0.9:8000", model_ids=("m",))]
    cache = FleetCache(LoadIndex, min_size=1)
    assert [cache.get(workers) for _ in range(3)] == [None, None, None]


def test_an_abandoned_index_is_not_kept_alive_by_its_workers() -> None:
    workers = fleet_of(2)
    LoadIndex(tuple(workers))  # dropped at once: the workers hold it weakly
    gc.collect()
    workers[0].load += 1  # a dead watcher is skipped
    assert workers[0].load == 1


def _scan(policy: Any) -> Any:
    policy._fleets = FleetCache(lambda fleet: None, min_size=sys.maxsize)  # never indexed
    return policy


def _dispatch_and_finish(workers: list[Worker], chosen: Worker, inflight: list[Worker], finish: int) -> None:
    chosen.load += 1
    chosen.processed += 1
    inflight.append(chosen)
    if finish < len(inflight):
        inflight.pop(finish).load -= 1


prompts = st.lists(st.tuples(st.text(alphabet="ab", min_size=0, max_size=8), st.integers(0, 3),
                             st.one_of(st.none(), st.integers(0, 9))), min_size=1, max_size=80)


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 8), prompts, st.integers(0, 10))
def test_cache_aware_decides_as_its_scan(count: int, steps: list, seed: int) -> None:
    workers = fleet_of(count)
    for i, worker in enumerate(workers):
        worker.load = i % 3
    indexed = CacheAwarePolicy(PolicyOptions(), random.Random(seed))
    indexed._fleets = FleetCache(LoadIndex, min_size=1)
    scanned = _scan(CacheAwarePolicy(PolicyOptions(), random.Random(seed)))
    inflight: list[Worker] = []
    for text, finish, unavailable in steps:
        fleet = [w for i, w in enumerate(workers) if i != unavailable]  # now and then one is out
        request = RoutingRequest("/v1/completions", {"prompt": text}, {})
        chosen = indexed.select(fleet, request)
        assert chosen is scanned.select(fleet, request)
        assert chosen is not None
        _dispatch_and_finish(workers, chosen, inflight, finish)
    assert (indexed.hits, indexed.misses) == (scanned.hits, scanned.misses)


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 8), st.lists(st.tuples(st.integers(0, 9), snapshots, st.integers(1, 3000), st.integers(0, 3)),
                                   min_size=1, max_size=60), st.integers(0, 10))
def test_least_load_decides_as_its_scan(count: int, steps: list, seed: int) -> None:
    workers = fleet_of(count)
    for i, worker in enumerate(workers):
        worker.snapshot = LoadSnapshot(waiting=i % 2, seq=1)  # ties from the start
    options = PolicyOptions()
    indexed = LeastLoadPolicy(options, random.Random(seed))
    indexed._fleets = FleetCache(indexed._index, min_size=1)
    scanned = _scan(LeastLoadPolicy(options, random.Random(seed)))
    inflight: list[Worker] = []
    for target, snapshot, tokens, finish in steps:
        if target < count:
            workers[target].snapshot = snapshot  # a poll (None: the worker stopped reporting)
        request = RoutingRequest("/v1/completions", {"prompt": "x" * (4 * tokens)}, {})
        fleet = workers if target % 3 else workers[1:]  # now and then a retry without the first
        chosen = indexed.select(fleet, request)
        assert chosen is scanned.select(fleet, request)
        assert chosen is not None
        _dispatch_and_finish(workers, chosen, inflight, finish)
