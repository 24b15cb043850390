"""Policies, the load monitor and data-parallel routing, through real gateway and engine processes."""

from __future__ import annotations

from collections import Counter

import httpx

from shepherd.testing import Gateway, Sim, wait_until


def _chat(http: httpx.Client, text: str, **headers: str) -> httpx.Response:
    response = http.post("/v1/chat/completions", headers=headers, json={
        "model": "mock-model", "messages": [{"role": "user", "content": text}], "max_tokens": 2})
    assert response.status_code == 200, response.text
    return response


def test_cache_aware_keeps_conversations_on_warm_workers() -> None:
    sim = Sim(3, "--model", "mock-model")
    gw = Gateway(sim.urls, "--policy", "cache_aware")
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            history = " ".join(f"word{i}" for i in range(200))
            routed = set()
            cached = []
            for turn in range(5):
                history += f" turn {turn} question"
                reply = _chat(http, history)
                routed.add(reply.headers["x-smg-routed-worker-id"])
                cached.append(reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
            assert len(routed) == 1  # the conversation stayed where its prefix is cached
            assert cached[0] == 0 and all(c >= 192 for c in cached[1:])
    finally:
        gw.stop()
        sim.stop()


def test_consistent_hashing_routes_by_routing_key_header() -> None:
    sim = Sim(3)
    gw = Gateway(sim.urls, "--policy", "consistent_hashing", "--routing-key-headers", "x-session-id",
                 "x-smg-routing-key")
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            for session in ("alpha", "beta", "gamma", "delta"):
                targets = {_chat(http, "hi", **{"x-session-id": session}).headers["x-smg-routed-worker-id"]
                           for _ in range(4)}
                assert len(targets) == 1
    finally:
        gw.stop()
        sim.stop()


def test_load_monitor_feeds_least_load() -> None:
    sim = Sim(2, "--model", "mock-model")
    gw = Gateway(sim.urls, "--policy", "least_load", "--load-monitor-interval", "0.2")
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            wait_until(lambda: all("engine_load" in w for w in gw.workers()), 10, message="load reports")
            report = gw.workers()[0]["engine_load"]
            assert report["max_tokens"] == 524288 and report["seq"] >= 1
            counts = Counter(_chat(http, f"request {i}").headers["x-smg-routed-worker-id"] for i in range(20))
            assert set(counts) == set(sim.urls)
    finally:
        gw.stop()
        sim.stop()


def test_dp_aware_routes_each_rank() -> None:
    sim = Sim(1, "--dp-size", "4")
    gw = Gateway(sim.urls, "--dp-aware", "--policy", "round_robin", expect_workers=4)
    try:
        workers = gw.workers()
        assert sorted(w["url"] for w in workers) == [f"{sim.urls[0]}@{r}" for r in range(4)]
        assert {w["dp_size"] for w in workers} == {4}
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            routed = Counter(_chat(http, f"q{i}").headers["x-smg-routed-worker-id"] for i in range(8))
            assert set(routed.values()) == {2}
            assert sim.stats()["requests_by_rank"] == [2, 2, 2, 2]
            # The rank travels in the body: the one change the gateway makes to it.
            assert '"data_parallel_rank":' in sim.requests()[-1]["body"]
            # Removing one rank removes the whole engine.
            assert http.delete(f"/workers/{workers[0]['id']}").status_code == 202
            wait_until(lambda: gw.workers() == [], 10, message="all ranks removed")
    finally:
        gw.stop()
        sim.stop()
