"""Streams are relayed as they are produced; request ids and headers cross the gateway correctly."""

from __future__ import annotations

import socket
import time

import httpx

from shepherd.testing import Gateway, Sim, wait_until

CHAT = "/v1/chat/completions"


def _long_chat(tokens: int = 120) -> dict:
    return {"model": "mock-model", "messages": [{"role": "user", "content": "tell me a long story"}],
            "max_tokens": tokens, "stream": True}


def test_first_chunk_arrives_before_the_engine_finishes(gateway: Gateway, sims: Sim) -> None:
    with httpx.Client(timeout=30) as http, http.stream("POST", gateway.url + CHAT, json=_long_chat()) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        worker = sims.urls.index(response.headers["x-smg-routed-worker-id"])
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert '"role":"assistant"' in first
        # The engine is still generating: nothing was buffered until the end.
        stats = sims.stats(worker)
        assert stats["in_flight"] == 1 and stats["completed"] == 0
        rest = [line for line in lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]"
    assert sims.stats(worker)["completed"] == 1


def test_client_disconnect_aborts_the_engine_request(gateway: Gateway, sims: Sim) -> None:
    body = httpx.Request("POST", gateway.url + CHAT, json=_long_chat(400)).content
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while received.count(b"data:") < 3:
            received += sock.recv(65536)
    # The socket is closed mid-stream: the simulator must see its request aborted soon after.
    wait_until(lambda: sum(sims.stats(i)["aborted"] for i in range(2)) == 1, 5, message="the engine-side abort")
    assert sum(sims.stats(i)["in_flight"] for i in range(2)) == 0
    assert sum(sims.stats(i)["completed"] for i in range(2)) == 0


def test_request_id_is_echoed_and_forwarded(gateway: Gateway, sims: Sim) -> None:
    headers = {"x-request-id": "my-id-123", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
               "tracestate": "vendor=1", "x-custom": "kept"}
    response = httpx.post(gateway.url + CHAT, headers=headers,
                          json={"model": "mock-model", "messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 1})
    assert response.headers["x-request-id"] == "my-id-123"
    worker = sims.urls.index(response.headers["x-smg-routed-worker-id"])
    seen = sims.requests(worker)[-1]["headers"]
    seen = {k.lower(): v for k, v in seen.items()}
    assert seen["x-request-id"] == "my-id-123"
    assert seen["traceparent"] == headers["traceparent"] and seen["tracestate"] == "vendor=1"
    assert seen["x-custom"] == "kept"


def test_generated_request_id_has_an_api_prefix_and_is_forwarded(gateway: Gateway, sims: Sim) -> None:
    response = httpx.post(gateway.url + CHAT, json={"model": "mock-model", "messages": [], "max_tokens": 1})
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("chatcmpl-") and len(request_id) == len("chatcmpl-") + 24
    worker = sims.urls.index(response.headers["x-smg-routed-worker-id"])
    seen = {k.lower(): v for k, v in sims.requests(worker)[-1]["headers"].items()}
    assert seen["x-request-id"] == request_id
    invalid = httpx.post(gateway.url + "/generate", headers={"x-request-id": "bad id with spaces"},
                         json={"text": "a", "max_new_tokens": 1})
    assert invalid.headers["x-request-id"].startswith("gnt-")


def test_hop_by_hop_headers_are_not_forwarded(gateway: Gateway, sims: Sim) -> None:
    body = b'{"model": "mock-model", "prompt": "hi", "max_tokens": 1}'
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     b"Connection: keep-alive, x-private-hop\r\nx-private-hop: secret\r\nKeep-Alive: timeout=5\r\n"
                     b"TE: trailers\r\nProxy-Authorization: Basic abc\r\nUpgrade: h2c\r\nx-end-to-end: yes\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200")
    recorded = sims.requests(0) + sims.requests(1)
    assert len(recorded) == 1
    seen = {k.lower() for k in recorded[0]["headers"]}
    for name in ("x-private-hop", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert name not in seen, name
    assert "x-end-to-end" in seen


def test_body_is_forwarded_byte_for_byte(gateway: Gateway, sims: Sim) -> None:
    raw = b'{"model":"mock-model",  "prompt": "spacing \\u00e9 kept", "max_tokens": 1, "extra_field": [1,2]}'
    response = httpx.post(gateway.url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
    worker = sims.urls.index(response.headers["x-smg-routed-worker-id"])
    assert sims.requests(worker)[-1]["body"] == raw.decode()


def test_stream_survives_slow_tokens(gateway: Gateway, sims: Sim) -> None:
    """Chunks keep flowing one by one: the client sees many separate arrivals, not one burst."""
    arrivals = []
    with httpx.Client(timeout=30) as http, http.stream("POST", gateway.url + CHAT, json=_long_chat(40)) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 43  # role chunk, 40 tokens, finish chunk, [DONE]
    assert len({round(t, 3) for t in arrivals}) > 10


def test_a_queued_stream_sends_no_body_before_its_first_token() -> None:
    """As vLLM and SGLang do, the simulator opens a stream's body (the role delta) with the first
    token, not while the request waits for admission: a gateway that reads the first body byte as
    the time to first token (precise_cache's queue bookkeeping, the TTFT metrics) must see it then."""
    sim = Sim(1, "--model", "mock-model", "--max-running", "1", "--decode-base-ms", "40")
    try:
        def load() -> dict:
            return httpx.get(sim.urls[0] + "/get_load", timeout=5).json()[0]

        body = httpx.Request("POST", sim.urls[0] + CHAT, json=_long_chat(2)).content
        with httpx.Client(timeout=30) as http, \
                http.stream("POST", sim.urls[0] + CHAT, json=_long_chat(100)) as running, \
                socket.create_connection(("127.0.0.1", sim.ports[0])) as queued:
            wait_until(lambda: load()["num_reqs"] == 1, 10, "the first request runs")
            queued.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            wait_until(lambda: load()["num_waiting_reqs"] == 1, 10, "the second request waits")
            queued.settimeout(0.5)
            received = b""
            try:
                while True:
                    chunk = queued.recv(65536)
                    if not chunk:
                        break
                    received += chunk
            except TimeoutError:
                pass
            head, _, early = received.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")  # the head goes out at once
            assert early == b"", f"a request still queued sent {early[:80]!r}"
            running.close()  # the engine is free: the queued request is admitted and generates
            queued.settimeout(30)
            rest = b""
            while not rest.endswith(b"0\r\n\r\n"):
                chunk = queued.recv(65536)
                assert chunk, "the stream ended without its last chunk"
                rest += chunk
        events = [line for line in rest.split(b"\n") if line.startswith(b"data:")]
        assert b'"role":"assistant"' in events[0] and b'"content":' in events[1]
        assert events[-1].strip() == b"data: [DONE]"
    finally:
        sim.stop()
