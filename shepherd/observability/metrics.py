"""Prometheus metrics, with SMG's names where SMG has one so existing dashboards keep working.

Two kinds of series:

* events counted on the request path (requests, latencies, time to first byte, retries, policy
  decisions, breaker transitions, admission rejections): plain per-process counters and buckets
  (series.py), so recording one costs a dict lookup and an add;
* state read at scrape time (in-flight per worker, health, breaker state, engine load, pool size,
  queue depth, cache-tree size and hit ratio): a collector walks the registry when Prometheus asks,
  which costs the request path nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shepherd.observability.series import CounterChild, CounterSeries, HistogramChild, HistogramSeries
from shepherd.workers.worker import Worker

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 45, 60, 90, 120, 180,
                    240, 300, 480, 900, 1200, 1800, 2700, 3600, 5400, 7200)
# The label of a model no registered worker serves. Clients choose model names, so only the
# registry's models get their own series; every other name shares this one.
UNKNOWN_MODEL = "unknown"
DEFAULT_MODEL = "default"  # a request that named no model
# Error codes come from the gateway's own errors, but also from X-SMG-Error-Code headers a worker
# sends (a chained gateway): past this many distinct values, new ones share the label "other".
MAX_ERROR_CODES = 256

CHUNK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class BoundedLabel:
    """Values -> label values, at most `limit` distinct ones besides "other" (those given first keep theirs)."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int, first: Iterable[str] = ()) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        for value in first:
            self(value)

    def __call__(self, value: str) -> str:
        seen = self._seen
        if value in seen:
            return value
        if len(seen) < self._limit:
            seen.add(value)
            return value
        return "other"


class Metrics:
    def __init__(self, duration_buckets: Sequence[float] = DURATION_BUCKETS, tenant_labels: int = 32,
                 tenants: Iterable[str] = ()) -> None:
        durations = tuple(sorted(duration_buckets))  # --prometheus-duration-buckets
        disable_created_metrics()  # as SMG: no *_created series (the library's switch is process-wide)
        self._serves: Callable[[str], bool] = lambda model: False  # set by attach(): the registry's models
        self._state: _StateCollector | None = None
        self.error_code_label = BoundedLabel(MAX_ERROR_CODES)  # the `error_code` label value
        # The `tenant` label value: the configured tenants, then the first others seen, up to
        # --priority-scheduler-tenant-metric-top-n; the rest share "other".
        self.tenant_label = BoundedLabel(tenant_labels, tenants)
        # Collectors besides the request path's series (their state is read when a scrape writes the text).
        self.registry = CollectorRegistry(auto_describe=True)
        self._series: list[CounterSeries | HistogramSeries] = []  # in the order they are exposed
        # The children every proxied request records together, by the labels they share: one lookup
        # instead of one per series. Keys are label values (bounded as the series' own are); a bundle
        # holds only children the request records, so no series appears before it has a value.
        self._http_bundles: dict[tuple[str, str, int, str], tuple[CounterChild, HistogramChild, CounterChild]] = {}
        self._routed_bundles: dict[tuple[Any, ...], tuple[CounterChild, HistogramChild]] = {}
        self._generation_bundles: dict[tuple[str, ...], tuple[HistogramChild, HistogramChild]] = {}
        self._token_bundles: dict[tuple[str, ...], tuple[CounterChild, CounterChild]] = {}
        self._attempt_bundles: dict[tuple[str, str, str, str], tuple[CounterChild, CounterChild]] = {}
        self.http_requests = self._counter(
            "smg_http_requests_total", "HTTP requests received", ["method", "path"])
        self.http_duration = self._histogram(
            "smg_http_request_duration_seconds", "HTTP request duration", ["method", "path"],
            buckets=durations)
        self.http_responses = self._counter(
            "smg_http_responses_total", "HTTP responses sent", ["path", "status_code", "error_code"])
        self.router_requests = self._counter(
            "smg_router_requests_total", "Requests routed to a worker",
            ["router_type", "backend_type", "connection_mode", "model", "endpoint", "streaming"])
        self.router_duration = self._histogram(
            "smg_router_request_duration_seconds", "Routed request duration (successful requests)",
            ["router_type", "backend_type", "connection_mode", "model", "endpoint"], buckets=durations)
        generation = ["router_type", "backend_type", "model", "endpoint"]
        self.ttft = self._histogram(
            "smg_router_ttft_seconds", "Time to first token (first byte of a successful answer)", generation,
            buckets=durations)
        self.tpot = self._histogram(
            "smg_router_tpot_seconds", "Time per output token after the first", generation,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5))
        self.tokens = self._counter(
            "smg_router_tokens", "Tokens of successful requests, as the worker's usage reports them",
            [*generation, "token_type"])
        self.generation_duration = self._histogram(
            "smg_router_generation_duration_seconds", "Arrival to last byte of a successful request", generation,
            buckets=durations)
        self.router_errors = self._counter(
            "smg_router_request_errors_total", "Routed requests that ended in an error",
            ["router_type", "backend_type", "connection_mode", "model", "endpoint", "error_type"])
        self.upstream_responses = self._counter(
            "smg_router_upstream_responses_total", "Worker responses per attempt",
            ["router_type", "status_code", "error_code"])
        pd = ["backend_type", "model", "runtime"]  # runtime: the prefill worker's (sglang, vllm, ...)
        self.pd_ttft = self._histogram(
            "smg_pd_ttft_seconds", "PD: dispatch to the decode worker's response head", pd, buckets=durations)
        self.pd_prefill_duration = self._histogram(
            "smg_pd_prefill_duration_seconds", "PD: dispatch to the end of the prefill worker's answer", pd,
            buckets=durations)
        self.pd_kv_transfer_duration = self._histogram(
            "smg_pd_kv_transfer_duration_seconds", "PD, vLLM style: end of the prefill's answer to the decode "
            "worker's response head (the decode pulls the KV cache before it answers)", pd, buckets=durations)
        self.pd_bootstrap_failures = self._counter(
            "smg_pd_bootstrap_failures", "PD, SGLang style: pairs whose prefill leg failed (no hand-over "
            "through the bootstrap room)", pd)
        self.pd_kv_connector_mode = self._counter(
            "smg_pd_kv_connector_mode", "PD, vLLM style: dispatches by the prefill worker's KV connector mode "
            "(nixl, mooncake, passthrough)", ["mode"])
        self.pd_kv_transfer_failures = self._counter(
            "smg_pd_kv_transfer_failures", "PD: pairs whose prefill succeeded but whose hand-over did not: the "
            "decode leg failed, or a NIXL prefill returned no kv_transfer_params", pd)
        self.ttfb = self._histogram(
            "smg_router_ttfb_seconds", "Streams: time from dispatch to the first body byte from the worker",
            ["endpoint", "model", "worker"], buckets=durations)
        self.inter_chunk = self._histogram(
            "smg_router_inter_chunk_seconds", "Streams: time between two relayed chunks",
            ["endpoint", "model"], buckets=CHUNK_BUCKETS)
        self.worker_requests = self._counter(
            "smg_worker_requests_total", "Requests sent to each worker, by status",
            ["worker", "model", "status_code"])
        self.selections = self._counter(
            "smg_worker_selection_total", "Routing decisions", ["worker_type", "connection_mode", "model", "policy",
                                                                "worker"])
        self.retries = self._counter(
            "smg_worker_retries_total", "Attempts retried on another worker", ["worker_type", "endpoint"])
        self.retries_exhausted = self._counter(
            "smg_worker_retries_exhausted_total", "Requests that failed after every retry", ["worker_type", "endpoint"])
        self.retry_backoff = self._histogram(
            "smg_worker_retry_backoff_seconds", "Backoff before a retry", ["attempt"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.worker_errors = self._counter(
            "smg_worker_errors_total", "Worker failures (5xx answers and transport errors)",
            ["worker_type", "connection_mode", "error_type"])
        self.cb_transitions = self._counter(
            "smg_worker_cb_transitions_total", "Circuit breaker state changes", ["worker", "from", "to"])
        self.health_checks = self._counter(
            "smg_worker_health_checks_total", "Health probes", ["worker_type", "result"])
        self.tenant_requests = self._counter(
            "smg_tenant_requests_total", "Serving requests per tenant (bounded: see --priority-scheduler-tenant-"
            "metric-top-n)", ["tenant", "status_code"])
        self.scheduler_requests = self._counter(
            "smg_scheduler_requests_total", "Priority scheduler outcomes (admitted, queue_full, queue_timeout, "
            "preempted, ...) by class and tenant", ["class", "tenant", "outcome"])
        self.overload_shed = self._counter(
            "smg_worker_overload_shed_total", "Requests refused because every worker they could use was "
            "overloaded (--worker-overload-shed)", ["stage"])
        self.worker_exclusions = self._counter(
            "smg_worker_exclusions_total", "Workers taken out of routing by stall, wedge or stale detection "
            "(--worker-stall-secs, --worker-wedge-secs, --worker-stale-secs)", ["reason"])
        self.rate_limit = self._counter(
            "smg_http_rate_limit_total", "Admission decisions", ["result"])
        self.admission_rejected = self._counter(
            "smg_admission_queue_rejected_total", "Requests rejected by admission control", ["reason"])
        self.wasm_calls = self._counter(
            "smg_wasm_plugin_executions_total",
            "WASM plugin hook calls by outcome (continue, modify, reject, or a failure kind)",
            ["plugin", "hook", "outcome"])
        self.wasm_duration = self._histogram(
            "smg_wasm_plugin_duration_seconds", "Time in one WASM plugin hook call", ["plugin", "hook"],
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                     2.5, 5))

        self.mcp_calls = self._counter(
            "smg_mcp_tool_calls_total", "MCP tool calls run by the gateway, by outcome", ["server", "tool", "status"])
        self.mcp_duration = self._histogram(
            "smg_mcp_tool_call_duration_seconds", "Time of one MCP tool call", ["server", "tool"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def _counter(self, name: str, documentation: str, labelnames: Sequence[str]) -> CounterSeries:
        series = CounterSeries(name, documentation, labelnames)
        self._series.append(series)
        return series

    def _histogram(self, name: str, documentation: str, labelnames: Sequence[str],
                   buckets: Sequence[float]) -> HistogramSeries:
        series = HistogramSeries(name, documentation, labelnames, buckets)
        self._series.append(series)
        return series

    def attach(self, state: LiveState) -> None:
        """Expose the gateway's live state (workers, admission, cache trees) at scrape time."""
        self._serves = state.serves
        self._state = _StateCollector(state)

    def http_bundle(self, method: str, route: str, status: int,
                    error_code: str) -> tuple[CounterChild, HistogramChild, CounterChild]:
        """(requests, duration, responses) of one request to `route`; `error_code` already bounded."""
        key = (method, route, status, error_code)
        found = self._http_bundles.get(key)
        if found is None:
            found = self._http_bundles[key] = (self.http_requests(method, route), self.http_duration(method, route),
                                               self.http_responses(route, str(status), error_code))
        return found

    def routed_bundle(self, path: tuple[str, str, str], model_label: str, endpoint: str,
                      streaming: str) -> tuple[CounterChild, HistogramChild]:
        """(router requests, router duration) of a successful routed request."""
        key = (path, model_label, endpoint, streaming)
        found = self._routed_bundles.get(key)
        if found is None:
            found = self._routed_bundles[key] = (self.router_requests(*path, model_label, endpoint, streaming),
                                                 self.router_duration(*path, model_label, endpoint))
        return found

    def generation_bundle(self, router_type: str, backend_type: str, model_label: str,
                          endpoint: str) -> tuple[HistogramChild, HistogramChild]:
        """(generation duration, ttft) of a successful request."""
        key = (router_type, backend_type, model_label, endpoint)
        found = self._generation_bundles.get(key)
        if found is None:
            found = self._generation_bundles[key] = (self.generation_duration(*key), self.ttft(*key))
        return found

    def token_bundle(self, router_type: str, backend_type: str, model_label: str,
                     endpoint: str) -> tuple[CounterChild, CounterChild]:
        """(input tokens, output tokens) of a successful request whose usage is known."""
        key = (router_type, backend_type, model_label, endpoint)
        found = self._token_bundles.get(key)
        if found is None:
            found = self._token_bundles[key] = (self.tokens(*key, "input"), self.tokens(*key, "output"))
        return found

    def attempt_bundle(self, router_type: str, worker: str, model_label: str,
                       status: str) -> tuple[CounterChild, CounterChild]:
        """(upstream responses, worker requests) of one attempt."""
        key = (router_type, worker, model_label, status)
        found = self._attempt_bundles.get(key)
        if found is None:
            found = self._attempt_bundles[key] = (self.upstream_responses(router_type, status, ""),
                                                  self.worker_requests(worker, model_label, status))
        return found

    def model_label(self, model: str | None) -> str:
        """The `model` label value: bounded by the registry, whatever names clients send."""
        if model is None:
            return DEFAULT_MODEL
        return model if self._serves(model) else UNKNOWN_MODEL

    async def exposition(self) -> bytes:
        """The Prometheus text for a scrape. The series' values and the live state are read on the
        event loop (they are written there, and small); the text is written in a worker thread so a
        scrape never stalls serving."""
        series = [(s, s.snapshot()) for s in self._series]
        state = list(self._state.collect()) if self._state is not None else []
        return await asyncio.get_running_loop().run_in_executor(
            None, generate_latest, _Snapshot(series, self.registry, state))


class _Snapshot:
    """What generate_latest() reads: the series as copied, other collectors, state families collected earlier."""

    def __init__(self, series: list[tuple[Any, Any]], registry: CollectorRegistry,
                 state: list[GaugeMetricFamily]) -> None:
        self._series = series
        self._registry = registry
        self._state = state

    def collect(self) -> Iterator[Any]:
        for series, rows in self._series:
            yield series.family(rows)
        yield from self._registry.collect()
        yield from self._state


@dataclass(frozen=True)
class LiveState:
    """What a scrape reads, as narrow callables (the collector knows nothing else of the gateway)."""

    workers: Callable[[], Sequence[Worker]]
    serves: Callable[[str], bool]  # whether a registered worker serves a model (bounds the model label)
    requests_in_flight: Callable[[], int]
    admission_queue_depth: Callable[[], int]
    admission_in_flight: Callable[[], int]
    cache_trees: Callable[[], Iterable[tuple[str | None, float, float]]]  # (model, hit ratio, tree size)
    mesh: Callable[[], tuple[bool, int]] | None = None  # (shared store answers, failed calls); None: no mesh
    # The tokenization caches' totals over every tokenizer (TokenizerRegistry.cache_totals); None: not shown.
    tokenizer_cache: Callable[[], Mapping[str, int]] | None = None


class _StateCollector(Collector):
    def __init__(self, state: LiveState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state
        workers = state.workers()

        def gauge(name: str, doc: str, labels: list[str], rows: Iterator[tuple[list[str], float]]) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in rows:
                family.add_metric(values, value)
            return family

        yield gauge("smg_http_connections_active", "Requests being handled", [],
                    iter([([], state.requests_in_flight())]))
        yield gauge("smg_worker_requests_active", "Requests in flight per worker", ["worker"],
                    (([w.url], w.load) for w in workers))
        yield gauge("smg_worker_health", "1 if the worker is in rotation", ["worker"],
                    (([w.url], 1.0 if w.status.value == "ready" else 0.0) for w in workers))
        yield gauge("smg_worker_cb_state", "Circuit breaker state (0 closed, 1 open, 2 half-open)", ["worker"],
                    (([w.url], float(w.breaker.state)) for w in workers if w.breaker is not None))
        yield gauge("smg_worker_cb_consecutive_failures", "Breaker failures in a row", ["worker"],
                    (([w.url], w.breaker.failures) for w in workers if w.breaker is not None))
        pool: dict[tuple[str, str, str], int] = {}
        for w in workers:
            for model in w.model_ids:
                key = (w.worker_type.value, w.connection_mode, model)
                pool[key] = pool.get(key, 0) + 1
        yield gauge("smg_worker_pool_size", "Registered workers", ["worker_type", "connection_mode", "model"],
                    ((list(k), v) for k, v in pool.items()))
        engine_fields: tuple[tuple[str, Callable[[Any], float]], ...] = (
            ("running_requests", lambda s: s.running), ("waiting_requests", lambda s: s.waiting),
            ("token_usage", lambda s: s.token_usage), ("gen_throughput", lambda s: s.gen_throughput),
            ("cache_hit_rate", lambda s: s.cache_hit_rate))
        for name, read in engine_fields:
            yield gauge(f"smg_engine_{name}", f"Engine-reported {name.replace('_', ' ')}",
                        ["worker", "model", "dp_rank"],
                        (([w.url, w.model_id, "" if w.dp_rank is None else str(w.dp_rank)], float(read(w.snapshot)))
                         for w in workers if w.snapshot is not None))
        yield gauge("smg_admission_queue_depth", "Requests waiting for admission", [],
                    iter([([], state.admission_queue_depth())]))
        yield gauge("smg_admission_inflight", "Requests holding an admission slot", [],
                    iter([([], state.admission_in_flight())]))
        trees = list(state.cache_trees())
        yield gauge("smg_cache_aware_match_ratio", "cache_aware: share of decisions that found a holder", ["model"],
                    (([model or DEFAULT_MODEL], ratio) for model, ratio, _ in trees))
        if state.mesh is not None:
            up, errors = state.mesh()
            yield gauge("smg_mesh_store_up", "1 while the mesh's shared store (Redis) answers, 0 while the "
                        "gateway serves on its last known state", [], iter([([], 1.0 if up else 0.0)]))
            errors_family = CounterMetricFamily("smg_mesh_store_errors", "Mesh store calls that failed")
            errors_family.add_metric([], errors)
            yield errors_family  # type: ignore[misc]
        if state.tokenizer_cache is not None:
            yield from _tokenizer_cache_families(state.tokenizer_cache())
        yield gauge("smg_cache_tree_chars", "cache_aware: characters (or tokens) held in the tree", ["model"],
                    (([model or DEFAULT_MODEL], size) for model, _, size in trees))


def _tokenizer_cache_families(totals: Mapping[str, int]) -> Iterator[Any]:
    """SMG's tokenizer cache families (both layers always, a disabled one at zero; no model labels), and
    the layers' present size."""
    lookups = CounterMetricFamily("smg_tokenizer_cache_lookups", "Tokenizer cache lookups by layer and result; "
                                  "an L0 hit skips L1, and L1 counts a text without special-token boundaries as a "
                                  "miss", labels=["layer", "result"])
    evictions = CounterMetricFamily("smg_tokenizer_cache_evictions", "Tokenizer cache entries removed to make room",
                                    labels=["layer"])
    reused = CounterMetricFamily("smg_tokenizer_cache_reused_bytes", "UTF-8 input bytes served by tokenizer cache "
                                 "hits: whole texts for L0, matched prefixes for L1", labels=["layer"])
    entries = GaugeMetricFamily("smg_tokenizer_cache_entries", "Entries held by the tokenizer cache", labels=["layer"])
    memory = GaugeMetricFamily("smg_tokenizer_cache_memory_bytes", "Memory held by the tokenizer cache (as bounded "
                               "by --tokenizer-cache-l0-max-memory and --tokenizer-cache-l1-max-memory)",
                               labels=["layer"])
    for layer in ("l0", "l1"):
        lookups.add_metric([layer, "hit"], totals[f"{layer}_hits"])
        lookups.add_metric([layer, "miss"], totals[f"{layer}_misses"])
        evictions.add_metric([layer], totals[f"{layer}_evictions"])
        reused.add_metric([layer], totals[f"{layer}_reused_bytes"])
        entries.add_metric([layer], totals[f"{layer}_entries"])
        memory.add_metric([layer], totals[f"{layer}_memory_bytes"])
    yield from (lookups, evictions, reused, entries, memory)
