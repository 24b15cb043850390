"""The worker registry API, runtime add/remove under traffic, and model-based routing."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator

import httpx
import pytest

from shepherd.testing import Gateway, Sim, wait_until


@pytest.fixture
def empty_gateway() -> Iterator[Gateway]:
    gw = Gateway([], "--worker-drain-timeout-secs", "10")
    yield gw
    gw.stop()


def test_worker_crud(empty_gateway: Gateway, sims: Sim) -> None:
    with httpx.Client(base_url=empty_gateway.url, timeout=10) as http:
        added = http.post("/workers", json={"url": sims.urls[0] + "/", "labels": {"zone": "a"}, "api_key": "s3cret"})
        assert added.status_code == 202
        worker_id = added.json()["worker_id"]
        assert added.headers["location"] == f"/workers/{worker_id}"
        wait_until(lambda: http.get(f"/workers/{worker_id}").json()["status"] == "ready")

        info = http.get(f"/workers/{worker_id}").json()
        assert info["url"] == sims.urls[0] and info["model_id"] == "mock-model"
        assert info["labels"]["zone"] == "a" and info["runtime_type"] == "sglang"
        assert "api_key" not in info and "s3cret" not in http.get("/workers").text

        assert http.post("/workers", json={"url": sims.urls[0]}).status_code == 409
        assert http.post("/workers", json={"url": "ftp://nope"}).status_code == 400
        assert http.post("/workers", content=b"{oops").status_code == 400
        assert http.get("/workers/unknown-id").status_code == 404

        patched = http.patch(f"/workers/{worker_id}", json={"priority": 7, "labels": {"zone": "b"}})
        assert patched.status_code == 200 and patched.json()["priority"] == 7
        assert http.patch(f"/workers/{worker_id}", json={"url": "http://x"}).status_code == 400

        listing = http.get("/workers", params={"model": "mock-model"}).json()
        assert listing["total"] == 1 and listing["stats"]["regular_count"] == 1
        assert http.get("/workers", params={"model": "other"}).json()["total"] == 0

        # The worker key is sent upstream when the client sends none.
        http.post("/v1/completions", json={"model": "mock-model", "prompt": "x", "max_tokens": 1})
        seen = {k.lower(): v for k, v in sims.requests(0)[-1]["headers"].items()}
        assert seen["authorization"] == "Bearer s3cret"

        assert http.delete(f"/workers/{worker_id}").status_code == 202
        wait_until(lambda: http.get(f"/workers/{worker_id}").status_code == 404)
        assert http.get("/workers").json()["total"] == 0


def test_unreachable_worker_stays_pending_then_fails() -> None:
    gw = Gateway([], "--worker-startup-timeout-secs", "1")
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as http:
            worker_id = http.post("/workers", json={"url": "http://127.0.0.1:9"}).json()["worker_id"]
            assert http.get(f"/workers/{worker_id}").json()["status"] in ("pending", "failed")
            wait_until(lambda: http.get(f"/workers/{worker_id}").json()["status"] == "failed", 10)
            assert "attempt" in http.get(f"/workers/{worker_id}").json()["job_status"]["message"]
    finally:
        gw.stop()


def test_add_and_remove_workers_under_traffic(empty_gateway: Gateway, sims: Sim) -> None:
    """No client sees an error while workers join and leave; a removed worker gets no new traffic."""
    http = httpx.Client(base_url=empty_gateway.url, timeout=30)
    first = http.post("/workers", json={"url": sims.urls[0]}).json()["worker_id"]
    wait_until(lambda: http.get(f"/workers/{first}").json()["status"] == "ready")

    statuses: collections.Counter[int] = collections.Counter()
    workers_seen: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=empty_gateway.url, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/v1/chat/completions", json={
                    "model": "mock-model", "messages": [{"role": "user", "content": "go"}], "max_tokens": 20})
                statuses[response.status_code] += 1
                workers_seen[response.headers.get("x-smg-routed-worker-id", "")] += 1

    threads = [threading.Thread(target=traffic) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: sum(statuses.values()) > 20, 20, message="traffic on the first worker")
        second = http.post("/workers", json={"url": sims.urls[1]}).json()["worker_id"]
        wait_until(lambda: workers_seen[sims.urls[1]] > 10, 20, message="traffic on the added worker")
        assert http.delete(f"/workers/{first}").status_code == 202
        wait_until(lambda: http.get(f"/workers/{first}").status_code == 404, 20, message="the removal")
        served_by_first = sims.stats(0)["requests_total"]
        wait_until(lambda: workers_seen[sims.urls[1]] > 60, 30, message="more traffic after the removal")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) == {200}, statuses
    assert sims.stats(0)["requests_total"] == served_by_first  # nothing new reached the removed worker
    assert sims.stats(0)["aborted"] == 0  # the drain let in-flight requests finish
    assert http.get(f"/workers/{second}").json()["status"] == "ready"
    http.close()


def test_requests_go_only_to_workers_of_their_model(sims: Sim) -> None:
    other = Sim(1, "--model", "other-model")
    gw = Gateway([*sims.urls, *other.urls])
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as http:
            for _ in range(6):
                reply = http.post("/v1/completions", json={"model": "other-model", "prompt": "x", "max_tokens": 1})
                assert reply.headers["x-smg-routed-worker-id"] == other.urls[0]
                assert reply.json()["model"] == "other-model"
            routed = {http.post("/v1/completions", json={"model": "mock-model", "prompt": "x", "max_tokens": 1})
                      .headers["x-smg-routed-worker-id"] for _ in range(6)}
            assert routed == set(sims.urls)
            assert sorted(m["id"] for m in http.get("/v1/models").json()["data"]) == ["mock-model", "other-model"]
            # No model (SGLang /generate) may go to any worker.
            assert http.post("/generate", json={"text": "x", "max_new_tokens": 1}).status_code == 200
    finally:
        gw.stop()
        other.stop()


def test_fan_out_operations_and_engine_info(gateway: Gateway, sims: Sim) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        flushed = http.post("/flush_cache")
        assert flushed.status_code == 200 and sorted(flushed.json()["workers_flushed"]) == sorted(sims.urls)
        loads = http.get("/get_loads").json()
        assert loads["total_workers"] == 2 and loads["successful"] == 2
        assert all(row["details"]["loads"][0]["max_total_num_tokens"] > 0 for row in loads["loads"])
        assert http.get("/get_server_info").json()["served_model_name"] == "mock-model"
        assert http.get("/get_model_info").json()["model_path"] == "mock-model"
        assert http.get("/health_generate").status_code == 200
        ready = http.get("/readiness").json()
        assert ready == {"status": "ready", "healthy_workers": 2, "total_workers": 2}
        assert http.get("/health").text == "OK"


def test_flush_cache_partial_failure(sims: Sim) -> None:
    vllm = Sim(1, "--runtime", "vllm")  # vLLM has no /flush_cache route
    gw = Gateway([sims.urls[0], vllm.urls[0]])
    try:
        response = httpx.post(gw.url + "/flush_cache")
        assert response.status_code == 206
        body = response.json()
        assert body["status"] == "partial_success" and body["failed"][0]["url"] == vllm.urls[0]
        worker = next(w for w in gw.workers() if w["url"] == vllm.urls[0])
        assert worker["runtime_type"] == "vllm"
    finally:
        gw.stop()
        vllm.stop()
