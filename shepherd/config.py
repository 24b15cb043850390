"""Typed gateway configuration.

`GatewayConfig` is built by the CLI (or directly by tests and embedders) and validated once at
start-up; every component reads the part it needs and never mutates it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

from shepherd.middleware.auth import AuthConfig, AuthConfigError
from shepherd.parsers.reasoning import REASONING_PARSER_NAMES
from shepherd.parsers.tool import TOOL_PARSER_NAMES
from shepherd.policies.factory import POLICY_NAMES
from shepherd.policies.options import PolicyOptionError, PolicyOptions
from shepherd.providers.startup import ProviderFlagError, parse_external_provider
from shepherd.workers.spec import is_grpc_target

DEFAULT_REQUEST_ID_HEADERS = ("x-request-id", "x-correlation-id", "x-trace-id", "request-id")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


@dataclass(frozen=True)
class HealthConfig:
    """Active health checks (SMG's defaults)."""

    endpoint: str = "/health"
    interval_secs: float = 60.0
    timeout_secs: float = 5.0
    failure_threshold: int = 3  # consecutive failures that take a ready worker out of rotation
    success_threshold: int = 2  # consecutive successes that bring it back
    disabled: bool = False
    remove_unhealthy: bool = False  # remove a worker that stays unhealthy (3 x failure_threshold more probes)

    def validate(self) -> None:
        if not self.endpoint.startswith("/"):
            raise ConfigError("--health-check-endpoint must start with /")
        if self.interval_secs <= 0 or self.timeout_secs <= 0:
            raise ConfigError("--health-check-interval-secs and --health-check-timeout-secs must be positive")
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ConfigError("--health-failure-threshold and --health-success-threshold must be at least 1")


@dataclass(frozen=True)
class BreakerConfig:
    """Per-worker circuit breakers, fed by real request outcomes."""

    failure_threshold: int = 10  # failures in a row (each within window_secs of the last) that open it
    success_threshold: int = 3  # half-open trial successes that close it; also the number of trial slots
    timeout_secs: float = 60.0  # how long it stays open before letting trials through
    window_secs: float = 120.0  # a failure older than this no longer counts toward opening
    disabled: bool = False

    def validate(self) -> None:
        if self.failure_threshold < 1 or self.success_threshold < 1:
            raise ConfigError("--cb-failure-threshold and --cb-success-threshold must be at least 1")
        if self.timeout_secs <= 0 or self.window_secs <= 0:
            raise ConfigError("--cb-timeout-duration-secs and --cb-window-duration-secs must be positive")


@dataclass(frozen=True)
class AdmissionConfig:
    """How many requests the gateway takes on at once, and how fast."""

    max_concurrent_requests: int = 0  # 0 (or negative): unlimited
    queue_size: int = 100  # requests that may wait for a slot; beyond it: 429
    queue_timeout_secs: float = 60.0  # a request waiting longer: 503
    rate_limit_tokens_per_second: float = 0.0  # 0: no rate limit
    per_key_max_concurrent_requests: int = 0  # per API key presented (0: unlimited)
    per_key_rate_limit_tokens_per_second: float = 0.0

    @property
    def enabled(self) -> bool:
        return (self.max_concurrent_requests > 0 or self.rate_limit_tokens_per_second > 0
                or self.per_key_max_concurrent_requests > 0 or self.per_key_rate_limit_tokens_per_second > 0)

    def validate(self) -> None:
        if self.queue_size < 0 or self.queue_timeout_secs <= 0:
            raise ConfigError("--queue-size must not be negative and --queue-timeout-secs must be positive")
        if self.rate_limit_tokens_per_second < 0 or self.per_key_rate_limit_tokens_per_second < 0:
            raise ConfigError("rate limits must not be negative")


@dataclass(frozen=True)
class WasmConfig:
    """WebAssembly plugins (--enable-wasm): SMG's limits, defaults and allowed ranges."""

    enabled: bool = False
    max_memory_pages: int = 1024  # 64 KiB pages of linear memory per instance (64 MiB)
    max_execution_time_ms: int = 1000  # per hook call (epoch deadline)
    max_stack_size: int = 1024 * 1024  # guest stack bytes
    thread_pool_size: int = field(default_factory=lambda: max(1, min(os.cpu_count() or 1, 4)))
    max_plugins: int = 10  # plugins attached at once (SMG's compiled-module cache size)
    max_body_size: int = 10 * 1024 * 1024  # request/response bodies shown to plugins
    max_module_size: int = 64 * 1024 * 1024  # bytes of one component (ours: SMG sets none)
    plugins_file: str | None = None  # JSON list of plugins loaded at start and on POST /wasm/reload

    _RANGES = (  # (field, flag, low, high)
        ("max_memory_pages", "--wasm-max-memory-pages", 1, 65536),
        ("max_execution_time_ms", "--wasm-max-execution-time-ms", 1, 300_000),
        ("max_stack_size", "--wasm-max-stack-size", 64 * 1024, 16 * 1024 * 1024),
        ("thread_pool_size", "--wasm-thread-pool-size", 1, 128),
        ("max_plugins", "--wasm-max-plugins", 1, 1000),
        ("max_body_size", "--wasm-max-body-size", 1, 100 * 1024 * 1024),
        ("max_module_size", "--wasm-max-module-size", 1024, 1024 * 1024 * 1024),
    )

    def validate(self) -> None:
        for name, flag, low, high in self._RANGES:
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{flag} must be between {low} and {high}, got {value}")
        if self.plugins_file is not None and not self.enabled:
            raise ConfigError("--wasm-plugins-file needs --enable-wasm")


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "0.0.0.0"
    port: int = 30000
    worker_urls: tuple[str, ...] = ()
    policy: str = "round_robin"
    policy_options: PolicyOptions = field(default_factory=PolicyOptions)

    # Prefill/decode disaggregation.
    pd_disaggregation: bool = False
    prefill_urls: tuple[tuple[str, int | None], ...] = ()  # (url, bootstrap port or None)
    decode_urls: tuple[str, ...] = ()
    prefill_policy: str | None = None  # None: --policy
    decode_policy: str | None = None
    pd_transfer: str = "auto"  # auto (by the prefill worker's runtime) | sglang (parallel) | vllm (sequential)

    # Load monitoring and data-parallel ranks.
    load_monitor_interval_secs: float = 10.0
    disable_load_monitoring: bool = False  # poll only when a load-aware policy needs it
    dp_aware: bool = False  # route to each data-parallel rank of a worker as its own worker

    # Logging.
    log_level: str = "info"
    log_json: bool = False

    # Limits and timeouts.
    request_timeout_secs: float = 1800.0
    connect_timeout_secs: float = 10.0
    max_payload_size: int = 512 * 1024 * 1024
    upstream_pool_idle_timeout_secs: float = 3.0

    # Worker registration (control plane).
    worker_startup_timeout_secs: float = 1800.0
    worker_startup_check_interval_secs: float = 1.0
    worker_drain_timeout_secs: float = 30.0
    worker_api_key: str | None = None

    # Retries: a request that failed before any byte reached the client moves to another worker.
    retry_max_retries: int = 4  # retries after the first attempt (SMG's default of 5 attempts)
    retry_initial_backoff_ms: float = 50.0
    retry_max_backoff_ms: float = 30_000.0
    retry_backoff_multiplier: float = 1.5
    retry_jitter_factor: float = 0.2

    health: HealthConfig = field(default_factory=HealthConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    wasm: WasmConfig = field(default_factory=WasmConfig)

    # Shutdown: on SIGTERM, /readiness turns 503 at once; the listener stays open for the settle
    # window (so load balancers notice), then closes; in-flight requests get the rest of the grace.
    shutdown_grace_period_secs: float = 180.0
    shutdown_settle_secs: float | None = None  # None: min(grace / 2, 5)

    # Headers and credentials.
    request_id_headers: tuple[str, ...] = DEFAULT_REQUEST_ID_HEADERS
    auth: AuthConfig = field(default_factory=AuthConfig)  # the gateway's own keys are never forwarded
    cors_allowed_origins: tuple[str, ...] = ()
    tls_cert_path: str | None = None
    tls_key_path: str | None = None

    # Observability.
    prometheus_host: str = "0.0.0.0"
    prometheus_port: int = 29000
    disable_metrics: bool = False
    enable_trace: bool = False
    otlp_traces_endpoint: str = "localhost:4317"
    trace_sample_ratio: float = 1.0
    log_dir: str | None = None

    # External providers (--external-provider URL=KIND[,key_env=VAR][,model=ID]...).
    external_providers: tuple[str, ...] = ()
    external_model_refresh_secs: float = 10.0  # a model-list refresh on a miss happens at most this often

    @property
    def settle_secs(self) -> float:
        if self.shutdown_settle_secs is not None:
            return min(self.shutdown_settle_secs, self.shutdown_grace_period_secs)
        return min(self.shutdown_grace_period_secs / 2, 5.0)

    # Output parsers (None: detected from each model's name).
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None

    # gRPC pipeline: where tokenizers come from, and the tokenization cache.
    model_path: str | None = None
    tokenizer_path: str | None = None
    chat_template: str | None = None  # a .jinja (or .json) file that overrides every model's template
    tokenizer_cache_enable_l0: bool = False
    tokenizer_cache_l0_max_entries: int = 10_000
    tokenizer_cache_enable_l1: bool = False
    tokenizer_cache_l1_max_memory: int = 50 * 1024 * 1024

    @cached_property
    def gateway_keys(self) -> frozenset[str]:
        return frozenset(self.auth.api_keys)

    def validate(self) -> GatewayConfig:
        """Return self, or raise ConfigError naming the first bad value."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, got {self.port}")
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"--policy must be one of {', '.join(POLICY_NAMES)}, got {self.policy!r}")
        try:
            self.policy_options.validate()
        except PolicyOptionError as exc:
            raise ConfigError(str(exc)) from None
        for name in (self.prefill_policy, self.decode_policy):
            if name is not None and name not in POLICY_NAMES:
                raise ConfigError(f"--prefill-policy/--decode-policy must be one of {', '.join(POLICY_NAMES)}")
        if self.pd_transfer not in ("auto", "sglang", "vllm"):
            raise ConfigError("--pd-transfer must be auto, sglang or vllm")
        if (self.prefill_urls or self.decode_urls) and not self.pd_disaggregation:
            raise ConfigError("--prefill and --decode need --pd-disaggregation")
        for url in [u for u, _ in self.prefill_urls] + list(self.decode_urls):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"worker URL {url!r} must start with http:// or https://")
        if self.load_monitor_interval_secs <= 0:
            raise ConfigError("--load-monitor-interval must be positive")
        if self.log_level not in ("debug", "info", "warn", "warning", "error"):
            raise ConfigError(f"--log-level must be one of debug, info, warn, error, got {self.log_level!r}")
        for name in ("request_timeout_secs", "connect_timeout_secs", "worker_startup_timeout_secs",
                     "worker_startup_check_interval_secs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.worker_drain_timeout_secs < 0:
            raise ConfigError("--worker-drain-timeout-secs must not be negative")
        if self.max_payload_size <= 0:
            raise ConfigError(f"--max-payload-size must be positive, got {self.max_payload_size}")
        if self.retry_max_retries < 0:
            raise ConfigError(f"--retry-max-retries must not be negative, got {self.retry_max_retries}")
        if self.retry_initial_backoff_ms < 0 or self.retry_max_backoff_ms < 0:
            raise ConfigError("retry backoff times must not be negative")
        if self.retry_backoff_multiplier < 1:
            raise ConfigError(f"--retry-backoff-multiplier must be at least 1, got {self.retry_backoff_multiplier}")
        if not 0 <= self.retry_jitter_factor <= 1:
            raise ConfigError(f"--retry-jitter-factor must be between 0 and 1, got {self.retry_jitter_factor}")
        try:
            self.auth.validate()
        except AuthConfigError as exc:
            raise ConfigError(str(exc)) from None
        if bool(self.tls_cert_path) != bool(self.tls_key_path):
            raise ConfigError("TLS needs both --tls-cert-path and --tls-key-path")
        if not 0.0 <= self.trace_sample_ratio <= 1.0:
            raise ConfigError("--trace-sample-ratio must be between 0 and 1")
        if not 0 <= self.prometheus_port < 65536:
            raise ConfigError("--prometheus-port must be between 0 and 65535")
        self.health.validate()
        self.breaker.validate()
        self.admission.validate()
        self.wasm.validate()
        if self.shutdown_grace_period_secs < 0 or (self.shutdown_settle_secs or 0) < 0:
            raise ConfigError("shutdown times must not be negative")
        for url in self.worker_urls:
            if not url.startswith(("http://", "https://", "grpc://")):
                raise ConfigError(f"worker URL {url!r} must start with http://, https:// or grpc://")
            if url.startswith("grpc://") and not is_grpc_target(url):
                raise ConfigError(f"gRPC worker URL {url!r} must be grpc://host:port")
        if self.tokenizer_cache_enable_l0 and self.tokenizer_cache_l0_max_entries <= 0:
            raise ConfigError("--tokenizer-cache-l0-max-entries must be positive when L0 is enabled")
        if self.tokenizer_cache_enable_l1 and self.tokenizer_cache_l1_max_memory <= 0:
            raise ConfigError("--tokenizer-cache-l1-max-memory must be positive when L1 is enabled")
        if self.tool_call_parser is not None and self.tool_call_parser not in TOOL_PARSER_NAMES:
            raise ConfigError(f"--tool-call-parser must be one of {', '.join(sorted(TOOL_PARSER_NAMES))}, "
                              f"got {self.tool_call_parser!r}")
        if self.reasoning_parser is not None and self.reasoning_parser not in REASONING_PARSER_NAMES:
            raise ConfigError(f"--reasoning-parser must be one of {', '.join(sorted(REASONING_PARSER_NAMES))}, "
                              f"got {self.reasoning_parser!r}")
        if not self.request_id_headers:
            raise ConfigError("--request-id-headers needs at least one header name")
        if self.external_model_refresh_secs < 0:
            raise ConfigError("--external-model-refresh-secs must not be negative")
        for value in self.external_providers:
            try:
                parse_external_provider(value).to_spec(os.environ)
            except ProviderFlagError as exc:
                raise ConfigError(str(exc)) from None
        return self
