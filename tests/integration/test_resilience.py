"""Fault injection with real simulator processes: failing workers never fail a request another could serve."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import threading
import time
from collections import Counter

import httpx
import openai
import orjson
import pytest

from shepherd.testing import Gateway, Sim, wait_until

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 30}


def _worker(gw: Gateway, url: str) -> dict:
    return next(w for w in gw.workers() if w["url"] == url)


def _served_by(gw: Gateway, count: int) -> set[str]:
    """The workers that answered `count` chats in a row (each must succeed)."""
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        responses = [http.post("/v1/chat/completions", json=CHAT) for _ in range(count)]
    assert [r.status_code for r in responses] == [200] * count
    return {r.headers["x-smg-routed-worker-id"] for r in responses}


def test_killed_worker_costs_no_request_and_comes_back() -> None:
    sims = [Sim(1) for _ in range(3)]
    urls = [s.urls[0] for s in sims]
    gw = Gateway(urls, "--policy", "round_robin", "--health-check-interval-secs", "0.2",
                 "--health-failure-threshold", "2", "--health-success-threshold", "1")
    try:
        statuses: Counter[int] = Counter()
        routed: list[tuple[float, str]] = []
        lock = threading.Lock()

        def one(_: int) -> None:
            with httpx.Client(timeout=30) as http:
                response = http.post(gw.url + "/v1/chat/completions", json=CHAT)
            with lock:
                statuses[response.status_code] += 1
                routed.append((time.monotonic(), response.headers.get("x-smg-routed-worker-id", "")))

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(one, i) for i in range(200)]
            wait_until(lambda: len(routed) >= 40, 30, message="traffic before the kill")
            sims[0].kill()
            wait_until(lambda: _worker(gw, urls[0])["status"] == "not_ready", 10, message="the health checker")
            marked_at = time.monotonic()
            for future in futures:
                future.result()
        assert statuses == Counter({200: 200}), statuses
        assert not [t for t, url in routed if url == urls[0] and t > marked_at + 0.05]

        sims[0] = Sim(1, ports=sims[0].ports)  # started again on the same port
        wait_until(lambda: _worker(gw, urls[0])["status"] == "ready", 10, message="the worker to come back")
        with httpx.Client(timeout=30) as http:
            back = {http.post(gw.url + "/v1/chat/completions", json=CHAT).headers["x-smg-routed-worker-id"]
                    for _ in range(6)}
        assert urls[0] in back
    finally:
        gw.stop()
        for sim in sims:
            sim.stop()


def test_a_silent_worker_that_refuses_a_connection_is_stalled_until_it_is_heard_from() -> None:
    sims = [Sim(1) for _ in range(2)]
    urls = [s.urls[0] for s in sims]
    # Probes that fail never take it out of rotation here (threshold 1000): only the stall does.
    gw = Gateway(urls, "--policy", "round_robin", "--worker-stall-secs", "0.3", "--disable-circuit-breaker",
                 "--health-check-interval-secs", "0.2", "--health-failure-threshold", "1000",
                 "--retry-initial-backoff-ms", "1")
    try:
        sims[0].kill()
        time.sleep(0.5)  # past --worker-stall-secs without contact (a precondition, not a measurement)
        assert _served_by(gw, 6) == {urls[1]}
        dead = _worker(gw, urls[0])
        assert dead["stalled"] is True and dead["status"] == "ready"
        assert gw.metric("smg_worker_exclusions_total", reason="stall") == 1

        sims[0] = Sim(1, ports=sims[0].ports)  # back on the same port: its first good probe re-admits it
        wait_until(lambda: not _worker(gw, urls[0])["stalled"], 10, message="the stalled worker's re-admission")
        assert urls[0] in _served_by(gw, 4)
    finally:
        gw.stop()
        for sim in sims:
            sim.stop()


def test_a_worker_four_deep_without_progress_is_wedged_until_its_pile_is_gone() -> None:
    sims = [Sim(1) for _ in range(2)]
    urls = [s.urls[0] for s in sims]
    gw = Gateway(urls, "--policy", "round_robin", "--worker-wedge-secs", "0.5", "--disable-health-check")
    try:
        sims[0].faults(hang=True)  # takes requests and never answers: nothing it holds makes progress

        def hung(_: int) -> int:
            try:
                return httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=4).status_code
            except httpx.TimeoutException:
                return 0

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(hung, i) for i in range(8)]  # round robin: four wait on the hung worker
            wait_until(lambda: _worker(gw, urls[0])["wedged"], 10, message="the wedge")
            assert _served_by(gw, 4) == {urls[1]}
            held = [f.result() for f in futures]
        assert sorted(held) == [0] * 4 + [200] * 4, held
        wait_until(lambda: not _worker(gw, urls[0])["wedged"], 10, message="the drained worker's re-admission")
        assert gw.metric("smg_worker_exclusions_total", reason="wedge") == 1
        sims[0].faults(hang=False)
        assert urls[0] in _served_by(gw, 4)
    finally:
        gw.stop()
        for sim in sims:
            sim.stop()


def test_bursts_of_500s_trip_the_breaker_and_it_recovers_through_half_open() -> None:
    sim = Sim(2)
    gw = Gateway(sim.urls, "--policy", "round_robin", "--disable-health-check", "--cb-failure-threshold", "3",
                 "--cb-success-threshold", "2", "--cb-timeout-duration-secs", "3", "--retry-initial-backoff-ms", "1")
    quick = {**CHAT, "max_tokens": 1}
    try:
        bad = sim.urls[0]
        sim.faults(0, error_rate=1.0, error_status=500)
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            for _ in range(10):  # retries move every failed attempt to the healthy worker
                assert http.post("/v1/chat/completions", json=quick).status_code == 200
            assert _worker(gw, bad)["circuit_breaker"]["state"] == "open"
            opened_at = time.monotonic()
            seen = sim.stats(0)["requests_total"]
            for _ in range(6):
                assert http.post("/v1/chat/completions", json=quick).headers["x-smg-routed-worker-id"] != bad
            assert time.monotonic() - opened_at < 3  # still within the open period
            assert sim.stats(0)["requests_total"] == seen  # traffic shifted away entirely

            sim.faults(0, error_rate=0.0)
            time.sleep(max(0.0, 3.1 - (time.monotonic() - opened_at)))  # the breaker's open timeout
            for _ in range(8):
                http.post("/v1/chat/completions", json=quick)
            assert _worker(gw, bad)["circuit_breaker"]["state"] == "closed"
            assert sim.stats(0)["requests_total"] > seen
    finally:
        gw.stop()
        sim.stop()


def test_stream_broken_by_the_worker_ends_with_a_clean_sse_error() -> None:
    sim = Sim(1)
    gw = Gateway(sim.urls)
    try:
        sim.faults(0, drop_after_chunks=3)
        body = {**CHAT, "stream": True}
        with httpx.Client(timeout=30) as http, http.stream("POST", gw.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        error = orjson.loads(events[-2])["error"]
        assert error["code"] == "upstream_stream_error" and "mid-stream" in error["message"]
        assert all(orjson.loads(e) for e in events[:-1])  # every event is whole, parseable JSON

        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIError, match="mid-stream"):
            for _ in client.chat.completions.create(model="mock-model", messages=CHAT["messages"], stream=True):
                pass
    finally:
        gw.stop()
        sim.stop()


def test_queue_overflow_queue_timeout_and_rate_limit() -> None:
    sim = Sim(1, "--engine", "canned", "--gen-ms", "800")
    gw = Gateway(sim.urls, "--max-concurrent-requests", "1", "--queue-size", "1", "--queue-timeout-secs", "0.3",
                 "--disable-retries")
    limited = Gateway(sim.urls, "--rate-limit-tokens-per-second", "2")
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            def post(delay: float) -> httpx.Response:
                time.sleep(delay)
                return httpx.post(gw.url + "/v1/completions", json={"model": "mock-model", "prompt": "x"}, timeout=10)

            running, queued, overflow = (pool.submit(post, d) for d in (0, 0.1, 0.2))
            overflow_response = overflow.result()
            assert overflow_response.status_code == 429
            assert overflow_response.json()["error"]["code"] == "admission_queue_full"
            assert overflow_response.headers["retry-after"]
            timed_out = queued.result()
            assert timed_out.status_code == 503 and timed_out.json()["error"]["code"] == "admission_queue_timeout"
            assert timed_out.headers["retry-after"]
            assert running.result().status_code == 200

        with concurrent.futures.ThreadPoolExecutor(6) as pool:  # six at once against two per second
            results = list(pool.map(lambda _: httpx.post(limited.url + "/v1/completions", timeout=10,
                                                         json={"model": "mock-model", "prompt": "x"}), range(6)))
        rejected = [r for r in results if r.status_code == 429]
        assert rejected and all(r.headers["retry-after"] for r in rejected)
        assert any(r.status_code == 200 for r in results)
        assert rejected[0].json()["error"]["code"] == "rate_limit_exceeded"
        # Every decision and every rejection is counted (these series used to be declared and never fed).
        assert gw.metric("smg_admission_queue_rejected_total", reason="full") == 1
        assert gw.metric("smg_admission_queue_rejected_total", reason="timeout") == 1
        assert limited.metric("smg_http_rate_limit_total", result="rejected") == len(rejected)
        assert limited.metric("smg_http_rate_limit_total", result="allowed") == 6 - len(rejected)
        assert limited.metric("smg_admission_queue_rejected_total", reason="rate") == len(rejected)
    finally:
        gw.stop()
        limited.stop()
        sim.stop()


def test_per_key_limits_hold_for_keys_sent_as_x_api_key() -> None:
    # Anthropic SDK clients send `x-api-key`, not `Authorization`: the per-key limit must see them too,
    # and a key is the same tenant whichever header carries it.
    sim = Sim(1, "--engine", "canned")
    gw = Gateway(sim.urls, "--api-key", "tenant-key", "--per-key-rate-limit-tokens-per-second", "0.2",
                 "--control-plane-api-keys", "ops:ops:admin:admin-key", admin_key="admin-key")
    try:
        body = {"model": "mock-model", "prompt": "x", "max_tokens": 2}
        first = httpx.post(gw.url + "/v1/completions", json=body, headers={"x-api-key": "tenant-key"}, timeout=10)
        assert first.status_code == 200
        again = httpx.post(gw.url + "/v1/completions", json=body, headers={"x-api-key": "tenant-key"}, timeout=10)
        assert again.status_code == 429 and again.json()["error"]["code"] == "key_rate_limit_exceeded"
        bearer = httpx.post(gw.url + "/v1/completions", json=body, timeout=10,
                            headers={"Authorization": "Bearer tenant-key"})
        assert bearer.status_code == 429  # the same key's bucket
        assert gw.metric("smg_admission_queue_rejected_total", reason="rate") == 2
    finally:
        gw.stop()
        sim.stop()


def test_sigterm_finishes_accepted_requests_and_refuses_new_ones() -> None:
    sim = Sim(1)
    gw = Gateway(sim.urls, "--shutdown-settle-secs", "0.5", "--shutdown-grace-period-secs", "20")
    try:
        results: list[tuple[int, str]] = []

        def stream() -> None:
            body = {**CHAT, "max_tokens": 150, "stream": True}
            with httpx.Client(timeout=30) as http, http.stream("POST", gw.url + "/v1/chat/completions",
                                                                 json=body) as response:
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            results.append((response.status_code, lines[-1]))

        threads = [threading.Thread(target=stream) for _ in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: sim.stats()["in_flight"] == 8, 10, message="8 streams in flight")
        os.kill(gw.proc.pid, signal.SIGTERM)
        wait_until(lambda: httpx.get(gw.url + "/readiness").status_code == 503, 5, message="readiness to fail")
        assert httpx.get(gw.url + "/readiness").json()["reason"] == "draining"
        time.sleep(0.8)  # past the settle window: the listener is closed
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", gw.port), timeout=2):
            pass
        for thread in threads:
            thread.join()
        assert results == [(200, "data: [DONE]")] * 8  # every accepted request completed
        assert gw.proc.wait(timeout=15) == 0
    finally:
        gw.stop()
        sim.stop()
