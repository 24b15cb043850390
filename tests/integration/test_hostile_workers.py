"""Workers that misbehave (raw-socket fakes) or come and go (simulator processes), through a real gateway."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from shepherd.testing import Gateway, Sim, wait_until
from tests.fake_worker import FakeWorker, json_answer

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def _endless_headers(path: str, conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for i in range(200_000):  # 20,000 would do; the gateway must hang up long before the end
        conn.sendall(b"X-Header-%d: %s\r\n" % (i, b"v" * 64))


def _two_answers(path: str, conn: socket.socket) -> None:
    conn.sendall(json_answer({"answer": "first"}) + json_answer({"answer": "SECOND, never asked for"}))


def _cookie(path: str, conn: socket.socket) -> None:
    conn.sendall(json_answer({"answer": "ok"}, extra=b"Set-Cookie: session=worker-3; Path=/\r\nX-Engine: fake\r\n"))


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeWorker]]:
    workers = {"headers": FakeWorker(_endless_headers, "endless-headers"),
               "twice": FakeWorker(_two_answers, "two-answers"),
               "cookie": FakeWorker(_cookie, "cookie-model")}
    yield workers
    for worker in workers.values():
        worker.close()


@pytest.fixture(scope="module")
def fake_gateway(fakes: dict[str, FakeWorker]) -> Iterator[Gateway]:
    gw = Gateway([w.url for w in fakes.values()], "--disable-retries", "--request-timeout-secs", "30",
                 routed_worker_header=None)
    yield gw
    gw.stop()


def test_endless_response_headers_are_a_prompt_502(fake_gateway: Gateway) -> None:
    response = httpx.post(fake_gateway.url + "/v1/chat/completions", json={**CHAT, "model": "endless-headers"},
                          timeout=60)
    # Before the fix the gateway buffered headers until the worker gave up (and its memory grew).
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "call_upstream_connection_failed"
    assert "response headers" in response.json()["error"]["message"]
    assert httpx.get(fake_gateway.url + "/health").status_code == 200  # and it keeps serving


def test_a_second_response_on_the_connection_never_reaches_the_client(fake_gateway: Gateway) -> None:
    with httpx.Client(base_url=fake_gateway.url, timeout=10) as http:
        for _ in range(3):
            response = http.post("/v1/chat/completions", json={**CHAT, "model": "two-answers"})
            assert response.status_code == 200
            assert response.json() == {"answer": "first"}  # before the fix: the second answer appended


def test_worker_cookies_stay_behind_the_gateway(fake_gateway: Gateway, fakes: dict[str, FakeWorker]) -> None:
    response = httpx.post(fake_gateway.url + "/v1/chat/completions", json={**CHAT, "model": "cookie-model"})
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    assert response.headers["x-engine"] == "fake"  # other engine headers still pass
    # The routed-worker header names the worker by its id, not by its internal URL.
    routed = response.headers["x-smg-routed-worker-id"]
    worker = next(w for w in fake_gateway.workers() if w["url"] == fakes["cookie"].url)
    assert routed == worker["id"] and "127.0.0.1" not in routed


def test_routed_worker_header_can_be_turned_off() -> None:
    sim = Sim(1, "--engine", "canned", "--gen-ms", "0")
    gw = Gateway(sim.urls, routed_worker_header="none")
    try:
        response = httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "model": "mock-model"})
        assert response.status_code == 200 and "x-smg-routed-worker-id" not in response.headers
        with httpx.stream("POST", gw.url + "/v1/chat/completions",
                          json={**CHAT, "model": "mock-model", "stream": True}) as streamed:
            assert streamed.status_code == 200 and "x-smg-routed-worker-id" not in streamed.headers
    finally:
        gw.stop()
        sim.stop()


@pytest.fixture(scope="module")
def sim_gateway() -> Iterator[tuple[Sim, Gateway]]:
    sim = Sim(1, "--engine", "canned", "--gen-ms", "0")
    gw = Gateway(sim.urls, "--request-timeout-secs", "20")
    yield sim, gw
    gw.stop()
    sim.stop()


def test_a_non_streamed_answer_over_one_mebibyte(sim_gateway: tuple[Sim, Gateway]) -> None:
    _, gw = sim_gateway
    body = {"model": "mock-model", "input": [f"text number {i}" for i in range(60)], "dimensions": 1024}
    response = httpx.post(gw.url + "/v1/embeddings", json=body, timeout=60)
    # Before the fix: a hang until --request-timeout-secs, then 504.
    assert response.status_code == 200, response.text
    assert len(response.content) > 1 << 20
    assert [item["index"] for item in response.json()["data"]] == list(range(60))


@pytest.mark.parametrize("path, body", [
    ("/v1/classify", {"input": ["a", False]}),
    ("/v1/classify", {"input": 3}),
    ("/v1/rerank", {"query": "q", "documents": ["a", {"not": "text"}]}),
    ("/v1/embeddings", {"input": ["a", None]}),
    ("/v1/embeddings", {"input": "a", "dimensions": "many"}),
])
def test_engine_style_400_for_non_string_inputs(sim_gateway: tuple[Sim, Gateway], path: str, body: dict) -> None:
    sim, gw = sim_gateway
    direct = httpx.post(sim.urls[0] + path, json={"model": "mock-model", **body})
    assert direct.status_code == 400 and direct.json()["object"] == "error"  # before the fix: 500
    relayed = httpx.post(gw.url + path, json={"model": "mock-model", **body})
    assert relayed.status_code == 400


def _breaker(gw: Gateway, url: str) -> str:
    worker = next(w for w in gw.workers() if w["url"] == url)
    return str(worker["circuit_breaker"]["state"])


def test_a_restarted_worker_is_back_within_a_health_interval() -> None:
    sims = [Sim(1, "--engine", "canned", "--gen-ms", "0") for _ in range(2)]
    urls = [s.urls[0] for s in sims]
    # The breaker would stay open for 10 minutes on its own; only the health checker can bring it back.
    gw = Gateway(urls, "--health-check-interval-secs", "0.5", "--health-failure-threshold", "3",
                 "--health-success-threshold", "1", "--cb-failure-threshold", "1",
                 "--cb-timeout-duration-secs", "600")
    chat = {**CHAT, "model": "mock-model"}
    try:
        sims[1].kill()
        with httpx.Client(base_url=gw.url, timeout=10) as http:
            wait_until(lambda: http.post("/v1/chat/completions", json=chat).status_code == 200
                       and _breaker(gw, urls[1]) == "open", 15, 0.1, "the dead worker's breaker to open")
            sims[1] = Sim(1, "--engine", "canned", "--gen-ms", "0", ports=sims[1].ports)

            def served_by_restarted() -> bool:
                http.post("/v1/chat/completions", json=chat)
                return sims[1].stats()["requests_total"] > 0

            wait_until(served_by_restarted, 15, 0.1, "the restarted worker to serve again")
            wait_until(lambda: http.post("/v1/chat/completions", json=chat).status_code == 200
                       and _breaker(gw, urls[1]) == "closed", 15, 0.1, "its breaker to close on good trials")
    finally:
        gw.stop()
        for sim in sims:
            sim.stop()
