"""The KV-event index, the TTFT cost model and the precise_cache policy, on plain objects."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from smg_grpc_proto.generated import common_pb2

from shepherd.config import PolicyOptions
from shepherd.kv.blocks import prompt_blocks
from shepherd.kv.index import KvIndex
from shepherd.kv.stream import EventStream, KvBatch, Resubscribe
from shepherd.kv.subscriber import grpc_batch
from shepherd.policies.base import RoutingRequest
from shepherd.policies.precise_cache import MAX_SHARE, SHARE_MIN_DECISIONS, SHARE_WINDOW, PreciseCachePolicy
from shepherd.policies.ttft_model import TtftModel
from shepherd.sim.engine import Engine, EngineParams
from shepherd.workers.worker import Worker

BS = 16


def workers(n: int) -> list[Worker]:
    return [Worker(id=f"id{i}", url=f"grpc://w{i}", model_ids=("m",)) for i in range(n)]


def tokens_request(tokens: list[int], stream: bool = True) -> RoutingRequest:
    return RoutingRequest("/v1/chat/completions", {"stream": stream}, {}, text="x", tokens=tokens)


def engine_store(index: KvIndex, worker_id: str, tokens: list[int], salt: int = 99) -> list[int]:
    """Store `tokens` as an engine would report it: its own hashes (salted), parent links, token ids."""
    hashes, blocks, parent = [], [], salt
    for start in range(0, len(tokens) - BS + 1, BS):
        parent = hash((parent, tuple(tokens[start:start + BS])))
        hashes.append(parent)
        blocks.append((parent, tokens[start:start + BS]))
    index.stored(worker_id, None, blocks, BS)
    index.set_live(worker_id, True)
    return hashes


def live_fleet(count: int, rng: random.Random | None = None) -> tuple[KvIndex, PreciseCachePolicy, list[Worker]]:
    """An index, a precise_cache policy reading it, and `count` workers whose event streams are live."""
    index = KvIndex(BS)
    policy = PreciseCachePolicy(PolicyOptions(), index, rng)
    pool = workers(count)
    for worker in pool:
        index.set_live(worker.id, True)
    return index, policy, pool


PROMPT = list(range(1000, 1320))  # 20 blocks


# -- the index ---------------------------------------------------------------------------------

def test_index_names_blocks_from_token_ids_whatever_the_engine_hash() -> None:
    index = KvIndex(BS)
    engine_store(index, "a", PROMPT, salt=1)
    engine_store(index, "b", PROMPT[:160], salt=2)  # another engine, another hash scheme
    matched = index.matched_blocks(prompt_blocks(PROMPT, BS), ["a", "b", "c"])
    assert matched == {"a": 20, "b": 10, "c": 0}


def test_removed_blocks_stop_matching_and_an_unknown_parent_is_not_guessed() -> None:
    index = KvIndex(BS)
    hashes = engine_store(index, "a", PROMPT)
    index.removed("a", hashes[5:])
    assert index.matched_blocks(prompt_blocks(PROMPT, BS), ["a"]) == {"a": 5}
    index.stored("a", 123456, [(1, PROMPT[:BS])], BS)  # its parent's store was never seen
    assert index.stats()["a"]["unnamed"] == 1
    index.clear("a")
    assert index.blocks("a") == 0 and index.matched_blocks(prompt_blocks(PROMPT, BS), ["a"]) == {"a": 0}


def _batch(seq: int, stored: list[int] | None = None, snapshot: bool = False) -> KvBatch:
    """A gRPC KvEventBatch as the gRPC subscriber decodes it."""
    events = []
    if stored is not None:
        blocks = [common_pb2.KvBlock(block_hash=seq * 1000 + i, token_ids=stored[i * BS:(i + 1) * BS], block_size=BS)
                  for i in range(len(stored) // BS)]
        events.append(common_pb2.KvCacheEvent(stored=common_pb2.KvBlocksStored(blocks=blocks)))
    batch = common_pb2.KvEventBatch(sequence_number=seq, events=events)
    if snapshot:
        batch.snapshot.CopyFrom(common_pb2.KvSnapshotChunk(index=0, count=1))
    return grpc_batch(batch)


def test_a_sequence_gap_distrusts_the_worker_and_asks_for_a_replay() -> None:
    index = KvIndex(BS)
    stream = EventStream("a", index)
    stream.subscribed(0)
    stream.apply(_batch(5, PROMPT[:32], snapshot=True))
    stream.apply(_batch(6, PROMPT[32:64]))
    assert index.is_live("a") and stream.start_sequence() == 7
    with pytest.raises(Resubscribe) as again:
        stream.apply(_batch(9, PROMPT[64:96]))
    assert again.value.start == 7 and not index.is_live("a")
    stream.subscribed(7)
    with pytest.raises(Resubscribe) as rebuild:  # the replay does not reach back: start over
        stream.apply(_batch(10))
    assert rebuild.value.start == 0 and index.blocks("a") == 0
    stream.subscribed(0)
    stream.apply(_batch(10, PROMPT[:16], snapshot=True))
    assert index.is_live("a") and index.blocks("a") == 1


def test_a_repeat_or_heartbeat_changes_nothing() -> None:
    index = KvIndex(BS)
    stream = EventStream("a", index)
    stream.subscribed(0)
    stream.apply(_batch(3, PROMPT[:32], snapshot=True))
    stream.apply(_batch(3))
    assert index.blocks("a") == 2 and stream.start_sequence() == 4


def test_the_simulated_engine_publishes_stores_evictions_and_clears() -> None:
    engine = Engine(EngineParams(kv_capacity_tokens=640, block_size=BS))
    subscription = engine.events.subscribe(0, engine.snapshot_events)
    for offset in range(4):  # four 320-token prompts into a 640-token cache
        engine.enqueue([offset * 10_000 + i for i in range(320)], 1, [1])
        while engine.has_work:
            engine.step()
    assert subscription.initial[0].snapshot
    batches = []
    while not subscription.queue.empty():
        batches.append(subscription.queue.get_nowait())
    kinds = Counter(event[0] for batch in batches if batch for event in batch.events)
    assert kinds["stored"] >= 4 and kinds["removed"] >= 1
    assert [b.seq for b in batches if b] == sorted(b.seq for b in batches if b)
    engine.flush_cache()
    assert subscription.queue.get_nowait().events == [("cleared",)]  # type: ignore[union-attr]


def test_eviction_takes_a_prefix_tail_before_its_head() -> None:
    engine = Engine(EngineParams(kv_capacity_tokens=640, block_size=BS))
    first = list(range(320))
    engine.enqueue(first, 1, [1])
    while engine.has_work:
        engine.step()
    engine.enqueue([50_000 + i for i in range(400)], 1, [1])  # the cache holds 640: 80 tokens must go
    while engine.has_work:
        engine.step()
    request = engine.enqueue(first, 1, [1])
    assert 0 < request.cached_tokens < 320  # the head survived, the tail went


# -- the cost model ----------------------------------------------------------------------------

def _noisy_engine(rng: random.Random, base: float, rate: float) -> tuple[int, float]:
    """An uncached prefill ahead and the TTFT an engine at `rate` tokens/s shows for it, with jitter."""
    tokens = rng.randint(0, 6000)
    return tokens, max(0.0, base + tokens / rate + rng.gauss(0.0, 0.01))


def test_the_model_learns_a_slower_engine_from_noisy_ttfts() -> None:
    model = TtftModel()
    rng = random.Random(1)
    for _ in range(600):  # 2,000 tokens/s and a 20 ms base, with 10 ms of jitter
        model.observe(*_noisy_engine(rng, 0.02, 2000))
    assert 1800 < 1 / model.per_token < 2200 and abs(model.base - 0.02) < 0.01


def test_the_estimates_stay_steady_under_noise_and_outliers() -> None:
    model = TtftModel()
    rng = random.Random(2)
    rates, bases = [], []
    for step in range(3000):
        tokens, ttft = _noisy_engine(rng, 0.01, 8000)
        if rng.random() < 0.05:
            ttft += rng.uniform(1.0, 30.0)  # a stalled request now and then
        model.observe(tokens, ttft)
        if step >= 1000:
            rates.append(1 / model.per_token)
            bases.append(model.base)
    assert min(rates) > 7000 and max(rates) < 9500  # within about 15% of the truth, all along
    assert max(bases) < 0.08


def test_a_direction_the_traffic_does_not_vary_stays_at_its_prior() -> None:
    model = TtftModel()
    rng = random.Random(3)
    for _ in range(2000):  # about 100 uncached tokens each time: base and rate cannot be told apart
        model.observe(rng.randint(95, 105), 0.02 + rng.gauss(0.0, 0.005))
    assert abs(model.predict(100) - 0.02) < 0.003  # what is observed is fitted
    assert 4000 < 1 / model.per_token < 16000  # the split between the two stays near the prior's


def test_the_model_ignores_impossible_observations_and_stays_physical() -> None:
    model = TtftModel()
    for _ in range(50):
        model.observe(4000, -1.0)
        model.observe(4000, 1e6)
        model.observe(-5, 0.1)
    assert model.observations == 0
    for _ in range(500):
        model.observe(100, 0.0)  # nothing costs time: still never negative, never free
        model.observe(5000, 0.0)
    assert model.base >= 0 and 1 / model.per_token <= 1e6
    for _ in range(500):
        model.observe(10, 500.0)  # everything stalls: bounded
    assert model.base <= 2.0 and 1 / model.per_token >= 100


# -- the policy --------------------------------------------------------------------------------

def test_policy_routes_to_the_engine_that_holds_the_prompt_not_the_one_that_was_sent_it() -> None:
    index, policy, pool = live_fleet(3)
    first = policy.select(pool, tokens_request(PROMPT))
    assert first is not None
    request = tokens_request(PROMPT)
    # The engine evicted it (the approximate tree still says `first`), and another engine holds it.
    index.clear(first.id)
    policy.first_token(1, 0.05)
    holder = next(w for w in pool if w is not first)
    engine_store(index, holder.id, PROMPT)
    assert policy.select(pool, request) is holder


def test_policy_falls_back_to_the_tree_for_a_worker_without_events() -> None:
    policy = PreciseCachePolicy(PolicyOptions(), KvIndex(BS))
    pool = workers(3)  # none live
    first = policy.select(pool, tokens_request(PROMPT))
    assert first is not None
    first_request_observer = policy._pending  # released on first token below
    assert first_request_observer
    policy.first_token(1, 0.05)
    assert policy.select(pool, tokens_request(PROMPT)) is first


def test_dispatched_prompts_count_as_held_and_queued_until_their_first_token() -> None:
    index, policy, pool = live_fleet(2)
    first = policy.select(pool, tokens_request(PROMPT))
    # Before any event arrives the same prefix follows its first request (the overlay).
    assert policy.select(pool, tokens_request(PROMPT)) is first
    # A burst of cold prompts spreads: each one queues prefill on the worker it went to.
    picks = Counter(policy.select(pool, tokens_request([7_000_000 * k + i for i in range(320)])).id  # type: ignore[union-attr]
                    for k in range(1, 9))
    assert set(picks.values()) == {4}


def test_a_hot_prefix_does_not_pile_onto_its_holder() -> None:
    index, policy, pool = live_fleet(4, random.Random(0))
    holder = pool[0]
    engine_store(index, holder.id, PROMPT)
    holder.load = 40
    for worker in pool[1:]:
        worker.load = 2
    assert policy.select(pool, tokens_request(PROMPT)) is not holder  # over the spill gate


def test_an_engine_reported_queue_counts_against_a_worker() -> None:
    index, policy, pool = live_fleet(2)
    engine_store(index, pool[0].id, PROMPT)
    index.set_load(pool[0].id, 200_000)  # another gateway's backlog, as its event stream reports it
    assert policy.select(pool, tokens_request(PROMPT)) is pool[1]


def test_a_failed_attempt_releases_its_queue_and_a_retry_replaces_it() -> None:
    policy = PreciseCachePolicy(PolicyOptions(), KvIndex(BS))
    pool = workers(2)
    request = tokens_request(PROMPT)
    policy.select(pool, request)
    policy.select(pool, request)  # the retry: the first attempt's ticket is released
    assert len(policy._pending) == 1
    assert request.observer is not None
    request.observer(None)
    assert not policy._pending and not policy._queued
    assert policy.model.observations == 0


def test_a_queue_that_drains_within_a_step_does_not_trade_away_a_hit() -> None:
    index, policy, pool = live_fleet(2)
    engine_store(index, pool[0].id, PROMPT)
    index.set_load(pool[0].id, 400)  # more than the whole prompt, less than its prefill as weighed
    assert policy.select(pool, tokens_request(PROMPT)) is pool[0]


def test_eviction_spares_the_blocks_of_running_requests() -> None:
    """A long answer's prompt blocks are the least recently used while it decodes, but a real engine
    holds them (vLLM's reference counts, SGLang's lock on the radix path): evicting them stored the
    answer's blocks under a parent the engine no longer had, which the index cannot name, and every
    later turn of that conversation was lost to the index."""
    engine = Engine(EngineParams(kv_capacity_tokens=1280, block_size=BS))
    subscription = engine.events.subscribe(0, engine.snapshot_events)
    index = KvIndex(BS)
    long_answer = engine.enqueue(list(range(320)), 64, list(range(5000, 5064)))
    others = 0
    while engine.has_work:
        if others < 10 and engine.num_waiting == 0:  # churn: short requests with distinct prompts
            others += 1
            engine.enqueue([others * 10_000 + i for i in range(160)], 1, [1])
        engine.step()
        while not subscription.queue.empty():
            batch = subscription.queue.get_nowait()
            assert batch is not None
            for event in batch.events:
                if event[0] == "stored":
                    index.stored("a", event[1], event[2], BS)
                elif event[0] == "removed":
                    index.removed("a", event[1])
    assert long_answer.generated == 64 and others == 10
    assert index.stats()["a"]["removed"] > 0  # the churn did evict
    assert index.stats()["a"]["unnamed"] == 0
    names = prompt_blocks(list(range(320)) + list(range(5000, 5064)), BS)
    assert index.matched_blocks(names, ["a"]) == {"a": len(names)}  # the whole conversation is held


def test_a_prompt_sent_while_a_stream_was_live_is_no_evidence_once_it_breaks() -> None:
    """What the gateway sent a live worker goes to the overlay, not the approximate tree: when the
    stream breaks, the break may have hidden the eviction of exactly those blocks."""
    index = KvIndex(BS)
    policy = PreciseCachePolicy(PolicyOptions(), index)
    first, second = workers(2)
    index.set_live(first.id, True)
    index.set_live(second.id, True)
    second.load = 5
    assert policy.select([first, second], tokens_request(PROMPT)) is first
    policy.first_token(1, 0.05)
    engine_store(index, second.id, PROMPT[:160])  # the other engine holds half the prompt
    index.gap(first.id)  # its stream broke: whatever it stored or dropped since is unknown
    assert policy.select([first, second], tokens_request(PROMPT)) is second


def test_a_holder_moderately_above_the_mean_keeps_its_prefix() -> None:
    """Above the spill gate's limit (here 16.7) but below both excesses stacked (21.8): the cost
    model, not the guard, decides, and a hit with a short queue beats a full prefill elsewhere."""
    index, policy, pool = live_fleet(4)
    holder = pool[0]
    for worker in pool:
        worker.load = 8
    engine_store(index, holder.id, PROMPT)
    holder.load = 17
    assert policy.select(pool, tokens_request(PROMPT)) is holder


def test_a_hot_prefix_is_copied_to_another_worker_instead_of_piling_onto_its_holder() -> None:
    """Every request is for the one document its holder has cached: each is a hit there, so neither
    the holder's queue nor its in-flight count ever shows a pile-on. Past MAX_SHARE of the fleet's
    recent decisions the next one is prefilled elsewhere, that worker holds the document too, and the
    document's requests are split between the holders: no worker above the cap, one miss per copy."""
    index, policy, pool = live_fleet(4)
    engine_store(index, pool[0].id, PROMPT)
    picks: list[str] = []
    misses = 0
    for ticket in range(1, 1001):
        chosen = policy.select(pool, tokens_request(PROMPT))
        assert chosen is not None
        if index.matched_blocks(prompt_blocks(PROMPT, BS), [chosen.id])[chosen.id] == 0:
            misses += 1
            engine_store(index, chosen.id, PROMPT)  # the engine prefilled it and reports the blocks
        policy.first_token(ticket, 0.02)
        picks.append(chosen.id)
    assert picks[:SHARE_MIN_DECISIONS] == [pool[0].id] * SHARE_MIN_DECISIONS  # a young window caps nothing
    recent = Counter(picks[-SHARE_WINDOW:])
    assert max(recent.values()) <= MAX_SHARE * SHARE_WINDOW / len(pool) + 1
    # Each copy cost one prefill and every other request was a hit; three holders at 1.4 x 1/4 each
    # can take the whole traffic, so the fourth worker is not made to copy it.
    assert misses == len(set(picks)) - 1 == 2
    assert policy.report()["share_capped"] > 0


def test_the_share_cap_never_leaves_out_the_only_candidate() -> None:
    index, policy, pool = live_fleet(2)
    engine_store(index, pool[0].id, PROMPT)
    for ticket in range(1, 201):  # the holder alone: nothing to spread to
        assert policy.select(pool[:1], tokens_request(PROMPT)) is pool[0]
        policy.first_token(ticket, 0.02)
    # Both candidates again: the holder took every recent decision, so the other one is picked.
    assert policy.select(pool, tokens_request(PROMPT)) is pool[1]
