"""precise_cache against HTTP engines that publish KV events over ZMQ (vLLM's and SGLang's publisher:
PUB + replay ROUTER): the same index and sequence rules as the gRPC streams, through eviction, lost
batches (replayed, or with the replay socket gone, forgotten), and workers that declare no publisher."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shepherd.testing import Gateway, Sim, free_ports, wait_until

BS = 16
MODEL = "mock-model"


def ids(seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 29000) for _ in range(count)]


@pytest.fixture(scope="module")
def endpoints() -> list[tuple[str, str]]:
    ports = free_ports(4)
    return [(f"tcp://127.0.0.1:{ports[i]}", f"tcp://127.0.0.1:{ports[i + 2]}") for i in range(2)]


@pytest.fixture(scope="module")
def sim(endpoints: list[tuple[str, str]]) -> Iterator[Sim]:
    # A small cache (6,000 tokens) so that a few long prompts evict older ones; a short replay window.
    process = Sim(2, "--output-tokens", "4", "--kv-capacity-tokens", "6000", "--kv-event-replay", "8",
                  "--kv-events-endpoints", *(e for e, _ in endpoints),
                  "--kv-events-replay-endpoints", *(r for _, r in endpoints))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(sim: Sim, endpoints: list[tuple[str, str]]) -> Iterator[Gateway]:
    flags = [arg for url, (events, replay) in zip(sim.urls, endpoints, strict=True)
             for arg in ("--kv-events-endpoint", url, events, replay)]
    gw = Gateway(sim.urls, "--policy", "precise_cache", *flags, expect_workers=2)
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _reset(sim: Sim, gateway: Gateway) -> Iterator[None]:
    for index in range(2):
        kv_faults(sim, index, replay=True)
    sim.reset()  # flushes both caches: the gateway's index hears it as cleared
    wait_until(lambda: len(kv(gateway)) == 2 and all(w["live"] and w["blocks"] == 0 for w in kv(gateway).values()),
               20, message="both indexes live and empty")
    yield


def kv(gateway: Gateway) -> dict[str, Any]:
    """The index per worker URL."""
    by_id = {w["id"]: w["url"] for w in gateway.workers()}
    workers = httpx.get(gateway.url + "/kv_index", timeout=5).json()["workers"]
    return {by_id[worker_id]: state for worker_id, state in workers.items() if worker_id in by_id}


def generate(url: str, prompt: list[int]) -> tuple[str, int]:
    """(the worker that served it, cached prompt tokens); `url` is the gateway or one engine directly."""
    response = httpx.post(url + "/generate", json={"input_ids": prompt, "sampling_params": {"max_new_tokens": 2}},
                          timeout=30)
    assert response.status_code == 200, response.text
    return response.headers.get("x-smg-routed-worker-id", url), int(response.json()["meta_info"]["cached_tokens"])


def kv_faults(sim: Sim, index: int, **changes: Any) -> dict[str, Any]:
    response = httpx.post(sim.urls[index] + "/sim/kv_events", json=changes, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def engine_blocks(sim: Sim, url: str) -> int:
    return int(httpx.get(url + "/sim/kv_events", timeout=5).json()["cached_blocks"])


def other(sim: Sim, url: str) -> str:
    return next(u for u in sim.urls if u != url)


def test_an_http_workers_events_fill_the_index_and_an_eviction_is_not_routed_to(sim: Sim, gateway: Gateway) -> None:
    prompt = ids(1, 900)
    first, cached = generate(gateway.url, prompt)
    assert cached == 0
    wait_until(lambda: kv(gateway)[first]["blocks"] >= len(prompt) // BS, 10, message="the stored blocks")
    assert kv(gateway)[first]["blocks"] == engine_blocks(sim, first)
    again, cached = generate(gateway.url, prompt)
    assert again == first and cached > 0
    # `first` evicts the prompt under six other long ones; the other engine gets it behind our back.
    for seed in range(2, 8):
        generate(first, ids(seed * 100, 900))
    second = other(sim, first)
    generate(second, prompt)
    wait_until(lambda: kv(gateway)[first]["removed"] > 0 and kv(gateway)[second]["blocks"] >= len(prompt) // BS,
               10, message="the eviction and the new blocks to reach the index")
    routed, cached = generate(gateway.url, prompt)
    assert routed == second  # the approximate tree still says `first`, which dropped the prompt
    assert cached >= (len(prompt) // BS) * BS


def test_lost_batches_are_replayed_and_the_index_matches_the_engine(sim: Sim, gateway: Gateway) -> None:
    target = sim.urls[1]
    before = kv(gateway)[target]
    kv_faults(sim, 1, drop_batches=1)
    prompt = ids(5, 700)
    generate(target, prompt)  # its stored blocks never go out on the PUB socket
    generate(target, ids(6, 64))  # the next batch shows the gap
    wait_until(lambda: kv(gateway)[target]["gaps"] > before["gaps"] and kv(gateway)[target]["live"], 10,
               message="the gap to be noticed and the replay applied")
    wait_until(lambda: kv(gateway)[target]["blocks"] == engine_blocks(sim, target), 10,
               message="the replay to bring the index in line with the engine")
    assert kv(gateway)[target]["resyncs"] == before["resyncs"]  # replayed, not rebuilt
    routed, cached = generate(gateway.url, prompt)
    assert routed == target and cached > 0


def test_a_lost_batch_with_the_replay_socket_gone_clears_the_worker(sim: Sim, gateway: Gateway) -> None:
    prompt = ids(9, 600)
    first, _ = generate(gateway.url, prompt)
    wait_until(lambda: kv(gateway)[first]["blocks"] > 0, 10, message="the stored blocks")
    second = other(sim, first)
    generate(second, prompt)  # both engines hold the prompt now
    wait_until(lambda: kv(gateway)[second]["blocks"] > 0, 10, message="the second engine's blocks")
    index = sim.urls.index(first)
    resyncs = kv(gateway)[first]["resyncs"]
    kv_faults(sim, index, replay=False, drop_batches=1)
    httpx.post(first + "/flush_cache", timeout=5)  # `first` drops the prompt; the gateway never hears it
    assert engine_blocks(sim, first) == 0
    generate(first, ids(10, 64))  # the next batch shows the gap; the replay socket does not answer
    wait_until(lambda: kv(gateway)[first]["resyncs"] > resyncs, 15, message="the worker to be cleared")
    assert kv(gateway)[first]["blocks"] <= engine_blocks(sim, first)  # nothing stale is left
    for _ in range(3):
        routed, cached = generate(gateway.url, prompt)
        assert routed == second and cached > 0  # never to `first` on the strength of the lost eviction


def test_http_workers_without_a_publisher_are_routed_by_the_approximate_tree() -> None:
    quiet = Sim(2, "--output-tokens", "4")
    try:
        gw = Gateway(quiet.urls, "--policy", "precise_cache", expect_workers=2)
        try:
            prompt = ids(11, 800)
            first, cached = generate(gw.url, prompt)
            assert cached == 0
            for _ in range(3):
                routed, cached = generate(gw.url, prompt)
                assert routed == first and cached > 0
            assert httpx.get(gw.url + "/kv_index", timeout=5).json()["workers"] == {}  # nothing subscribed
        finally:
            gw.stop()
    finally:
        quiet.stop()


def chat(url: str, content: str) -> tuple[str, int]:
    body = {"model": MODEL, "messages": [{"role": "system", "content": "You answer briefly."},
                                         {"role": "user", "content": content}], "max_tokens": 2}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    return (response.headers.get("x-smg-routed-worker-id", url),
            int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0))


def test_chat_prompts_are_rendered_and_tokenized_as_the_engine_does_to_match_its_events() -> None:
    from shepherd.sim.grpc.main import default_tokenizer_path

    tokenizer = default_tokenizer_path()
    ports = free_ports(2)
    events = [f"tcp://127.0.0.1:{p}" for p in ports]
    engines = Sim(2, "--model", MODEL, "--output-tokens", "4", "--kv-capacity-tokens", "6000",
                  "--tokenizer-path", tokenizer, "--kv-events-endpoints", *events)
    try:
        flags = [a for url, e in zip(engines.urls, events, strict=True) for a in ("--kv-events-endpoint", url, e)]
        gw = Gateway(engines.urls, "--policy", "precise_cache", "--tokenizer-path", tokenizer, *flags,
                     expect_workers=2)
        try:
            content = " ".join(f"word{i}" for i in ids(21, 500))
            first, cached = chat(gw.url, content)
            assert cached == 0
            wait_until(lambda: kv(gw)[first]["blocks"] > 0 and kv(gw)[first]["live"], 10, message="the blocks")
            second = other(engines, first)
            httpx.post(first + "/flush_cache", timeout=5)  # `first` drops it; `second` gets it behind our back
            chat(second, content)
            wait_until(lambda: kv(gw)[first]["blocks"] == 0 and kv(gw)[second]["blocks"] > 0, 10,
                       message="the flush and the new blocks")
            routed, cached = chat(gw.url, content)
            assert routed == second and cached > 0  # the ids the gateway rendered are the engine's
        finally:
            gw.stop()
    finally:
        engines.stop()


def test_a_publisher_declared_by_patching_the_labels_is_followed(sim: Sim, endpoints: list[tuple[str, str]]) -> None:
    gw = Gateway(sim.urls, "--policy", "precise_cache", expect_workers=2)
    try:
        assert httpx.get(gw.url + "/kv_index", timeout=5).json()["workers"] == {}
        workers = {w["url"]: w["id"] for w in httpx.get(gw.url + "/workers", timeout=5).json()["workers"]}
        url, (events, replay) = sim.urls[0], endpoints[0]
        labels = {"kv_events_endpoint": events, "kv_events_replay_endpoint": replay}
        answer = httpx.patch(gw.url + f"/workers/{workers[url]}", json={"labels": labels}, timeout=5)
        assert answer.status_code == 200, answer.text
        wait_until(lambda: kv(gw).get(url, {}).get("live"), 20, message="the patched worker's events followed")
        generate(url, ids(12, 300))  # straight to the engine: its events reach the index
        wait_until(lambda: sum(w["blocks"] for w in kv(gw).values()) > 0, 20, message="blocks in the index")
        httpx.patch(gw.url + f"/workers/{workers[url]}", json={"labels": {}}, timeout=5)
        wait_until(lambda: kv(gw) == {}, 20, message="the publisher no longer followed once undeclared")
    finally:
        gw.stop()
