"""The policies' fast paths decide exactly as their plain definitions do, on random fleets."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shepherd.config import PolicyOptions
from shepherd.policies.base import RoutingRequest
from shepherd.policies.expected_wait import ExpectedWait
from shepherd.policies.least_load import LeastLoadPolicy
from shepherd.workers.worker import LoadSnapshot, Worker

snapshots = st.one_of(
    st.none(),
    st.builds(LoadSnapshot, waiting=st.integers(0, 8), waiting_uncached_tokens=st.sampled_from([0, 1000, 3000]),
              gen_throughput=st.sampled_from([0.0, 500.0, 1500.0]), token_usage=st.sampled_from([0.0, 0.5, 0.99]),
              seq=st.integers(0, 3)),
)
# Each step: (worker index, new snapshot or keep it, new in-flight count, routed tokens)
steps = st.lists(st.tuples(st.integers(0, 7), st.one_of(st.just("keep"), snapshots), st.integers(0, 5),
                           st.integers(1, 4000)), min_size=1, max_size=60)


def _request(tokens: int) -> RoutingRequest:
    return RoutingRequest("/v1/chat/completions", {"prompt": "x" * (4 * tokens)}, {})


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), steps, st.booleans())
def test_least_load_picks_a_worker_of_the_lowest_plain_score(count: int, changes: list, capped: bool) -> None:
    options = PolicyOptions(least_load_max_waiting_requests=6 if capped else 0)
    workers = [Worker(id=f"w{i}", url=f"http://10.0.0.{i}:8000", model_ids=("m",)) for i in range(count)]
    policy = LeastLoadPolicy(options, random.Random(1))
    reference = ExpectedWait(options)  # the plain definition, fed the same dispatches
    for index, snapshot, load, tokens in changes:
        worker = workers[index % count]
        if snapshot != "keep":
            worker.snapshot = snapshot
        worker.load = load
        candidates = [w for w in workers if not reference.over_waiting_cap(w)] if capped else workers
        expected = {w.id: reference.score(w, candidates) for w in candidates}
        assert policy._wait.scores(candidates) == [expected[w.id] for w in candidates]
        request = _request(tokens)
        chosen = policy.select(workers, request)
        if not candidates:
            assert chosen is None
            continue
        assert chosen is not None and expected[chosen.id] == min(expected.values())
        reference.record(chosen, request.estimated_tokens)


def test_least_load_spreads_exact_ties_uniformly() -> None:
    workers = [Worker(id=f"w{i}", url=f"http://10.0.0.{i}:8000", model_ids=("m",)) for i in range(4)]
    policy = LeastLoadPolicy(PolicyOptions(), random.Random(3))
    seen = {policy.select(workers, _request(10)).id for _ in range(200)}  # type: ignore[union-attr]
    assert seen == {w.id for w in workers}  # no reports, no load: every worker ties, each gets picked
