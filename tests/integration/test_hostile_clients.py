"""Clients that attack the gateway: slow or huge bodies, slowloris heads, forged log lines, broken HTTP,
unbounded metric labels, and the admin API's default."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from shepherd.testing import Gateway, Sim, free_ports, wait_until
from shepherd.testing.processes import ROOT

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    worker = Sim(1, "--engine", "canned", "--gen-ms", "0")
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def gw(sim: Sim) -> Iterator[Gateway]:
    gateway = Gateway(sim.urls, "--max-concurrent-requests", "2", "--queue-size", "0",
                      "--body-read-timeout-secs", "2", "--header-read-timeout-secs", "1",
                      "--idle-connection-timeout-secs", "2", "--max-payload-size", "1M",
                      "--max-buffered-request-bytes", "1M")
    yield gateway
    gateway.stop()


def _connect(gw: Gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.settimeout(15)  # a bound for a broken gateway, not a timing under test
    return sock


def _response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _partial_upload(gw: Gateway, length: int, sent: bytes = b'{"model": ') -> socket.socket:
    sock = _connect(gw)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % length + sent)
    return sock


def _in_flight(gw: Gateway) -> float:
    text = httpx.get(gw.metrics_url, timeout=10).text
    return float(re.search(r"^smg_http_connections_active (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def test_slow_bodies_hold_no_admission_slot_and_time_out(gw: Gateway) -> None:
    slow = [_partial_upload(gw, 1000) for _ in range(4)]  # twice --max-concurrent-requests
    try:
        wait_until(lambda: _in_flight(gw) >= 4, 10, 0.05, "the uploads to be under way")
        with httpx.Client(base_url=gw.url, timeout=15) as http:
            statuses = [http.post("/v1/chat/completions", json=CHAT).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 200]  # before the fix: 429, the slots held by the uploads
        for sock in slow:  # and the uploads end with a 408 once --body-read-timeout-secs is over
            answer = _response(sock)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b'"code":"request_body_timeout"' in answer
    finally:
        for sock in slow:
            sock.close()


def test_request_bodies_share_one_memory_budget(sim: Sim) -> None:
    gateway = Gateway(sim.urls, "--max-payload-size", "1M", "--max-buffered-request-bytes", "1M")
    big = _partial_upload(gateway, 800 * 1024)  # reserves 800 KiB of the 1 MiB budget before reading
    payload = {**CHAT, "padding": "x" * (300 * 1024)}
    try:
        with httpx.Client(base_url=gateway.url, timeout=15) as http:
            def status() -> int:
                return http.post("/v1/chat/completions", json=payload).status_code

            wait_until(lambda: status() == 503, 10, 0.05, "the budget to be taken")
            refused = http.post("/v1/chat/completions", json=payload)
            assert refused.status_code == 503  # before the fix: 200, whatever the other bodies held
            assert refused.json()["error"]["code"] == "request_bodies_over_budget"
            assert refused.headers["retry-after"] == "1"
            big.close()  # its reservation is given back when its request ends
            wait_until(lambda: status() == 200, 10, 0.05, "the budget to be given back")
            chunked = http.post("/v1/chat/completions", content=iter([b"x" * (600 * 1024)] * 2))
            assert chunked.status_code == 413  # chunked: counted as it arrives, refused past the payload limit
    finally:
        big.close()
        gateway.stop()


def test_slowloris_heads_and_idle_connections_are_closed(gw: Gateway) -> None:
    slow_head = _connect(gw)
    slow_head.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
    idle = _connect(gw)  # never sends a byte
    answer = _response(slow_head)
    assert answer.startswith(b"HTTP/1.1 408") and b'"code":"header_read_timeout"' in answer
    assert _response(idle) == b""  # closed by --idle-connection-timeout-secs (before the fix: after an hour)
    with httpx.Client(base_url=gw.url, timeout=15) as http:  # a kept-alive client is not cut mid-use
        assert http.get("/health").status_code == 200
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200


@pytest.mark.parametrize("raw", [
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
], ids=["bad-header-byte", "cl-and-te", "http2-preface", "long-header"])
def test_protocol_errors_are_json_and_one_line(gw: Gateway, raw: bytes) -> None:
    before = len(gw.output())
    sock = _connect(gw)
    sock.sendall(raw)
    answer = _response(sock)
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"content-type: application/json" in head.lower()
    assert httpx.Response(400, content=body).json()["error"]["code"] == "invalid_http_request"
    logged = gw.output()[before:]
    assert "Traceback" not in logged and "ERROR" not in logged
    assert logged.count("rejected a malformed request") <= 1


def test_a_forged_log_line_stays_one_escaped_line(gw: Gateway) -> None:
    marker = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        http.get(f"/x{marker}%0d%0a2026-01-01 00:00:00,000 INFO    shepherd: forged-{marker}")
        http.get(f"/nul{marker}%00end")
        http.post("/v1/chat/completions", json={**CHAT, "model": f"m{marker}\r\nINFO forged-model-{marker}"})
    wait_until(lambda: f"forged-model-{marker}" in gw.output(), 5, message="the access log lines")
    lines = gw.output().splitlines()
    assert not [line for line in lines if line.startswith(("2026-01-01", "INFO forged"))]  # no forged line
    mine = [line for line in lines if marker in line]
    assert any(f"/x{marker}\\r\\n2026-01-01" in line for line in mine)
    assert any(f"/nul{marker}\\x00end" in line for line in mine)
    assert any(f"m{marker}\\r\\nINFO forged-model" in line for line in mine)
    assert "\x00" not in gw.output()


def test_unknown_models_share_one_metrics_label(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        for _ in range(50):
            assert http.post("/v1/chat/completions", json={**CHAT, "model": uuid.uuid4().hex}).status_code == 404
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
    text = httpx.get(gw.metrics_url, timeout=10).text
    models = set(re.findall(r'\bmodel="([^"]*)"', text))
    assert "unknown" in models and "mock-model" in models
    assert models <= {"unknown", "mock-model", "default"}, models  # before the fix: 50 more


def test_duplicate_credentials_are_refused(gw: Gateway) -> None:
    response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                          headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")])
    assert response.status_code == 400 and response.json()["error"]["code"] == "duplicate_credentials"


# -- the admin API's default --------------------------------------------------------------------


def test_the_admin_api_is_closed_by_default(sim: Sim) -> None:
    plain = Gateway(sim.urls, open_admin=False)
    serving_key = Gateway(sim.urls, "--api-key", "serve-123", open_admin=False)
    try:
        for gateway, headers in ((plain, {}), (serving_key, {"Authorization": "Bearer serve-123"})):
            listing = httpx.get(gateway.url + "/workers", headers=headers)
            assert listing.status_code == 403 and listing.json()["error"]["code"] == "admin_api_closed"
            # A serving key holder cannot register a worker of their own (before the fix: 202).
            added = httpx.post(gateway.url + "/workers", headers=headers, json={"url": "http://127.0.0.1:9"})
            assert added.status_code == 403
            assert httpx.post(gateway.url + "/flush_cache", headers=headers).status_code == 403
        chat = httpx.post(serving_key.url + "/v1/chat/completions", json=CHAT,
                          headers={"Authorization": "Bearer serve-123"})
        assert chat.status_code == 200  # serving is unaffected
    finally:
        plain.stop()
        serving_key.stop()


def test_an_open_admin_api_is_explicit_and_logged(sim: Sim) -> None:
    opened = Gateway(sim.urls, open_admin=True)
    try:
        assert httpx.get(opened.url + "/workers").status_code == 200
    finally:
        opened.stop()
    assert opened.output().count("is open to anyone who can reach this port") == 1
    contradictory = subprocess.run(
        [sys.executable, "-m", "shepherd", "launch", "--port", str(free_ports(1)[0]), "--allow-unauthenticated-admin",
         "--control-plane-api-keys", "ops:Ops:admin:k"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert contradictory.returncode == 2 and "contradicts" in contradictory.stderr
