"""Metrics, traces and logs, checked from the outside as an operator would see them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from shepherd.testing import Gateway, Sim, free_ports, wait_until

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def scrape(gw: Gateway) -> dict[str, float]:
    """Every sample as 'name{label="value",...}' -> value."""
    samples = {}
    for family in text_string_to_metric_families(httpx.get(gw.metrics_url, timeout=5).text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for key, v in samples.items()
               if key.startswith(name + "{") and all(w in key for w in wanted))


@pytest.fixture(scope="module")
def observed() -> Iterator[tuple[Sim, Gateway]]:
    sim = Sim(2)
    gw = Gateway(sim.urls, "--policy", "cache_aware", "--load-monitor-interval", "0.2", "--log-json",
                 "--cb-failure-threshold", "3")
    yield sim, gw
    gw.stop()
    sim.stop()


def test_a_method_nobody_uses_makes_no_series_of_its_own(observed: tuple[Sim, Gateway]) -> None:
    _, gw = observed
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        for method in ("PROPFIND", "MKCOL", "LOCK"):  # WebDAV's: the HTTP parser takes them
            http.request(method, "/v1/models")
        assert http.request("BREW", "/v1/models").status_code == 400  # a token it does not know
    samples = scrape(gw)
    assert not [key for key in samples if "PROPFIND" in key or "MKCOL" in key or "LOCK" in key]
    assert total(samples, "smg_http_requests_total", method="_OTHER") == 3


def test_counters_and_histograms_move_as_requests_flow(observed: tuple[Sim, Gateway]) -> None:
    sim, gw = observed
    before = scrape(gw)
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        for _ in range(3):
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            list(response.iter_lines())
        assert http.post("/v1/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
    after = scrape(gw)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("smg_http_requests_total", path="/v1/chat/completions") == 5
    assert delta("smg_http_responses_total", path="/v1/chat/completions", status_code="404",
                 error_code="model_not_found") == 1
    assert delta("smg_http_request_duration_seconds_count", path="/v1/chat/completions") == 5
    assert delta("smg_router_requests_total", model="mock-model", streaming="true") == 1
    assert delta("smg_router_requests_total", model="mock-model", streaming="false") == 3
    assert delta("smg_router_ttfb_seconds_count", model="mock-model") == 1
    assert delta("smg_router_inter_chunk_seconds_count", model="mock-model") >= 1
    assert delta("smg_worker_selection_total", policy="cache_aware") == 4
    assert delta("smg_worker_requests_total", status_code="200") == 4
    # State gauges, read at scrape time.
    assert total(after, "smg_worker_health") == 2
    assert total(after, "smg_worker_cb_state") == 0
    assert total(after, "smg_worker_pool_size", model="mock-model") == 2
    assert 0 < total(after, "smg_cache_aware_match_ratio", model="mock-model") <= 1
    wait_until(lambda: total(scrape(gw), "smg_engine_token_usage") >= 0 and
               any(k.startswith("smg_engine_running_requests{") for k in scrape(gw)), 5, message="engine gauges")


def test_breaker_and_retry_metrics(observed: tuple[Sim, Gateway]) -> None:
    sim, gw = observed
    sim.faults(0, error_rate=1.0)
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            for i in range(12):
                assert http.post("/v1/chat/completions", json={**CHAT, "messages": [
                    {"role": "user", "content": f"{i} distinct question"}]}).status_code == 200
        samples = scrape(gw)
        assert total(samples, "smg_worker_retries_total") >= 1
        assert total(samples, "smg_worker_errors_total", error_type="http_5xx") >= 1
        assert total(samples, "smg_worker_cb_transitions_total", to="open") == 1
        assert total(samples, "smg_worker_cb_state", worker=sim.urls[0]) == 1
    finally:
        sim.reset()


def test_one_json_log_line_per_request(observed: tuple[Sim, Gateway]) -> None:
    sim, gw = observed
    response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"x-request-id": "log-me-1"})
    wait_until(lambda: "log-me-1" in gw.output(), 5, message="the access log line")
    lines = [json.loads(line) for line in gw.output().splitlines()
             if line.startswith("{") and '"log-me-1"' in line]
    assert len(lines) == 1
    entry = lines[0]
    assert entry["logger"] == "shepherd.access" and entry["status"] == 200
    assert entry["model"] == "mock-model" and entry["worker"] == response.headers["x-smg-routed-worker-id"]
    assert entry["prompt_tokens"] == 1 and entry["completion_tokens"] == 3 and entry["duration_ms"] > 0


class _OtlpReceiver(BaseHTTPRequestHandler):
    spans: list = []  # noqa: RUF012 - shared by the handler instances of one test server

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                type(self).spans.extend(scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_spans_reach_an_otlp_receiver_and_the_trace_reaches_the_worker() -> None:
    port = free_ports(1)[0]
    server = ThreadingHTTPServer(("127.0.0.1", port), _OtlpReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sim = Sim(1)
    gw = Gateway(sim.urls, "--enable-trace", "--otlp-traces-endpoint", f"http://127.0.0.1:{port}/v1/traces")
    try:
        client_trace = "0af7651916cd43dd8448eb211c80319c"
        response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT,
                              headers={"traceparent": f"00-{client_trace}-b7ad6b7169203331-01"})
        assert response.status_code == 200

        def chat_spans() -> list:
            return [s for s in _OtlpReceiver.spans if s.trace_id.hex() == client_trace]

        wait_until(lambda: len(chat_spans()) >= 2, 10, message="spans to be exported")
        spans = chat_spans()
        assert sorted((s.name, s.kind) for s in spans) == sorted([
            ("POST /v1/chat/completions", spans[0].SPAN_KIND_SERVER),
            ("POST /v1/chat/completions", spans[0].SPAN_KIND_CLIENT)])
        server_span = next(s for s in spans if s.kind == s.SPAN_KIND_SERVER)
        assert server_span.parent_span_id.hex() == "b7ad6b7169203331"  # the client's span is the parent
        assert not any(s.name.endswith(("/liveness", "/readiness")) for s in _OtlpReceiver.spans)  # no probe noise
        upstream = next(s for s in spans if s.kind == s.SPAN_KIND_CLIENT)
        assert upstream.parent_span_id == server_span.span_id
        assert {a.key: a.value.string_value for a in upstream.attributes}["server.address"] == sim.urls[0]
        seen = {k.lower(): v for k, v in sim.requests()[-1]["headers"].items()}
        version, trace_id, parent_id, _ = seen["traceparent"].split("-")
        assert trace_id == client_trace and parent_id == upstream.span_id.hex()  # the worker joins the trace
    finally:
        gw.stop()
        sim.stop()
        server.shutdown()


def test_log_dir_and_metrics_off(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = Sim(1)
    gw = Gateway(sim.urls, "--disable-metrics", "--log-dir", str(tmp_path))
    try:
        httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers={"x-request-id": "to-file"})
        wait_until(lambda: "to-file" in (tmp_path / "shepherd.log").read_text(), 5, message="the log file")
        with pytest.raises(httpx.ConnectError):
            httpx.get(gw.metrics_url, timeout=2)
    finally:
        gw.stop()
        sim.stop()
