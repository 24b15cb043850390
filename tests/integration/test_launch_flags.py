"""SMG launch flags Shepherd builds, end to end against one gateway: --model-alias, --sse-keepalive-secs,
--health-check-port, --stream-body-stall-timeout-secs."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from shepherd.testing import Gateway, Sim, free_ports

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Sim, Gateway]]:
    sim = Sim(1, "--prefill-tps", "40")
    probe_port = free_ports(1)[0]
    gw = Gateway(sim.urls, "--model-alias", "fast=mock-model", "--sse-keepalive-secs", "1",
                 "--health-check-port", str(probe_port), "--stream-body-stall-timeout-secs", "2", expect_workers=1)
    gw.probe_url = f"http://127.0.0.1:{probe_port}"  # type: ignore[attr-defined]
    try:
        yield sim, gw
    finally:
        gw.stop()
        sim.stop()


def test_an_alias_is_listed_and_served_as_its_model(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    listed = {card["id"]: card for card in httpx.get(gw.url + "/v1/models", timeout=5).json()["data"]}
    assert listed["fast"]["root"] == "mock-model" and "mock-model" in listed
    assert httpx.get(gw.url + "/v1/models/fast", timeout=5).json()["id"] == "fast"
    answer = httpx.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert answer.status_code == 200 and answer.json()["model"] == "mock-model"  # the worker saw the canonical id
    unknown = httpx.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert unknown.status_code == 404


def _raw_stream(gw: Gateway, content: str, max_tokens: int) -> list[str]:
    lines: list[str] = []
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=30, json={
            "model": "mock-model", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": True}) as response:
        assert response.status_code == 200
        lines.extend(line for line in response.iter_lines() if line)
    return lines


def test_a_stream_waiting_on_a_long_prefill_carries_keepalive_comments(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    lines = _raw_stream(gw, "word " * 100, 4)  # the sim's prefill: 100 tokens at 40 per second, 1 s frames
    first_token = next(i for i, line in enumerate(lines) if line.startswith("data: {") and
                       json.loads(line[6:])["choices"][0]["delta"].get("content"))
    assert ": keep-alive" in lines[:first_token]  # sent while the worker was silent
    assert lines[-1] == "data: [DONE]"


def test_a_stream_that_flows_carries_none(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    lines = _raw_stream(gw, "hi", 60)  # a token every few milliseconds
    assert len(lines) > 60 and ": keep-alive" not in lines


def test_the_probe_port_answers_liveness_and_readiness(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    probes = gw.probe_url  # type: ignore[attr-defined]
    ready = httpx.get(probes + "/readiness", timeout=5)
    assert ready.status_code == 200 and ready.json()["healthy_workers"] == 1
    assert httpx.get(probes + "/liveness", timeout=5).text == "OK"
    assert httpx.get(probes + "/health", timeout=5).text == "OK"
    assert httpx.get(probes + "/v1/models", timeout=5).status_code == 404  # the probe routes only


def _upload(gw: Gateway, body: bytes, parts: int, pause: float) -> bytes:
    """POST `body` in `parts` pieces with `pause` seconds between them; the raw answer."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:  # 15: a bound, not under test
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        size = -(-len(body) // parts)
        for start in range(0, len(body), size):
            sock.sendall(body[start:start + size])
            time.sleep(pause)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_a_body_that_stalls_is_refused_and_one_that_trickles_is_not(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    body = json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 2}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:20])  # and nothing more
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"request_body_stalled"' in answer
    trickled = _upload(gw, body, 10, 0.3)  # 3 s in all, more than the stall bound, but never silent for long
    assert trickled.startswith(b"HTTP/1.1 200"), trickled[:200]
