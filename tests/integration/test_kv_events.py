"""precise_cache against gRPC engines that publish KV events: the gateway routes by what the engines
really hold, through eviction, lost event batches, dropped streams, and engines without events."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from smg_grpc_proto import sglang_scheduler_pb2 as pb
from smg_grpc_proto import sglang_scheduler_pb2_grpc as pb_grpc

from shepherd.testing import Gateway, GrpcSim, wait_until

MODEL = "qwen3-kv"
WORDS = "river mountain garden window silver morning quiet bright gentle harbor lantern meadow orbit".split()


def words(seed: int, count: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))


@pytest.fixture(scope="module")
def sim() -> Iterator[GrpcSim]:
    # A small cache (6,000 tokens) so that a few long prompts evict the older ones; a short replay
    # window so that a long loss needs a snapshot.
    process = GrpcSim(2, "--model", MODEL, "--output-tokens", "4", "--kv-capacity-tokens", "6000",
                      "--kv-event-replay", "8")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(sim: GrpcSim) -> Iterator[Gateway]:
    gw = Gateway(sim.targets, "--policy", "precise_cache", expect_workers=2)
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _reset(sim: GrpcSim, gateway: Gateway) -> Iterator[None]:
    sim.reset()  # flushes both caches: the gateway's index hears it as cleared
    wait_until(lambda: all(w["live"] and w["blocks"] == 0 for w in kv(gateway).values()) and len(kv(gateway)) == 2,
               20, message="both indexes live and empty")
    yield


def kv(gateway: Gateway) -> dict[str, Any]:
    """The index per worker URL."""
    ids = {w["id"]: w["url"] for w in gateway.workers()}
    workers = httpx.get(gateway.url + "/kv_index", timeout=5).json()["workers"]
    return {ids[worker_id]: state for worker_id, state in workers.items() if worker_id in ids}


def chat(gateway: Gateway, content: str) -> tuple[str, int]:
    """(the worker that served it, cached prompt tokens), streamed so the gateway sees a first token."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        text = response.read().decode()
        worker = response.headers["x-smg-routed-worker-id"]
    cached = 0
    for line in text.splitlines():
        if line.startswith("data: {") and '"usage":{' in line:
            usage = json.loads(line[6:])["usage"]
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return worker, cached


def index_of(sim: GrpcSim, url: str) -> int:
    return sim.targets.index(url)


def last_input_ids(sim: GrpcSim, index: int) -> list[int]:
    return list(sim.requests(index)[-1]["input_ids"])


def generate(sim: GrpcSim, index: int, ids: list[int]) -> None:
    """Put a prompt straight into one engine's cache, behind the gateway's back (another gateway's traffic)."""
    with grpc.insecure_channel(sim.targets[index].removeprefix("grpc://")) as channel:
        stub = pb_grpc.SglangSchedulerStub(channel)
        request = pb.GenerateRequest(
            request_id=f"direct-{random.random()}", tokenized=pb.TokenizedInput(input_ids=ids),
            sampling_params=pb.SamplingParams(max_new_tokens=1, temperature=1, top_p=1, top_k=-1,
                                              repetition_penalty=1, n=1))
        list(stub.Generate(request, timeout=10))


def engine_blocks(sim: GrpcSim, index: int) -> int:
    return int(httpx.get(sim.controls[index] + "/sim/kv_events", timeout=5).json()["cached_blocks"])


def kv_faults(sim: GrpcSim, index: int, **changes: Any) -> dict[str, Any]:
    return httpx.post(sim.controls[index] + "/sim/kv_events", json=changes, timeout=5).json()


def other(sim: GrpcSim, url: str) -> str:
    return next(u for u in sim.targets if u != url)


def test_a_request_follows_the_engines_cache_not_what_the_gateway_sent(sim: GrpcSim, gateway: Gateway) -> None:
    prompt = words(1, 900)
    first, cached = chat(gateway, prompt)
    assert cached == 0
    again, cached = chat(gateway, prompt)
    assert again == first and cached > 0  # the engine's events put the prompt on `first`
    ids = last_input_ids(sim, index_of(sim, first))
    # `first` evicts the prompt under six other long ones; the other engine gets it behind our back.
    for seed in range(2, 8):
        generate(sim, index_of(sim, first), [t + seed for t in ids])
    second = other(sim, first)
    generate(sim, index_of(sim, second), ids)
    wait_until(lambda: kv(gateway)[first]["removed"] > 0 and kv(gateway)[second]["blocks"] >= len(ids) // 16,
               10, message="the eviction and the new blocks to reach the index")
    routed, cached = chat(gateway, prompt)
    assert routed == second  # the approximate tree still says `first`, which dropped the prompt
    assert cached >= (len(ids) // 16) * 16


def test_lost_batches_are_replayed_and_the_index_matches_the_engine(sim: GrpcSim, gateway: Gateway) -> None:
    prompt = words(5, 700)
    first, _ = chat(gateway, prompt)
    ids = last_input_ids(sim, index_of(sim, first))
    second = other(sim, first)
    kv_faults(sim, index_of(sim, second), drop_batches=1)
    generate(sim, index_of(sim, second), ids)  # its stored events never reach the gateway
    generate(sim, index_of(sim, second), ids[:40] + [7, 7, 7] * 20)  # the next batch shows the gap
    wait_until(lambda: kv(gateway)[second]["gaps"] >= 1 and kv(gateway)[second]["live"], 10,
               message="the gap to be noticed and the stream resumed")
    wait_until(lambda: kv(gateway)[second]["blocks"] == engine_blocks(sim, index_of(sim, second)), 10,
               message="the replay to bring the index in line with the engine")
    sim.reset()  # flush both; then only `second` gets the prompt again, directly
    wait_until(lambda: all(w["blocks"] == 0 for w in kv(gateway).values()), 10, message="the flush")
    generate(sim, index_of(sim, second), ids)
    wait_until(lambda: kv(gateway)[second]["blocks"] > 0, 10, message="the new blocks")
    routed, cached = chat(gateway, prompt)
    assert routed == second and cached > 0


def test_a_loss_beyond_the_replay_window_is_resynchronised_from_a_snapshot(sim: GrpcSim, gateway: Gateway) -> None:
    target = sim.targets[0]
    before = kv(gateway)[target]["resyncs"]
    kv_faults(sim, 0, drop_batches=12)
    for seed in range(12):  # more lost batches than the engine replays (8)
        generate(sim, 0, [(seed * 131 + i) % 5000 + 10 for i in range(64)])
    generate(sim, 0, [9] * 64)
    wait_until(lambda: kv(gateway)[target]["resyncs"] > before and kv(gateway)[target]["live"], 10,
               message="a snapshot resync")
    wait_until(lambda: kv(gateway)[target]["blocks"] == engine_blocks(sim, 0) > 0, 10,
               message="the index to match the engine")


def test_a_dropped_stream_reconnects_and_catches_up(sim: GrpcSim, gateway: Gateway) -> None:
    prompt = words(9, 600)
    first, _ = chat(gateway, prompt)
    ids = last_input_ids(sim, index_of(sim, first))
    second = other(sim, first)
    assert kv_faults(sim, index_of(sim, second), disconnect=True)["disconnected"] == 1
    generate(sim, index_of(sim, second), ids)  # while the gateway reconnects
    wait_until(lambda: kv_faults(sim, index_of(sim, second))["subscribers"] == 1, 10, message="the reconnection")
    wait_until(lambda: kv(gateway)[second]["live"] and kv(gateway)[second]["blocks"] > 0, 10,
               message="the missed blocks to be replayed")
    httpx.post(sim.controls[index_of(sim, first)] + "/sim/reset", timeout=5)  # `first` forgets the prompt
    wait_until(lambda: kv(gateway)[first]["blocks"] == 0, 10, message="the flush")
    routed, cached = chat(gateway, prompt)
    assert routed == second and cached > 0


def test_workers_without_events_are_routed_by_the_approximate_tree() -> None:
    quiet = GrpcSim(2, "--model", MODEL, "--output-tokens", "4", "--no-kv-events")
    try:
        gw = Gateway(quiet.targets, "--policy", "precise_cache", expect_workers=2)
        try:
            prompt = words(11, 800)
            first, cached = chat(gw, prompt)
            assert cached == 0
            for _ in range(3):
                routed, cached = chat(gw, prompt)
                assert routed == first and cached > 0
            assert httpx.get(gw.url + "/kv_index", timeout=5).json()["workers"] == {}  # nothing subscribed
        finally:
            gw.stop()
    finally:
        quiet.stop()
