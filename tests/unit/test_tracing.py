"""The gateway's own spans and OTLP encoder: what a receiver decodes, sampling, propagation, bounds."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from shepherd.observability import otlp
from shepherd.observability.otlp import BatchExporter, HttpSender, SpanEncoder
from shepherd.observability.tracing import Span, SpanKind, Tracing, parse_traceparent

pytestmark = pytest.mark.unit

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"


class _Collect:
    """An exporter stand-in that keeps what it is given."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def add(self, span: Span) -> None:
        self.spans.append(span)

    def shutdown(self) -> None:
        pass


def _tracing(ratio: float = 1.0) -> tuple[Tracing, _Collect]:
    collect = _Collect()
    return Tracing("unused", ratio, exporter=collect), collect  # type: ignore[arg-type]


def test_a_receiver_decodes_every_field_the_gateway_writes() -> None:
    tracing, collect = _tracing()
    server = tracing.start_request("POST /v1/chat/completions",
                                   {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01", "tracestate": "k=v"},
                                   {"http.request.method": "POST", "shepherd.request_id": "r-1"})
    client = tracing.start_child(server, "POST /v1/chat/completions", SpanKind.CLIENT)
    client.set_attribute("retry", True)
    client.set_attribute("ratio", 0.5)
    client.set_attribute("negative", -3)
    Tracing.finish(client, 503)
    Tracing.finish(server, 200)
    encoder = SpanEncoder("shepherd-test")
    for _ in range(2):  # the second time from the encoder's caches
        request = ExportTraceServiceRequest.FromString(encoder.request(collect.spans))
        (resource,) = request.resource_spans
        assert [(a.key, a.value.string_value) for a in resource.resource.attributes] == [
            ("service.name", "shepherd-test")]
        (scope,) = resource.scope_spans
        assert scope.scope.name == "shepherd"
        upstream, served = scope.spans
        assert served.trace_id.hex() == CLIENT_TRACE and served.parent_span_id.hex() == CLIENT_PARENT
        assert served.kind == served.SPAN_KIND_SERVER and served.trace_state == "k=v"
        assert served.status.code == served.status.STATUS_CODE_UNSET
        assert {a.key: a.value.string_value or a.value.int_value for a in served.attributes} == {
            "http.request.method": "POST", "shepherd.request_id": "r-1", "http.response.status_code": 200}
        assert upstream.parent_span_id == served.span_id and upstream.trace_id == served.trace_id
        assert upstream.kind == upstream.SPAN_KIND_CLIENT and upstream.status.code == upstream.status.STATUS_CODE_ERROR
        values = {a.key: a.value for a in upstream.attributes}
        assert values["retry"].bool_value is True and values["ratio"].double_value == 0.5
        assert values["negative"].int_value == -3 and values["http.response.status_code"].int_value == 503
        assert 0 < served.start_time_unix_nano <= upstream.start_time_unix_nano <= upstream.end_time_unix_nano


def test_the_worker_gets_the_gateway_span_as_parent_and_the_client_trace() -> None:
    tracing, _ = _tracing()
    server = tracing.start_request("POST /x", {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"}, {})
    client = tracing.start_child(server, "POST /x", SpanKind.CLIENT)
    headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"}
    Tracing.inject(client, headers)
    assert headers["traceparent"] == f"00-{CLIENT_TRACE}-{client.span_id:016x}-01"


def test_sampling_follows_a_remote_parent_else_the_ratio() -> None:
    never, never_seen = _tracing(0.0)
    always, always_seen = _tracing(1.0)
    unsampled_parent = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00"}
    sampled_parent = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"}
    never.start_request("a", sampled_parent, {}).end()  # the client sampled it: kept even at ratio 0
    never.start_request("b", {}, {}).end()
    span = always.start_request("c", unsampled_parent, {})  # the client did not: not kept at ratio 1
    span.end()
    assert [s.name for s in never_seen.spans] == ["a"] and always_seen.spans == []
    headers: dict[str, str] = {}
    Tracing.inject(always.start_child(span, "d"), headers)  # still propagated, unsampled
    assert headers["traceparent"].startswith(f"00-{CLIENT_TRACE}-") and headers["traceparent"].endswith("-00")
    half, half_seen = _tracing(0.5)
    for _ in range(2000):
        half.start_request("e", {}, {}).end()
    assert 800 < len(half_seen.spans) < 1200


@pytest.mark.parametrize("value", [
    "", "garbage", f"00-{'0' * 32}-{CLIENT_PARENT}-01", f"00-{CLIENT_TRACE}-{'0' * 16}-01",
    f"ff-{CLIENT_TRACE}-{CLIENT_PARENT}-01", f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01-extra",
    f"00-{CLIENT_TRACE[:-1]}-{CLIENT_PARENT}-01"])
def test_an_invalid_traceparent_starts_a_new_trace(value: str) -> None:
    assert parse_traceparent({"traceparent": value}) is None
    tracing, _ = _tracing()
    span = tracing.start_request("x", {"traceparent": value}, {})
    assert span.parent_id == 0 and f"{span.trace_id:032x}" != CLIENT_TRACE


def test_a_span_ended_twice_is_exported_once() -> None:
    tracing, collect = _tracing()
    span = tracing.start_request("x", {}, {})
    span.end()
    span.end()
    assert collect.spans == [span]


def test_the_export_queue_is_bounded_and_a_dead_receiver_costs_only_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp, "MAX_QUEUED", 10)
    sent: list[bytes] = []
    gate = threading.Event()

    def send(body: bytes) -> None:
        gate.wait(5)
        sent.append(body)
        raise OSError("receiver down")

    exporter = BatchExporter(SpanEncoder("s"), send, lambda: None, interval_secs=60)
    tracing = Tracing("unused", exporter=exporter)
    for _ in range(25):
        tracing.start_request("x", {}, {}).end()
    assert exporter.dropped == 15  # the thread has not run yet (60 s interval): 10 wait
    gate.set()
    exporter.shutdown()
    assert len(sent) == 1 and exporter.exported == 0  # sent once, failed, dropped; no retry loop
    assert len(ExportTraceServiceRequest.FromString(sent[0]).resource_spans[0].scope_spans[0].spans) == 10


def test_http_export_posts_protobuf_over_one_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s%3Dcret,bad")
    seen: list[tuple[str, str, str | None, int]] = []

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            spans = ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans
            seen.append((self.path, self.headers["Content-Type"], self.headers.get("x-api-key"), len(spans)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sender = HttpSender(f"http://127.0.0.1:{server.server_address[1]}/v1/traces")
        exporter = BatchExporter(SpanEncoder("s"), sender.send, sender.close, interval_secs=0.05)
        tracing = Tracing("unused", exporter=exporter)
        tracing.start_request("one", {}, {}).end()
        exporter.shutdown()
        assert seen == [("/v1/traces", "application/x-protobuf", "s=cret", 1)]
    finally:
        server.shutdown()


def test_grpc_export_calls_the_trace_service() -> None:
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[ExportTraceServiceRequest] = []

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        tracing = Tracing(f"127.0.0.1:{port}")  # a bare host:port is OTLP/gRPC
        tracing.start_request("over grpc", {}, {"k": "v"}).end()
        tracing.shutdown()
        (request,) = received
        (span,) = request.resource_spans[0].scope_spans[0].spans
        assert span.name == "over grpc" and span.attributes[0].value.string_value == "v"
    finally:
        server.stop(None)
