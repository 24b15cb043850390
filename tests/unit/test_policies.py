"""Each routing policy's decisions, on plain Worker objects (no sockets)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shepherd.config import PolicyOptionError, PolicyOptions
from shepherd.policies.base import RoutingRequest
from shepherd.policies.bucket import BucketPolicy
from shepherd.policies.cache_aware import CacheAwarePolicy
from shepherd.policies.consistent_hashing import ConsistentHashingPolicy
from shepherd.policies.factory import POLICY_NAMES, create_policy
from shepherd.policies.least_load import LeastLoadPolicy
from shepherd.policies.manual import ManualPolicy
from shepherd.policies.passthrough import PassthroughPolicy
from shepherd.policies.power_of_two import PowerOfTwoPolicy
from shepherd.policies.prefix_hash import PrefixHashPolicy
from shepherd.workers.worker import LoadSnapshot, Worker


def workers(n: int) -> list[Worker]:
    return [Worker(id=f"id{i}", url=f"http://w{i}", model_ids=("m",)) for i in range(n)]


def chat(text: str, **headers: str) -> RoutingRequest:
    return RoutingRequest("/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}, headers)


def keyed(key: str) -> RoutingRequest:
    return RoutingRequest("/v1/chat/completions", {}, {"x-smg-routing-key": key})


def test_every_policy_is_buildable_and_picks_an_offered_worker() -> None:
    pool = workers(3)
    for name in POLICY_NAMES:
        policy = create_policy(name)
        assert policy.name == name
        assert policy.select(pool, chat("hello")) in pool


# -- cache_aware -------------------------------------------------------------------------------


def test_cache_aware_sends_a_shared_prefix_to_its_holder() -> None:
    pool = workers(4)
    policy = CacheAwarePolicy(PolicyOptions(), random.Random(1))
    first = policy.select(pool, chat("You are a helpful assistant. Question one"))
    assert first is not None
    for i in range(10):
        assert policy.select(pool, chat(f"You are a helpful assistant. Question one, follow-up {i}")) is first
    assert policy.hits == 10


def test_cache_aware_spreads_misses_to_the_least_loaded() -> None:
    pool = workers(3)
    pool[0].load, pool[1].load, pool[2].load = 5, 0, 3
    policy = CacheAwarePolicy(PolicyOptions())
    assert policy.select(pool, chat("a brand new conversation")) is pool[1]


def test_cache_aware_spills_from_an_overloaded_holder() -> None:
    pool = workers(4)
    policy = CacheAwarePolicy(PolicyOptions())
    holder = policy.select(pool, chat("shared system prompt, then a question"))
    assert holder is not None
    holder.load = 40  # mean 10 with the others idle: over 1.5x the mean and over mean + margin
    others = [w for w in pool if w is not holder]
    chosen = policy.select(pool, chat("shared system prompt, then a question again"))
    assert chosen in others
    # Both now hold the shared prefix; the least loaded of the two gets the next one.
    holder.load = 0
    chosen.load = 1
    assert policy.select(pool, chat("shared system prompt, then a question!")) is holder
    holder.load = 2
    assert policy.select(pool, chat("shared system prompt, then a question?")) is chosen


def test_cache_aware_does_not_spill_on_a_small_imbalance() -> None:
    pool = workers(4)
    policy = CacheAwarePolicy(PolicyOptions())
    holder = policy.select(pool, chat("a prompt that is long enough to match"))
    assert holder is not None
    holder.load = 3
    assert policy.select(pool, chat("a prompt that is long enough to match, again")) is holder


def test_cache_aware_below_threshold_is_a_miss() -> None:
    pool = workers(2)
    policy = CacheAwarePolicy(PolicyOptions(cache_threshold=0.9))
    policy.select(pool, chat("abc"))
    policy.select(pool, chat("abc but then a much longer and different tail"))
    assert policy.hits == 0 and policy.misses == 2


def test_cache_aware_forgets_removed_workers_and_skips_unavailable_holders() -> None:
    pool = workers(3)
    policy = CacheAwarePolicy(PolicyOptions())
    holder = policy.select(pool, chat("remember me please"))
    assert holder is not None
    rest = [w for w in pool if w is not holder]
    assert policy.select(rest, chat("remember me please, again")) in rest  # holder unavailable: least loaded
    policy.on_worker_removed(holder)
    assert holder.id not in policy.text_tree.tenants()


def test_cache_aware_uses_token_ids_when_known() -> None:
    pool = workers(3)
    policy = CacheAwarePolicy(PolicyOptions())
    first = policy.select(pool, RoutingRequest("/generate", {"input_ids": [1, 2, 3, 4, 5, 6]}, {}))
    again = policy.select(pool, RoutingRequest("/generate", {"input_ids": [1, 2, 3, 4, 5, 6, 7]}, {}))
    assert first is again and policy.token_tree.size > 0 and policy.text_tree.size == 0


def test_cache_aware_kv_pressure_drops_affinity() -> None:
    pool = workers(2)
    policy = CacheAwarePolicy(PolicyOptions(overload_token_usage_threshold=0.9))
    holder = policy.select(pool, chat("hot prefix that everyone shares"))
    assert holder is not None
    other = next(w for w in pool if w is not holder)
    holder.snapshot = LoadSnapshot(token_usage=0.95)
    other.snapshot = LoadSnapshot(token_usage=0.2)
    holder.load = 1
    assert policy.select(pool, chat("hot prefix that everyone shares, next")) is other


def test_cache_aware_tree_stays_under_its_bound() -> None:
    pool = workers(2)
    policy = CacheAwarePolicy(PolicyOptions(max_tree_size=500))
    for i in range(200):
        policy.select(pool, chat(f"conversation {i} with some distinct text"))
    policy.maintain()
    assert policy.text_tree.size <= 500


# -- load-based ----------------------------------------------------------------------------------


def test_least_load_uses_in_flight_without_reports_then_expected_wait() -> None:
    pool = workers(3)
    pool[0].load, pool[1].load, pool[2].load = 2, 1, 4
    policy = LeastLoadPolicy(PolicyOptions())
    assert policy.select(pool, chat("x")) is pool[1]
    pool[0].snapshot = LoadSnapshot(waiting_uncached_tokens=4000, gen_throughput=1000, seq=1)
    pool[1].snapshot = LoadSnapshot(waiting_uncached_tokens=8000, gen_throughput=1000, seq=1)
    pool[2].snapshot = LoadSnapshot(waiting_uncached_tokens=0, gen_throughput=1000, token_usage=0.5, seq=1)
    assert policy.select(pool, chat("x")) is pool[2]  # 0.15 * 1 = 0.15 s vs 4 s and 8 s


def test_least_load_tallies_dispatches_between_polls() -> None:
    pool = workers(2)
    for worker in pool:
        worker.snapshot = LoadSnapshot(gen_throughput=1000, seq=1)
    policy = LeastLoadPolicy(PolicyOptions())
    picks = Counter(policy.select(pool, chat("y" * 4000)) for _ in range(10))  # ~1000 tokens each
    assert picks[pool[0]] == 5 and picks[pool[1]] == 5  # a burst alternates instead of piling up
    for worker in pool:  # a fresh report resets the tallies
        worker.snapshot = LoadSnapshot(gen_throughput=1000, seq=2)
    assert policy._wait.dispatched_since_poll(pool[0]) == 0


def test_least_load_waiting_cap_vetoes() -> None:
    pool = workers(2)
    pool[0].snapshot = LoadSnapshot(waiting=5, seq=1)
    pool[1].snapshot = LoadSnapshot(waiting=9, seq=1)
    policy = LeastLoadPolicy(PolicyOptions(least_load_max_waiting_requests=6))
    assert policy.select(pool, chat("z")) is pool[0]
    pool[0].snapshot = LoadSnapshot(waiting=6, seq=2)
    assert policy.select(pool, chat("z")) is None


def test_least_load_waiting_cap_lifts_when_requests_finish_between_polls() -> None:
    pool = workers(2)
    for worker in pool:
        worker.load = 5
        worker.snapshot = LoadSnapshot(waiting=5, seq=1, in_flight_at_report=5)
    pool[1].snapshot = LoadSnapshot(waiting=9, seq=1, in_flight_at_report=5)  # over the cap throughout
    policy = LeastLoadPolicy(PolicyOptions(least_load_max_waiting_requests=6))
    assert policy.select(pool, chat("z")) is pool[0]
    pool[0].load += 1  # the dispatch arrived: 6 waiting now, as far as the gateway can tell
    assert policy.select(pool, chat("z")) is None
    pool[0].load -= 3  # three finished, so three waiting ones run: 3 waiting, the cap lifts
    assert policy.select(pool, chat("z")) is pool[0]


def test_power_of_two_prefers_the_lighter_of_two() -> None:
    pool = workers(2)
    pool[0].load = 10
    for metric in ("expected_wait", "requests", "least_requests"):
        policy = PowerOfTwoPolicy(PolicyOptions(power_of_two_load_metric=metric), random.Random(3))
        assert all(policy.select(pool, chat("q")) is pool[1] for _ in range(20))


def test_power_of_two_spreads_over_many_workers() -> None:
    pool = workers(8)
    policy = PowerOfTwoPolicy(PolicyOptions(power_of_two_load_metric="requests"), random.Random(5))
    counts = Counter()
    for _ in range(800):
        chosen = policy.select(pool, chat("q"))
        assert chosen is not None
        chosen.load += 1
        counts[chosen] += 1
    assert max(counts.values()) - min(counts.values()) <= 4  # uniform random would spread by ~25


# -- key-based -----------------------------------------------------------------------------------


def test_consistent_hashing_is_sticky_and_moves_about_one_nth_of_keys() -> None:
    pool = workers(4)
    policy = ConsistentHashingPolicy()
    keys = [f"user-{i}" for i in range(2000)]
    before = {k: policy.select(pool, keyed(k)) for k in keys}
    assert all(policy.select(pool, keyed(k)) is before[k] for k in keys[:50])
    grown = [*pool, Worker(id="id4", url="http://w4", model_ids=("m",))]
    after = {k: policy.select(grown, keyed(k)) for k in keys}
    moved = sum(1 for k in keys if after[k] is not before[k])
    assert 0.1 < moved / len(keys) < 0.3  # about 1/5
    assert all(after[k].url == "http://w4" for k in keys if after[k] is not before[k])
    shares = Counter(w.url for w in after.values())
    assert min(shares.values()) > 0.1 * len(keys)


def test_consistent_hashing_walks_past_unavailable_workers() -> None:
    pool = workers(3)
    policy = ConsistentHashingPolicy()
    owner = policy.select(pool, keyed("session-42"))
    rest = [w for w in pool if w is not owner]
    fallback = policy.select(rest, keyed("session-42"))
    assert fallback in rest
    assert policy.select(pool, keyed("session-42")) is owner  # back when the owner is healthy


def test_consistent_hashing_never_pins_on_a_shared_authorization_header() -> None:
    pool = workers(4)
    policy = ConsistentHashingPolicy()
    seen = set()
    for _ in range(40):
        chosen = policy.select(pool, chat("q", authorization="Bearer shared-team-key"))
        assert chosen is not None
        chosen.load += 1
        seen.add(chosen)
    assert len(seen) == 4


def test_consistent_hashing_target_worker_header() -> None:
    pool = workers(3)
    policy = ConsistentHashingPolicy()
    assert policy.select(pool, chat("q", **{"x-smg-target-worker": "2"})) is pool[2]
    assert policy.select(pool, chat("q", **{"x-smg-target-worker": "7"})) is None


def test_routing_key_headers_are_configurable() -> None:
    request = RoutingRequest("/", {}, {"x-session": "abc", "x-smg-routing-key": "zzz"},
                             routing_key_headers=("x-session", "x-smg-routing-key"))
    assert request.routing_key == "abc"
    too_long = RoutingRequest("/", {}, {"x-smg-routing-key": "k" * 129})
    assert too_long.routing_key is None


def test_prefix_hash_groups_by_head_and_moves_on_when_loaded() -> None:
    pool = workers(4)
    policy = PrefixHashPolicy(PolicyOptions(prefix_token_count=8))
    head = "x" * 32
    first = policy.select(pool, chat(head + " question A"))
    assert first is not None
    assert policy.select(pool, chat(head + " question B")) is first
    first.load = 50
    assert policy.select(pool, chat(head + " question C")) is not first


def test_manual_pins_keys_and_fails_over() -> None:
    pool = workers(3)
    clock = [0.0]
    policy = ManualPolicy(PolicyOptions(max_idle_secs=10), random.Random(2), clock=lambda: clock[0])
    pinned = policy.select(pool, keyed("conv-1"))
    assert all(policy.select(pool, keyed("conv-1")) is pinned for _ in range(10))
    rest = [w for w in pool if w is not pinned]
    substitute = policy.select(rest, keyed("conv-1"))
    assert substitute in rest and len(policy.pinned("conv-1")) == 2
    assert policy.select(pool, keyed("conv-1")) is pinned  # the original comes back first
    clock[0] = 11
    policy.maintain()
    assert len(policy) == 0


def test_manual_min_group_balances_keys() -> None:
    pool = workers(3)
    policy = ManualPolicy(PolicyOptions(assignment_mode="min_group"), random.Random(4))
    placed = Counter(policy.select(pool, keyed(f"k{i}")) for i in range(30))
    assert set(placed.values()) == {10}


def test_bucket_routes_by_length_and_rebalances() -> None:
    pool = workers(2)
    clock = [0.0]
    policy = BucketPolicy(PolicyOptions(balance_abs_threshold=10**9), clock=lambda: clock[0])
    short, long = chat("s" * 100), chat("l" * 3000)
    assert policy.select(pool, short) is pool[0]
    assert policy.select(pool, long) is pool[1]
    for _ in range(50):
        policy.select(pool, chat("m" * 500))
    clock[0] = 6
    policy.select(pool, short)
    assert policy.boundaries()[0] <= 600  # the boundary moved down to where the traffic is


def test_passthrough_takes_the_first() -> None:
    pool = workers(3)
    assert PassthroughPolicy().select(pool, chat("q")) is pool[0]


def test_policy_options_validation() -> None:
    PolicyOptions().validate()
    for bad in ({"cache_threshold": 1.5}, {"balance_rel_threshold": 0.5}, {"assignment_mode": "x"},
                {"power_of_two_load_metric": "x"}, {"max_tree_size": 0}, {"cache_boundaries": (0,)}):
        with pytest.raises(PolicyOptionError):
            PolicyOptions(**bad).validate()  # type: ignore[arg-type]
