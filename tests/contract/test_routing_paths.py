"""The routing contract, checked on every path: HTTP proxy, PD, gRPC pipeline, external providers.

Each scenario is one test body run against all four paths (see conftest.py), so the paths cannot
drift apart again: retries with backoff, breakers, mid-stream errors, disconnects, credentials and
per-attempt metrics behave the same wherever a request goes.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import orjson

from shepherd.testing import wait_until
from tests.contract.conftest import GATEWAY_KEY, WORKER_KEY, Fleet, RoutingPath, path_with

LABELS = {"http": ("http", "regular"), "pd": ("http", "pd"), "grpc": ("grpc", "regular"),
          "external": ("external", "external")}


def _router_labels(path: RoutingPath) -> dict[str, str]:
    router_type, backend_type = LABELS[path.name]
    return {"router_type": router_type, "backend_type": backend_type}


def test_a_worker_down_before_the_first_byte_is_retried_elsewhere_with_backoff(path: RoutingPath) -> None:
    with path.spare_worker() as (url, process):
        process.kill()  # registered and in rotation, but nothing listens any more
        with path.client() as client:
            answers = [client.post("/v1/chat/completions", json=path.chat()) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers if a.status_code != 200]
    assert path.metric("smg_worker_retries_total", worker_type=LABELS[path.name][1]) >= 1
    assert path.metric("smg_worker_retry_backoff_seconds_count") >= 1
    assert path.metric("smg_worker_retry_backoff_seconds_sum") > 0  # it waited before retrying
    assert path.breaker(url)["consecutive_failures"] >= 1  # the dead worker was charged


def test_a_burst_of_5xx_opens_that_workers_breaker_and_traffic_shifts(path: RoutingPath) -> None:
    bad = path.worker_url(0)
    path.fail_with_500(0)
    with path.client() as client:
        statuses = [client.post("/v1/chat/completions", json=path.chat()).status_code for _ in range(12)]
        assert statuses == [200] * 12  # every 500 was retried on the healthy worker
        assert path.breaker(bad)["state"] == "open"
        before = path.received(0)
        after = [client.post("/v1/chat/completions", json=path.chat()).status_code for _ in range(6)]
    assert after == [200] * 6
    assert path.received(0) == before  # nothing reaches the open worker
    assert path.breaker(path.worker_url(1))["state"] == "closed"
    assert path.metric("smg_worker_cb_transitions_total", worker=bad, to="open") == 1


def test_a_request_every_worker_fails_with_500_is_not_charged_to_the_breakers(path: RoutingPath) -> None:
    # A "poison" request: the engine fails on the request itself, wherever it goes. Two workers giving
    # the same 500 is proof enough; the client gets the engine's answer and no worker is taken out.
    path.fail_with_500(0)
    path.fail_with_500(1)
    with path.client() as client:
        statuses = [client.post("/v1/chat/completions", json=path.chat()).status_code for _ in range(8)]
        assert statuses == [500] * 8
        assert all(w["circuit_breaker"]["state"] == "closed" and w["circuit_breaker"]["consecutive_failures"] == 0
                   for w in path.workers() if w["url"] in (path.worker_url(0), path.worker_url(1)))
        assert path.received(0) + path.received(1) == 16  # two attempts each, then no more retries
        path.heal(0)
        path.heal(1)
        assert client.post("/v1/chat/completions", json=path.chat()).status_code == 200


def _stream_events(response: httpx.Response) -> list[bytes]:
    return [line for line in response.read().split(b"\n") if line.startswith((b"data:", b"event:"))]


def test_a_stream_broken_midway_ends_with_the_apis_error_frame(path: RoutingPath) -> None:
    path.break_streams()
    body = path.chat(stream=True, max_tokens=16)
    with path.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = _stream_events(response)
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2][len(b"data: "):])["error"]
    assert error["type"] == "server_error" and "mid-stream" in error["message"]
    assert any(b'"choices"' in e for e in events[:-2])  # the answer had started
    assert path.metric("smg_worker_errors_total", error_type="mid_stream") >= 1


def test_a_stream_broken_midway_ends_with_anthropics_error_event_on_messages(path: RoutingPath) -> None:
    path.break_streams()
    body = {"model": path.model, "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "contract test"}]}
    with path.client() as client, client.stream("POST", "/v1/messages", json=body) as response:
        assert response.status_code == 200
        events = _stream_events(response)
    assert events[-2] == b"event: error"
    error = orjson.loads(events[-1][len(b"data: "):])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"


def test_a_client_that_disconnects_aborts_the_upstream_request(path: RoutingPath) -> None:
    path.hang()
    body = orjson.dumps(path.chat(stream=True))
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {GATEWAY_KEY}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", path.gateway.port)) as sock:
        sock.sendall(head + body)
        wait_until(lambda: path.received(0) + path.received(1) == 1, 10, message="the request to reach a worker")
    wait_until(lambda: path.aborted() == 1, 10, message="the worker-side abort")
    wait_until(lambda: path.metric("smg_router_upstream_responses_total", status_code="client_closed") == 1, 5,
               message="the attempt counted as client_closed")


def test_the_worker_key_is_sent_and_the_gateway_key_never(path: RoutingPath) -> None:
    with path.client() as client:
        assert client.post("/v1/chat/completions", json=path.chat()).status_code == 200
        with client.stream("POST", "/v1/chat/completions", json=path.chat(stream=True)) as response:
            response.read()
    with httpx.Client(base_url=path.gateway.url, timeout=30) as anthropic_style:  # x-api-key, no Authorization
        assert anthropic_style.post("/v1/chat/completions", json=path.chat(),
                                    headers={"x-api-key": GATEWAY_KEY}).status_code == 200
    seen = path.credentials_seen()
    assert seen and all(value == f"Bearer {WORKER_KEY}" or value == WORKER_KEY for value in seen), seen
    assert not any(GATEWAY_KEY in value for value in seen)


def test_every_attempt_is_counted(path: RoutingPath) -> None:
    path.fail_with_500(0)
    with path.client() as client:
        for _ in range(2):
            assert client.post("/v1/chat/completions", json=path.chat()).status_code == 200
    labels = _router_labels(path)
    assert path.metric("smg_router_requests_total", **labels, model=path.model) == 2
    assert path.metric("smg_router_request_duration_seconds_count", **labels, model=path.model) == 2
    failed, served = path.received(0), path.received(1)
    assert failed >= 1 and served == 2  # every 500 from worker 0 was retried on worker 1
    assert path.metric("smg_router_upstream_responses_total", router_type=labels["router_type"]) >= failed + served
    assert path.metric("smg_worker_requests_total", worker=path.worker_url(0), status_code="500") == failed
    assert path.metric("smg_worker_requests_total", worker=path.worker_url(1), status_code="200") == 2
    assert path.metric("smg_worker_selection_total", model=path.model) >= failed + served
    assert path.metric("smg_worker_retries_total", worker_type=labels["backend_type"]) == failed
    assert path.metric("smg_worker_errors_total", error_type="http_5xx") == failed


def test_the_routing_key_header_pins_a_session_to_one_worker(fleet: Fleet) -> None:
    flags = ("--policy", "manual", "--routing-key-headers", "x-contract-session")
    with path_with(fleet, *flags) as path, path.client() as client:
        for session in ("alpha", "beta", "gamma", "delta"):
            before = (path.received(0), path.received(1))
            for turn in range(3):  # different prompts: only the header can keep them together
                body = path.chat(content=f"{turn} {session} " * (turn + 1))
                answer = client.post("/v1/chat/completions", json=body, headers={"x-contract-session": session})
                assert answer.status_code == 200
            gained = (path.received(0) - before[0], path.received(1) - before[1])
            assert sorted(gained) == [0, 3], (session, gained)  # all three on the same worker


def test_one_deadline_bounds_every_attempt_together(fleet: Fleet) -> None:
    with path_with(fleet, "--request-timeout-secs", "1.5") as path:
        path.hang()
        with path.client() as client:
            answer = client.post("/v1/chat/completions", json=path.chat())
        assert answer.status_code == 504
        assert path.received(0) + path.received(1) == 1  # the deadline left no time for a second attempt


def test_the_traffic_recorder_sees_the_worker_and_time_to_first_token(fleet: Fleet, tmp_path: Path) -> None:
    with path_with(fleet, "--record-traffic", str(tmp_path)) as path, path.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=path.chat(stream=True)) as response:
            assert response.status_code == 200
            response.read()
        assert client.post("/v1/chat/completions", json=path.chat()).status_code == 200

        def records() -> list[dict[str, object]]:
            return [orjson.loads(line) for file in tmp_path.glob("traffic-*.jsonl")
                    for line in file.read_bytes().splitlines() if line]

        recorded = wait_until(lambda: len(records()) == 2 and records(), 10, message="two records")
    streamed, whole = sorted(recorded, key=lambda r: not r["stream"])
    served_by = {path.worker_url(0), path.worker_url(1)}
    assert streamed["worker"] in served_by and whole["worker"] in served_by
    assert streamed["status"] == 200 and isinstance(streamed["ttft_ms"], float) and streamed["ttft_ms"] > 0
    assert whole["prompt_tokens"] and whole["output_tokens"] == path.chat()["max_tokens"]  # tokens on every path


def test_the_traffic_recorder_and_status_page_see_responses_requests(fleet: Fleet, tmp_path: Path) -> None:
    """The Responses API is told like every inference route: its worker, tokens summed over its model
    calls, time to first token, and as the prompt the whole chain the model read."""
    with path_with(fleet, "--record-traffic", str(tmp_path)) as path, path.client() as client:
        model = path.chat()["model"]
        first = client.post("/v1/responses", json={"model": model, "input": "alpha " * 40, "max_output_tokens": 4})
        assert first.status_code == 200, first.text
        with client.stream("POST", "/v1/responses", json={"model": model, "input": "beta", "stream": True,
                                                         "previous_response_id": first.json()["id"],
                                                         "max_output_tokens": 4}) as response:
            assert response.status_code == 200
            response.read()

        def records() -> list[dict[str, object]]:
            return [orjson.loads(line) for file in tmp_path.glob("traffic-*.jsonl")
                    for line in file.read_bytes().splitlines() if line]

        recorded = wait_until(lambda: len(records()) == 2 and records(), 10, message="two records")
        status = httpx.get(path.gateway.url + "/dashboard/data", headers=path.admin, timeout=5).json()
    whole, streamed = sorted(recorded, key=lambda r: bool(r["stream"]))
    served_by = {path.worker_url(0), path.worker_url(1)}
    for record in (whole, streamed):
        assert record["api"] == "/v1/responses" and record["status"] == 200
        assert record["worker"] in served_by and record["prompt_tokens"] and record["output_tokens"]
    assert isinstance(streamed["ttft_ms"], float) and streamed["ttft_ms"] > 0
    assert int(streamed["prompt_bytes"]) > int(whole["prompt_bytes"])  # the chain's history is in the prompt
    assert sum(row["requests"] for row in status["pairs"] if row["worker"] in served_by) == 2, status["pairs"]
