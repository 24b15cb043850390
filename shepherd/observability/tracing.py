"""Tracing: one server span per request, child spans for worker selection and the upstream call,
and the W3C trace context handed on to the worker.

Off by default; `--enable-trace` exports batches over OTLP to `--otlp-traces-endpoint` (an
`http(s)://…/v1/traces` URL uses OTLP/HTTP, a bare `host:port` OTLP/gRPC), sampling new traces
at `--trace-sample-ratio`. A client's own `traceparent` becomes the parent of the gateway's span
(and its sampling decision is kept), so the gateway shows up inside the client's trace.

Spans are plain slotted objects rather than OpenTelemetry SDK spans, and export is this package's
own (`otlp.py`): the SDK cost about half the gateway's throughput at full sampling. The sampling
rule is the SDK's `ParentBased(TraceIdRatioBased(ratio))`: a remote parent's flag decides, else the
low 64 bits of the trace id compared with `ratio * 2**64`.
"""

from __future__ import annotations

import enum
import logging
import random
import re
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

from shepherd.observability.otlp import BatchExporter, GrpcSender, HttpSender, SpanEncoder

log = logging.getLogger("shepherd.tracing")

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$")
_MAX_TRACESTATE = 512  # bytes of a client's tracestate carried on (W3C allows 32 entries of 256)
_random = random.Random()  # ids only, not secrets: the W3C spec asks for randomness, not unpredictability


class SpanKind(enum.IntEnum):
    """OTLP's Span.SpanKind values."""

    INTERNAL = 1
    SERVER = 2
    CLIENT = 3


class Span:
    __slots__ = ("_exporter", "attributes", "end_ns", "error", "kind", "name", "parent_id", "sampled",
                 "span_id", "start_ns", "trace_id", "trace_state")

    def __init__(self, exporter: BatchExporter | None, trace_id: int, parent_id: int, sampled: bool,
                 trace_state: str, name: str, kind: SpanKind, attributes: dict[str, Any]) -> None:
        self._exporter = exporter
        self.trace_id = trace_id
        self.span_id = _random.getrandbits(64) or 1
        self.parent_id = parent_id
        self.sampled = sampled
        self.trace_state = trace_state
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.error = False
        self.start_ns = time.time_ns()
        self.end_ns = 0

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_error(self) -> None:
        self.error = True

    def end(self) -> None:
        if self.end_ns:
            return  # ended once; a second end is a no-op (as in OpenTelemetry)
        self.end_ns = time.time_ns()
        if self.sampled and self._exporter is not None:
            self._exporter.add(self)

    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{'01' if self.sampled else '00'}"


def parse_traceparent(headers: Mapping[str, str]) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) from a valid W3C `traceparent`, else None."""
    value = headers.get("traceparent")
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_hex, parent_hex, flags = match.groups()
    trace_id, parent_id = int(trace_hex, 16), int(parent_hex, 16)
    if version == "ff" or trace_id == 0 or parent_id == 0:
        return None
    if version == "00" and len(value.strip()) != 55:
        return None  # version 00 has exactly four fields
    return trace_id, parent_id, bool(int(flags, 16) & 1)


class Tracing:
    def __init__(self, endpoint: str, sample_ratio: float = 1.0, service_name: str = "shepherd",
                 exporter: BatchExporter | None = None) -> None:
        if exporter is None:
            sender = HttpSender(endpoint) if endpoint.startswith(("http://", "https://")) else GrpcSender(endpoint)
            exporter = BatchExporter(SpanEncoder(service_name), sender.send, sender.close)
            log.info("tracing enabled: exporting spans to %s", endpoint)
        self.exporter = exporter
        self._bound = int(max(0.0, min(1.0, sample_ratio)) * (1 << 64))

    def _sample_new(self, trace_id: int) -> bool:
        return (trace_id & 0xFFFFFFFFFFFFFFFF) < self._bound

    def start_request(self, name: str, headers: Mapping[str, str], attributes: Mapping[str, Any]) -> Span:
        parent = parse_traceparent(headers)
        if parent is None:
            trace_id = _random.getrandbits(128) or 1
            return Span(self.exporter, trace_id, 0, self._sample_new(trace_id), "", name, SpanKind.SERVER,
                        dict(attributes))
        trace_id, parent_id, sampled = parent
        state = headers.get("tracestate", "")
        return Span(self.exporter, trace_id, parent_id, sampled, state if len(state) <= _MAX_TRACESTATE else "",
                    name, SpanKind.SERVER, dict(attributes))

    def start_child(self, parent: Span, name: str, kind: SpanKind = SpanKind.INTERNAL) -> Span:
        return Span(self.exporter, parent.trace_id, parent.span_id, parent.sampled, parent.trace_state, name, kind,
                    {})

    @staticmethod
    def inject(span: Span, headers: MutableMapping[str, str]) -> None:
        """Put the span's context into upstream request headers (replacing the client's traceparent)."""
        headers.pop("traceparent", None)
        headers["traceparent"] = span.traceparent()
        if span.trace_state:
            headers["tracestate"] = span.trace_state

    @staticmethod
    def finish(span: Span, status_code: int | None) -> None:
        if status_code is not None:
            span.set_attribute("http.response.status_code", status_code)
            if status_code >= 500:
                span.set_error()
        span.end()

    def shutdown(self) -> None:
        self.exporter.shutdown()
