"""OTLP export of finished spans: protobuf encoded by hand, sent in batches from one thread.

The OpenTelemetry SDK's span objects and its pure-Python encoder cost more CPU than the request
they describe (bench/observability_overhead.py measured tracing at half the throughput), so the
gateway writes the few message types it needs itself (opentelemetry/proto/trace/v1/trace.proto):
the encoded bytes of repeated attributes and span names are cached, and a span costs a few
microseconds to encode. Receivers see ordinary OTLP (`ExportTraceServiceRequest`) over OTLP/HTTP
(`application/x-protobuf`) or OTLP/gRPC.

What waits to be sent is bounded (`MAX_QUEUED` spans): when the receiver is slower than the
traffic, new spans are dropped and counted, never held without limit.
"""

from __future__ import annotations

import collections
import http.client
import logging
import os
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

log = logging.getLogger("shepherd.tracing")

MAX_QUEUED = 65_536  # spans waiting for export; past it new spans are dropped (and counted)
MAX_BATCH = 2_048  # spans per export request
SEND_TIMEOUT_SECS = 10.0
_CACHE_LIMIT = 4_096  # distinct encoded attributes / names kept



class Span(Protocol):
    """What export reads of a finished span (shepherd.observability.tracing.Span); read-only."""

    @property
    def trace_id(self) -> int: ...
    @property
    def span_id(self) -> int: ...
    @property
    def parent_id(self) -> int: ...
    @property
    def trace_state(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> int: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def attributes(self) -> Mapping[str, Any]: ...
    @property
    def error(self) -> bool: ...


_SMALL = [bytes((i,)) for i in range(128)]
_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack


def _varint(value: int) -> bytes:
    if value < 128:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, bytes."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):  # before int: bool is an int
        return b"\x10" + _SMALL[int(value)]
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    return _field(b"\x0a", str(value).encode())


def key_value(key: str, value: Any) -> bytes:
    """A KeyValue message's bytes (key = 1, value = 2)."""
    return _field(b"\x0a", key.encode()) + _field(b"\x12", _any_value(value))


class SpanEncoder:
    """Spans to OTLP bytes; repeated attributes (method, route, status, model) and names are cached."""

    def __init__(self, service_name: str) -> None:
        resource = _field(b"\x0a", key_value("service.name", service_name))  # Resource.attributes = 1
        scope = _field(b"\x0a", b"shepherd")  # InstrumentationScope.name = 1
        self._resource = _field(b"\x0a", resource)  # ResourceSpans.resource = 1
        self._scope = _field(b"\x0a", scope)  # ScopeSpans.scope = 1
        self._attributes: dict[tuple[str, Any], bytes] = {}
        self._names: dict[str, bytes] = {}

    def _attribute(self, key: str, value: Any) -> bytes:
        cache_key = (key, value)
        cached = self._attributes.get(cache_key)
        if cached is not None:
            return cached
        encoded = _field(b"\x4a", key_value(key, value))  # Span.attributes = 9
        if len(self._attributes) < _CACHE_LIMIT and not key.endswith("request_id"):
            self._attributes[cache_key] = encoded
        return encoded

    def _name(self, name: str) -> bytes:
        cached = self._names.get(name)
        if cached is None:
            cached = _field(b"\x2a", name.encode())  # Span.name = 5
            if len(self._names) < _CACHE_LIMIT:
                self._names[name] = cached
        return cached

    def span(self, span: Span) -> bytes:
        parts = [b"\x0a\x10", span.trace_id.to_bytes(16, "big"),  # trace_id = 1
                 b"\x12\x08", span.span_id.to_bytes(8, "big")]  # span_id = 2
        if span.trace_state:
            parts.append(_field(b"\x1a", span.trace_state.encode()))  # trace_state = 3
        if span.parent_id:
            parts += (b"\x22\x08", span.parent_id.to_bytes(8, "big"))  # parent_span_id = 4
        parts += (self._name(span.name), b"\x30", _SMALL[span.kind],  # kind = 6
                  b"\x39", _FIXED64(span.start_ns), b"\x41", _FIXED64(span.end_ns))  # start = 7, end = 8
        parts += [self._attribute(key, value) for key, value in span.attributes.items()]
        if span.error:
            parts.append(b"\x7a\x02\x18\x02")  # status = 15: Status{code = 3: ERROR (2)}
        return _field(b"\x12", b"".join(parts))  # ScopeSpans.spans = 2

    def request(self, spans: Iterable[Span]) -> bytes:
        """An ExportTraceServiceRequest with one resource and one scope."""
        scope_spans = _field(b"\x12", self._scope + b"".join(self.span(span) for span in spans))
        return _field(b"\x0a", self._resource + scope_spans)  # resource_spans = 1


def _env_headers() -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_TRACES_HEADERS / OTEL_EXPORTER_OTLP_HEADERS: `k=v,k2=v2`, values URL-encoded."""
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")
    headers: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[urllib.parse.unquote(key.strip()).lower()] = urllib.parse.unquote(value.strip())
    return headers


class HttpSender:
    """OTLP/HTTP: POST the protobuf to `…/v1/traces` over one kept-alive connection."""

    def __init__(self, endpoint: str) -> None:
        url = urllib.parse.urlsplit(endpoint)
        if url.hostname is None:
            raise ValueError(f"no host in the OTLP endpoint {endpoint!r}")
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port or (443 if self._https else 80)
        self._path = url.path or "/v1/traces"
        self._headers = {**_env_headers(), "Content-Type": "application/x-protobuf"}
        self._connection: http.client.HTTPConnection | None = None

    def send(self, body: bytes) -> None:
        for retry in (False, True):  # a kept-alive connection the receiver closed gets one fresh try
            connection = self._connection or self._connect()
            try:
                connection.request("POST", self._path, body, self._headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if retry:
                    raise
                continue
            if response.status >= 300:
                raise OSError(f"the OTLP receiver answered {response.status}")
            return

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._connection = cls(self._host, self._port, timeout=SEND_TIMEOUT_SECS)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class GrpcSender:
    """OTLP/gRPC: the TraceService Export call with the encoded request as its bytes."""

    METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

    def __init__(self, target: str) -> None:
        import grpc

        self._channel = grpc.insecure_channel(target)
        self._export = self._channel.unary_unary(self.METHOD)  # no serializers: bytes in, bytes out
        self._metadata = tuple(_env_headers().items())

    def send(self, body: bytes) -> None:
        import grpc

        try:
            self._export(body, timeout=SEND_TIMEOUT_SECS, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise OSError(f"the OTLP receiver refused the spans: {exc.code()}") from None

    def close(self) -> None:
        self._channel.close()


class BatchExporter:
    """Finished spans wait in a bounded queue; one thread encodes and sends them in batches.

    `add` is all the request path pays (a deque append). The thread wakes every `interval_secs`
    or as soon as a full batch is waiting."""

    def __init__(self, encoder: SpanEncoder, send: Callable[[bytes], None], close: Callable[[], None],
                 interval_secs: float = 0.5) -> None:
        self._encoder = encoder
        self._send = send
        self._close = close
        self._interval = interval_secs
        self._queue: collections.deque[Span] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self.dropped = 0
        self.exported = 0
        self._failed_since_log = 0
        self._last_failure_log = 0.0
        self._thread = threading.Thread(target=self._run, name="shepherd-otlp-export", daemon=True)
        self._thread.start()

    def add(self, span: Span) -> None:
        queue = self._queue
        if len(queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) == MAX_BATCH:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._drain()
            if self._stopping:
                return

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
            try:
                self._send(self._encoder.request(batch))
                self.exported += len(batch)
            except Exception as exc:  # a receiver that is down loses these spans, never the gateway
                self._note_failure(len(batch), exc)

    def _note_failure(self, count: int, exc: Exception) -> None:
        self._failed_since_log += count
        now = time.monotonic()
        if now - self._last_failure_log >= 30:
            log.warning("tracing: %d spans could not be exported: %s", self._failed_since_log, exc)
            self._failed_since_log, self._last_failure_log = 0, now

    def shutdown(self, timeout_secs: float = 5.0) -> None:
        """Send what is queued (within the timeout) and stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_secs)
        self._close()
