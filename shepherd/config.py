"""Typed gateway configuration: plain data at the bottom of the package.

`GatewayConfig` is built by the CLI (or directly by tests and embedders) and validated once at
start-up; every component reads the part it needs and never mutates it. This module imports no
other part of Shepherd: values that name something another layer owns (a policy, a parser, a
provider) are checked where the app is assembled (`shepherd.assembly.check_names`).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, fields
from functools import cached_property

ROUTED_WORKER_HEADER_MODES = ("id", "url", "none")
MAX_KV_EVENT_ENDPOINT_CHARS = 256


def kv_event_endpoint_problem(endpoint: str) -> str | None:
    """Why a ZMQ KV-event endpoint cannot be connected to (None: it can); see kv/endpoints.py."""
    if len(endpoint) > MAX_KV_EVENT_ENDPOINT_CHARS:
        return f"a KV-event endpoint is at most {MAX_KV_EVENT_ENDPOINT_CHARS} characters"
    if not endpoint.startswith(("tcp://", "ipc://")) or "*" in endpoint:
        return f"KV-event endpoint {endpoint!r} must be tcp://HOST:PORT or ipc://PATH (the engine binds, we connect)"
    return None
DEFAULT_REQUEST_ID_HEADERS = ("x-request-id", "x-correlation-id", "x-trace-id", "request-id")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


DEFAULT_ROUTING_KEY_HEADERS = ("x-smg-routing-key",)


class PolicyOptionError(ConfigError):
    """A policy tunable is out of range; the message names the flag."""


@dataclass(frozen=True)
class PolicyOptions:
    # cache_aware
    cache_threshold: float = 0.3  # matched share of the prompt above which a holder is preferred
    balance_abs_threshold: float = 64  # spill gate, absolute part (capped at the load's natural swing)
    balance_rel_threshold: float = 1.5  # spill gate, relative part
    balance_token_usage_threshold: float = 1.0  # KV-usage spread that abandons affinity (>= 1 disables)
    overload_token_usage_threshold: float = 1.0  # KV-usage ceiling that abandons affinity (>= 1 disables)
    eviction_interval_secs: float = 60.0
    max_tree_size: int = 2**26  # characters (or tokens) per model's tree, shared by its workers

    # precise_cache: the engines' KV-cache events
    kv_index: str = "positional"  # positional: index blocks by (prefix, position) from events; none: no events
    block_size: int = 16  # tokens per KV block when a worker's events have not said

    # least_load / power_of_two
    least_load_kv_pressure_weight: float = 0.15
    least_load_default_throughput: float = 2000.0
    least_load_mean_prefill_tokens: int = 1024
    least_load_max_waiting_requests: int = 0
    power_of_two_load_metric: str = "expected_wait"

    # prefix_hash
    prefix_token_count: int = 256
    prefix_hash_load_factor: float = 1.25
    prefix_hash_balance_abs_threshold: float = 10
    cache_boundaries: tuple[int, ...] = ()

    # manual / consistent_hashing
    routing_key_headers: tuple[str, ...] = DEFAULT_ROUTING_KEY_HEADERS
    max_idle_secs: float = 14400.0
    assignment_mode: str = "random"
    # manual: place a key by rendezvous hashing over the available workers instead of
    # assignment_mode, so every instance of a mesh pins it to the same worker without asking the others.
    agree_across_instances: bool = False
    # --routing-key-override: sticky sessions on every policy (policies/sticky.py)
    routing_key_override: bool = False
    # keys a sticky table (manual's, the override's) holds before the least recently used goes
    max_sticky_keys: int = 100_000

    # bucket
    bucket_adjust_interval_secs: float = 5.0

    def validate(self) -> PolicyOptions:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise PolicyOptionError(f"--{_flag(item.name)} must be finite")
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise PolicyOptionError("--cache-threshold must be between 0 and 1")
        if self.balance_rel_threshold < 1.0 or self.prefix_hash_load_factor < 1.0:
            raise PolicyOptionError("--balance-rel-threshold and --prefix-hash-load-factor must be at least 1")
        if self.balance_abs_threshold < 0 or self.prefix_hash_balance_abs_threshold < 0:
            raise PolicyOptionError("balance thresholds must not be negative")
        if self.balance_token_usage_threshold <= 0 or self.overload_token_usage_threshold <= 0:
            raise PolicyOptionError("token-usage thresholds must be positive (1.0 disables them)")
        if self.eviction_interval_secs <= 0 or self.bucket_adjust_interval_secs <= 0 or self.max_idle_secs <= 0:
            raise PolicyOptionError("policy intervals must be positive")
        if self.max_tree_size <= 0 or self.prefix_token_count <= 0 or self.least_load_mean_prefill_tokens <= 0:
            raise PolicyOptionError("--max-tree-size, --prefix-token-count and mean prefill tokens must be positive")
        if self.least_load_default_throughput <= 0 or self.least_load_kv_pressure_weight < 0:
            raise PolicyOptionError("least_load throughput must be positive and its KV weight not negative")
        if self.least_load_max_waiting_requests < 0:
            raise PolicyOptionError("--least-load-max-waiting-requests must not be negative")
        if self.power_of_two_load_metric not in ("expected_wait", "requests", "least_requests"):
            raise PolicyOptionError("--power-of-two-load-metric must be expected_wait, requests or least_requests")
        if self.assignment_mode not in ("random", "min_load", "min_group", "delegate"):
            raise PolicyOptionError("--assignment-mode must be random, min_load, min_group or delegate")
        if any(b <= 0 for b in self.cache_boundaries):
            raise PolicyOptionError("--cache-boundaries must be positive token positions")
        if self.kv_index not in ("positional", "none"):
            raise PolicyOptionError("--kv-index must be positional or none")
        if self.block_size <= 0:
            raise PolicyOptionError("--block-size must be positive")
        if self.max_sticky_keys <= 0:
            raise PolicyOptionError("max_sticky_keys must be positive")
        if not self.routing_key_headers:
            raise PolicyOptionError("--routing-key-headers needs at least one header")
        return self


def _flag(name: str) -> str:
    return name.replace("_", "-")


class AuthConfigError(ConfigError):
    """A credential flag is malformed."""


@dataclass(frozen=True)
class ControlPlaneKey:
    id: str
    name: str
    role: str
    digest: bytes = field(repr=False)

    @classmethod
    def parse(cls, spec: str) -> ControlPlaneKey:
        parts = spec.split(":", 3)
        if len(parts) != 4 or not all(parts):
            raise AuthConfigError("--control-plane-api-keys entries look like id:name:role:key")
        key_id, name, role, key = parts
        return cls(key_id, name, role.lower(), hashlib.sha256(key.encode()).digest())


@dataclass(frozen=True)
class TenantKey:
    """A `--tenant-api-key tenant_id:key` entry: a serving key that names its caller's tenant."""

    tenant: str
    key: str = field(repr=False)

    @classmethod
    def parse(cls, spec: str) -> TenantKey:
        tenant, sep, key = spec.partition(":")
        if not sep or not tenant.strip() or not key:
            raise AuthConfigError("--tenant-api-key entries look like tenant_id:key")
        return cls(tenant.strip(), key)


DEFAULT_TENANT_HEADER = "x-smg-tenant-id"


@dataclass(frozen=True)
class AuthConfig:
    api_keys: tuple[str, ...] = ()
    tenant_keys: tuple[TenantKey, ...] = ()  # serving keys that each resolve to their own tenant
    trust_tenant_header: bool = False  # take the tenant from --tenant-header-name (set by a trusted proxy)
    tenant_header_name: str = DEFAULT_TENANT_HEADER
    control_plane_keys: tuple[ControlPlaneKey, ...] = ()
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks_uri: str | None = None
    jwt_role_mapping: tuple[tuple[str, str], ...] = ()  # (claim value, gateway role)
    allow_unauthenticated_admin: bool = False  # the explicit choice of an admin API open to anyone

    @property
    def control_plane_auth(self) -> bool:
        return bool(self.control_plane_keys or self.jwt_issuer)

    @property
    def serving_keys(self) -> tuple[str, ...]:
        """Every key that opens the serving routes (the shared ones and the tenants')."""
        return self.api_keys + tuple(entry.key for entry in self.tenant_keys)

    def validate(self) -> None:
        jwt_fields = (self.jwt_issuer, self.jwt_jwks_uri)
        if any(jwt_fields) and not all(jwt_fields):
            raise AuthConfigError("JWT auth needs both --jwt-issuer and --jwt-jwks-uri")
        if self.allow_unauthenticated_admin and self.control_plane_auth:
            raise AuthConfigError("--allow-unauthenticated-admin contradicts --control-plane-api-keys/--jwt-issuer")
        if len({entry.key for entry in self.tenant_keys} | set(self.api_keys)) < len(self.serving_keys):
            raise AuthConfigError("a key is given twice across --api-key and --tenant-api-key; each key names "
                                  "one tenant")
        if not self.tenant_header_name.strip() or any(c in self.tenant_header_name for c in " :\r\n"):
            raise AuthConfigError(f"--tenant-header-name must be a header name, got {self.tenant_header_name!r}")
        if self.allow_unauthenticated_admin and self.serving_keys:
            # Serving is keyed, so the admin API must be too: else anyone could add a worker and read prompts.
            raise AuthConfigError("with --api-key, the admin API needs --control-plane-api-keys or --jwt-issuer, "
                                  "not --allow-unauthenticated-admin")


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


def concurrency_bound(value: int = -1) -> int:
    """SMG's reading of --max-concurrent-requests: -1 derives a bound from the host (1024 per core, at
    least 4096), 0 (or below -1) means none."""
    if value == -1:
        return max(4096, 1024 * (os.cpu_count() or 1))
    return max(0, value)


@dataclass(frozen=True)
class AdmissionConfig:
    """How many requests the gateway takes on at once, and how fast."""

    max_concurrent_requests: int = field(default_factory=concurrency_bound)  # 0: unlimited
    queue_size: int = 100  # requests that may wait for a slot; beyond it: 429
    queue_timeout_secs: float = 60.0  # a request waiting longer: 503
    rate_limit_tokens_per_second: float = 0.0  # 0: no rate limit
    per_key_max_concurrent_requests: int = 0  # per API key presented (0: unlimited)
    per_key_rate_limit_tokens_per_second: float = 0.0
    tenant_rate_limit_enabled: bool = False  # per-tenant limits, from the YAML at tenant_rate_limit_config
    tenant_rate_limit_config: str | None = None
    priority_scheduler_enabled: bool = False  # x-smg-priority classes in the admission queue
    priority_scheduler_default_max_class: str = "default"  # for tenants the scheduler YAML does not list
    priority_scheduler_config: str | None = None  # the scheduler YAML (None: built-in class defaults)

    @property
    def enabled(self) -> bool:
        return (self.max_concurrent_requests > 0 or self.rate_limit_tokens_per_second > 0
                or self.per_key_max_concurrent_requests > 0 or self.per_key_rate_limit_tokens_per_second > 0
                or self.tenant_rate_limit_enabled or self.priority_scheduler_enabled)

    def validate(self) -> None:
        if self.queue_size < 0 or self.queue_timeout_secs <= 0:
            raise ConfigError("--queue-size must not be negative and --queue-timeout-secs must be positive")
        if self.rate_limit_tokens_per_second < 0 or self.per_key_rate_limit_tokens_per_second < 0:
            raise ConfigError("rate limits must not be negative")
        if self.tenant_rate_limit_enabled and not self.tenant_rate_limit_config:
            raise ConfigError("--tenant-rate-limit-enabled needs --tenant-rate-limit-config FILE")


DISCOVERY_PROVIDERS = ("kubernetes", "file")


@dataclass(frozen=True)
class DiscoveryConfig:
    """Where workers are discovered besides the command line and the admin API (None: nowhere)."""

    provider: str | None = None  # kubernetes | file
    # Kubernetes: each selector is key=value pairs that must all match a pod's labels.
    selector: tuple[tuple[str, str], ...] = ()
    prefill_selector: tuple[tuple[str, str], ...] = ()
    decode_selector: tuple[tuple[str, str], ...] = ()
    port: int = 80  # a pod's worker port unless its smg.ai/worker-ports annotation says otherwise
    namespace: str | None = None  # None: every namespace
    model_id_from: str | None = None  # namespace | label:<key> | annotation:<key>
    # File: a YAML/JSON list of worker specs, re-read when it changes and every check interval.
    file: str | None = None
    check_interval_secs: float = 30.0

    def validate(self, pd_disaggregation: bool) -> None:
        kubernetes_flags = bool(self.selector or self.prefill_selector or self.decode_selector or self.namespace
                                or self.model_id_from)
        if self.provider != "kubernetes" and kubernetes_flags:
            raise ConfigError("--selector, --prefill-selector, --decode-selector, --service-discovery-namespace "
                              "and --model-id-from need --service-discovery")
        if self.provider != "file" and self.file:
            raise ConfigError("--discovery-file needs --discovery-provider file")
        if self.provider is None:
            return
        if self.provider not in DISCOVERY_PROVIDERS:
            raise ConfigError(f"--discovery-provider must be one of {', '.join(DISCOVERY_PROVIDERS)}")
        if self.provider == "file":
            if not self.file:
                raise ConfigError("--discovery-provider file needs --discovery-file PATH")
            if self.check_interval_secs <= 0:
                raise ConfigError("--discovery-check-interval-secs must be positive")
            return
        if not 0 < self.port < 65536:
            raise ConfigError(f"--service-discovery-port must be between 1 and 65535, got {self.port}")
        if pd_disaggregation:
            if not (self.prefill_selector and self.decode_selector):
                raise ConfigError("Kubernetes discovery with --pd-disaggregation needs --prefill-selector "
                                  "and --decode-selector")
        elif not self.selector:
            raise ConfigError("Kubernetes discovery needs --selector KEY=VALUE (an empty selector matches nothing)")
        elif self.prefill_selector or self.decode_selector:
            raise ConfigError("--prefill-selector and --decode-selector need --pd-disaggregation")
        source = self.model_id_from
        if source is not None and source != "namespace" and not (
                source.partition(":")[0] in ("label", "annotation") and source.partition(":")[2]):
            raise ConfigError(f"--model-id-from must be namespace, label:<key> or annotation:<key>, got {source!r}")


def parse_selector(entries: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`key=value` entries (a comma-separated list in one entry is fine) into pairs."""
    pairs: list[tuple[str, str]] = []
    for entry in entries:
        for part in entry.split(","):
            if not part.strip():
                continue
            key, sep, value = part.strip().partition("=")
            if not sep or not key or "!" in key:
                raise ConfigError(f"a selector is key=value pairs, got {part.strip()!r}")
            pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class RetryConfig:
    """A request that failed before any byte reached the client moves to another worker, after a backoff."""

    max_retries: int = 5  # SMG's meaning: total attempts, the first included (1: never retry)
    initial_backoff_ms: float = 50.0
    max_backoff_ms: float = 30_000.0
    backoff_multiplier: float = 1.5
    jitter_factor: float = 0.2  # each delay is moved by up to this share, either way

    @property
    def attempts(self) -> int:
        return max(1, self.max_retries)  # as SMG: 0 behaves like 1

    def validate(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"--retry-max-retries must not be negative, got {self.max_retries}")
        if self.initial_backoff_ms < 0 or self.max_backoff_ms < 0:
            raise ConfigError("retry backoff times must not be negative")
        if self.backoff_multiplier < 1:
            raise ConfigError(f"--retry-backoff-multiplier must be at least 1, got {self.backoff_multiplier}")
        if not 0 <= self.jitter_factor <= 1:
            raise ConfigError(f"--retry-jitter-factor must be between 0 and 1, got {self.jitter_factor}")


HISTORY_BACKENDS = ("memory", "none", "sqlite", "postgres", "redis")


@dataclass(frozen=True)
class HistoryConfig:
    """Where chat history (stored responses, conversations and their items) lives."""

    backend: str = "sqlite"  # the embedded default for one gateway: a file under data_dir
    data_dir: str | None = None  # sqlite: None means $XDG_DATA_HOME/shepherd (~/.local/share/shepherd)
    memory_max_responses: int = 10_000
    memory_max_items: int = 100_000
    memory_retention_secs: float = 86_400.0  # 0: count bounds only
    postgres_db_url: str | None = None
    postgres_pool_max: int = 16
    postgres_op_timeout_secs: float = 5.0
    redis_url: str | None = None
    redis_pool_max: int = 16
    redis_retention_days: int = 30  # -1: never expire
    redis_op_timeout_secs: float = 5.0

    def validate(self) -> None:
        if self.backend not in HISTORY_BACKENDS:
            raise ConfigError(f"--history-backend must be one of {', '.join(HISTORY_BACKENDS)}, got {self.backend!r}")
        if self.backend == "postgres" and not self.postgres_db_url:
            raise ConfigError("--history-backend postgres needs --postgres-db-url")
        if self.backend == "redis" and not self.redis_url:
            raise ConfigError("--history-backend redis needs --redis-url")
        if self.postgres_db_url and not self.postgres_db_url.startswith(("postgres://", "postgresql://")):
            raise ConfigError("--postgres-db-url must start with postgres:// or postgresql://")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("--redis-url must start with redis://, rediss:// or unix://")
        if self.postgres_pool_max < 1 or self.redis_pool_max < 1:
            raise ConfigError("--postgres-pool-max and --redis-pool-max must be at least 1")
        if not (self.postgres_op_timeout_secs > 0 and self.redis_op_timeout_secs > 0):
            raise ConfigError("--postgres-op-timeout-secs and --redis-op-timeout-secs must be positive")
        if self.redis_retention_days != -1 and self.redis_retention_days < 1:
            raise ConfigError("--redis-retention-days must be at least 1, or -1 (never expire)")
        if self.memory_max_responses < 1 or self.memory_max_items < 1 or self.memory_retention_secs < 0:
            raise ConfigError("--history-memory-max-* must be at least 1 and --history-memory-retention-secs "
                              "not negative")


@dataclass(frozen=True)
class ServerLimits:
    """What one client connection or request may make the gateway hold, and for how long."""

    header_read_timeout_secs: float = 30.0  # from a request's first byte to the end of its head (SMG's name)
    idle_connection_timeout_secs: float = 90.0  # a kept-alive connection with no request (SMG's name)
    body_read_timeout_secs: float = 60.0  # the whole request body, read before admission
    stream_body_stall_timeout_secs: float = 300.0  # the longest wait for the next body bytes (SMG's name; 0: none)
    max_buffered_request_bytes: int = 1024**3  # request bodies held at once, all requests together

    def validate(self) -> None:
        for name in ("header_read_timeout_secs", "idle_connection_timeout_secs", "body_read_timeout_secs",
                     "max_buffered_request_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.stream_body_stall_timeout_secs < 0:
            raise ConfigError("--stream-body-stall-timeout-secs must not be negative (0: no stall bound)")


@dataclass(frozen=True)
class MeshConfig:
    """Shared state across the processes of one gateway and the instances of a fleet.

    With `redis_url`, every instance whose `name` is the same shares its worker registry, health
    verdicts, cache-aware routing and rate limits through that Redis. Without it, the processes of
    one `--workers N` gateway share only the worker registry, through a local file channel.
    """

    redis_url: str | None = None
    name: str = "shepherd"  # instances with the same name act as one gateway
    sync_interval_secs: float = 0.25  # how often shared state is read back (the staleness bound's base)
    op_timeout_secs: float = 0.25  # bound on one Redis call; past it the instance serves on what it knows

    def validate(self) -> None:
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("--mesh-redis-url must be a redis://, rediss:// or unix:// URL")
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("--mesh-name must be letters, digits, '-' and '_'")
        if not 0 < self.sync_interval_secs <= 1.0:
            raise ConfigError("--mesh-sync-interval-secs must be in (0, 1] (changes must spread within 1 s)")
        if self.op_timeout_secs <= 0:
            raise ConfigError("--mesh-op-timeout-secs must be positive")


@dataclass(frozen=True)
class ProcessConfig:
    """How this process serves: alone, or as one of the `--workers N` children of a supervisor."""

    workers: int = 1  # processes sharing the listening port (the supervisor starts them)
    child_index: int | None = None  # set in a child by its supervisor
    local_channel_dir: str | None = None  # the supervisor's folder: shared registry, metrics ports

    def validate(self) -> None:
        if not 1 <= self.workers <= 256:
            raise ConfigError(f"--workers must be between 1 and 256, got {self.workers}")


@dataclass(frozen=True)
class RecordingConfig:
    """Traffic recording for `shepherd replay`: off unless `directory` is set."""

    directory: str | None = None
    prompts: bool = False  # also write the prompt text (private: off by default)
    max_file_bytes: int = 64 * 1024 * 1024  # a file past this size is closed and a new one started
    max_files: int = 8  # the oldest files beyond this many are deleted
    max_buffer_bytes: int = 8 * 1024 * 1024  # records waiting for the writer; beyond it they are dropped (counted)

    def validate(self) -> None:
        if self.max_file_bytes < 4096 or self.max_files < 1 or self.max_buffer_bytes < 4096:
            raise ConfigError("--record-max-file-size and the record buffer must be at least 4K, "
                              "--record-max-files at least 1")
        if self.prompts and not self.directory:
            raise ConfigError("--record-prompts needs --record-traffic DIR")
        if self.directory:
            if os.path.exists(self.directory) and not os.path.isdir(self.directory):
                raise ConfigError(f"--record-traffic {self.directory} exists and is not a directory")
            existing = self.directory
            while not os.path.exists(existing):  # it will be created: its nearest existing parent must be writable
                existing = os.path.dirname(os.path.abspath(existing))
            if not os.access(existing, os.W_OK | os.X_OK):
                raise ConfigError(f"--record-traffic {self.directory} is not writable")


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
class PdAdmissionConfig:
    """PD admission (routers/http/pd_admission.py), SMG's flags and defaults."""

    decode_wait_secs: float = 30.0  # --pd-admission-wait-secs: for a slot in the decode's running window; 0: shed
    prefill_max_inflight: int = -1  # --prefill-max-inflight-requests-per-worker; <= 0: no prefill admission
    prefill_queue_size: int | None = None  # None: 100 once prefill admission is on
    prefill_queue_timeout_secs: float | None = None  # None: 60

    @property
    def prefill_enabled(self) -> bool:
        return self.prefill_max_inflight > 0

    @property
    def queue_size(self) -> int:
        return 100 if self.prefill_queue_size is None else self.prefill_queue_size

    @property
    def queue_timeout_secs(self) -> float:
        return 60.0 if self.prefill_queue_timeout_secs is None else self.prefill_queue_timeout_secs

    def validate(self) -> None:
        if self.decode_wait_secs < 0:
            raise ConfigError("--pd-admission-wait-secs must not be negative")
        if self.queue_size < 0:
            raise ConfigError("--prefill-queue-size must not be negative")
        if self.queue_timeout_secs <= 0:
            raise ConfigError("--prefill-queue-timeout-secs must be positive")


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "0.0.0.0"
    port: int = 30000
    worker_urls: tuple[str, ...] = ()
    # (HTTP worker URL, its engine's ZMQ KV-event PUB endpoint, its replay endpoint or None): set as the
    # worker's kv_events_endpoint / kv_events_replay_endpoint labels (kv/zmq_follow.py)
    kv_events_endpoints: tuple[tuple[str, str, str | None], ...] = ()
    policy: str = "cache_aware"  # SMG's default
    policy_options: PolicyOptions = field(default_factory=PolicyOptions)

    # Prefill/decode disaggregation.
    pd_disaggregation: bool = False
    prefill_urls: tuple[tuple[str, int | None], ...] = ()  # (url, bootstrap port or None)
    decode_urls: tuple[str, ...] = ()
    prefill_policy: str | None = None  # None: --policy
    decode_policy: str | None = None
    pd_transfer: str = "auto"  # auto (by the prefill worker's runtime) | sglang (parallel) | vllm (sequential)
    pd_admission: PdAdmissionConfig = field(default_factory=lambda: PdAdmissionConfig())

    # Load monitoring and data-parallel ranks.
    load_monitor_interval_secs: float = 10.0
    disable_load_monitoring: bool = False  # poll only when a load-aware policy needs it
    dp_aware: bool = False  # route to each data-parallel rank of a worker as its own worker

    # Worker overload protection (workers/overload.py): on by default, as SMG 1.13.
    worker_overload_protection: bool = True
    worker_overload_waiting_requests: int = 8  # an engine reporting this many queued requests is overloaded
    worker_overload_token_usage: float = 0.8  # ... or this KV-cache usage
    worker_overload_shed: bool = False  # all candidates overloaded: 503 instead of the least loaded
    # Stall, wedge and stale detection (workers/liveness.py), SMG 1.13's defaults; 0 disables each.
    worker_stall_secs: float = 2.0
    worker_wedge_secs: float = 3.0
    worker_stale_secs: float = 15.0

    # Logging.
    log_level: str = "info"
    log_json: bool = False

    # Limits and timeouts.
    request_timeout_secs: float = 1800.0
    connect_timeout_secs: float = 10.0
    max_payload_size: int = 512 * 1024 * 1024
    max_background_responses: int = 1024  # background Responses running at once (0: run them in the foreground)
    upstream_pool_idle_timeout_secs: float = 3.0
    sse_keepalive_secs: float = 15.0  # a client event stream silent this long carries a keep-alive frame (0: none)

    # Worker registration (control plane).
    worker_startup_timeout_secs: float = 1800.0
    worker_startup_check_interval_secs: float = 1.0
    worker_startup_delay_secs: float = 0.0  # grace before the first probe of a new worker
    worker_drain_timeout_secs: float = 30.0
    worker_api_key: str | None = None

    retry: RetryConfig = field(default_factory=RetryConfig)

    health: HealthConfig = field(default_factory=HealthConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    limits: ServerLimits = field(default_factory=ServerLimits)
    routed_worker_header: str = "id"  # x-smg-routed-worker-id: id | url | none (see ROUTED_WORKER_HEADER_MODES)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
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

    # Egress to external providers (the full transport; proxies come from HTTP(S)_PROXY / NO_PROXY).
    ca_cert_paths: tuple[str, ...] = ()  # CA bundles trusted besides the system's
    client_cert_path: str | None = None  # a client certificate presented to providers that ask for one
    client_key_path: str | None = None

    # Observability.
    prometheus_host: str = "0.0.0.0"
    prometheus_duration_buckets: tuple[float, ...] = ()  # empty: the built-in duration buckets
    prometheus_port: int = 29000
    tenant_metric_top_n: int = 32  # tenants with a `tenant` label of their own; the rest share "other"
    health_check_port: int | None = None  # /liveness, /readiness, /health on a listener of their own
    disable_metrics: bool = False
    enable_trace: bool = False
    otlp_traces_endpoint: str = "localhost:4317"
    trace_sample_ratio: float = 1.0
    log_dir: str | None = None
    # Move the heap built at startup (modules, app, registries) out of the collector's reach once the
    # gateway is up, so full collections walk only what requests leave behind (shorter pauses).
    gc_freeze: bool = True

    # External providers (--external-provider URL=KIND[,key_env=VAR][,model=ID]...).
    external_providers: tuple[str, ...] = ()
    external_model_refresh_secs: float = 10.0  # a model-list refresh on a miss happens at most this often
    # --model-alias ALIAS=CANONICAL: extra client-facing names; requests are routed (and answered) as CANONICAL.
    model_aliases: tuple[tuple[str, str], ...] = ()

    history: HistoryConfig = field(default_factory=HistoryConfig)  # chat history storage
    mcp_config_path: str | None = None  # MCP servers whose tools the gateway runs (shepherd/mcp/config.py)
    mesh: MeshConfig = field(default_factory=MeshConfig)  # shared state across processes and instances
    process: ProcessConfig = field(default_factory=ProcessConfig)  # --workers N

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
    tokenizer_cache_l0_max_memory: int = 256 * 1024 * 1024  # SMG's default
    tokenizer_cache_enable_l1: bool = False
    tokenizer_cache_l1_max_memory: int = 50 * 1024 * 1024
    disable_tokenizer_autoload: bool = False  # tokenizers only from POST /v1/tokenizers

    @cached_property
    def gateway_keys(self) -> frozenset[str]:
        return frozenset(self.auth.serving_keys)

    def validate(self) -> GatewayConfig:
        """Return self, or raise ConfigError naming the first bad value."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, got {self.port}")
        self.policy_options.validate()
        if self.pd_transfer not in ("auto", "sglang", "vllm"):
            raise ConfigError("--pd-transfer must be auto, sglang or vllm")
        self.pd_admission.validate()
        if (self.prefill_urls or self.decode_urls) and not self.pd_disaggregation:
            raise ConfigError("--prefill and --decode need --pd-disaggregation")
        for url in [u for u, _ in self.prefill_urls] + list(self.decode_urls):
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"worker URL {url!r} must start with http:// or https://")
        if self.load_monitor_interval_secs <= 0:
            raise ConfigError("--load-monitor-interval must be positive")
        if min(self.worker_stall_secs, self.worker_wedge_secs, self.worker_stale_secs) < 0:
            raise ConfigError("--worker-stall-secs, --worker-wedge-secs and --worker-stale-secs must not be "
                              "negative (0: off)")
        if self.worker_overload_waiting_requests < 1:
            raise ConfigError("--worker-overload-waiting-requests must be at least 1 (0 would veto every worker)")
        if not 0.0 < self.worker_overload_token_usage <= 1.0:
            raise ConfigError("--worker-overload-token-usage must be in (0, 1] (0 would veto every worker)")
        if self.tenant_metric_top_n < 0:
            raise ConfigError("--priority-scheduler-tenant-metric-top-n must not be negative")
        if self.log_level not in ("debug", "info", "warn", "warning", "error"):
            raise ConfigError(f"--log-level must be one of debug, info, warn, error, got {self.log_level!r}")
        for name in ("request_timeout_secs", "connect_timeout_secs", "worker_startup_timeout_secs",
                     "worker_startup_check_interval_secs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.worker_drain_timeout_secs < 0:
            raise ConfigError("--worker-drain-timeout-secs must not be negative")
        if self.max_background_responses < 0:
            raise ConfigError(f"--max-background-responses must be 0 or more, got {self.max_background_responses}")
        if self.max_payload_size <= 0:
            raise ConfigError(f"--max-payload-size must be positive, got {self.max_payload_size}")
        self.retry.validate()
        self.auth.validate()
        if bool(self.tls_cert_path) != bool(self.tls_key_path):
            raise ConfigError("TLS needs both --tls-cert-path and --tls-key-path")
        if bool(self.client_cert_path) != bool(self.client_key_path):
            raise ConfigError("a client certificate needs both --client-cert-path and --client-key-path")
        if not 0.0 <= self.trace_sample_ratio <= 1.0:
            raise ConfigError("--trace-sample-ratio must be between 0 and 1")
        if not 0 <= self.prometheus_port < 65536:
            raise ConfigError("--prometheus-port must be between 0 and 65535")
        if self.health_check_port is not None and not 0 < self.health_check_port < 65536:
            raise ConfigError(f"--health-check-port must be between 1 and 65535, got {self.health_check_port}")
        if self.health_check_port in (self.port, self.prometheus_port):
            raise ConfigError("--health-check-port must differ from --port and --prometheus-port")
        self.health.validate()
        self.breaker.validate()
        self.admission.validate()
        self.limits.validate()
        if self.routed_worker_header not in ROUTED_WORKER_HEADER_MODES:
            raise ConfigError(f"--routed-worker-header must be one of {', '.join(ROUTED_WORKER_HEADER_MODES)}")
        if self.limits.max_buffered_request_bytes < self.max_payload_size:
            raise ConfigError("--max-buffered-request-bytes must be at least --max-payload-size")
        self.discovery.validate(self.pd_disaggregation)
        self.recording.validate()
        self.wasm.validate()
        self.history.validate()
        self.mesh.validate()
        self.process.validate()
        if self.shutdown_grace_period_secs < 0 or (self.shutdown_settle_secs or 0) < 0:
            raise ConfigError("shutdown times must not be negative")
        for url in self.worker_urls:
            if not url.startswith(("http://", "https://", "grpc://")):
                raise ConfigError(f"worker URL {url!r} must start with http://, https:// or grpc://")
            if url.startswith("grpc://") and not is_grpc_target(url):
                raise ConfigError(f"gRPC worker URL {url!r} must be grpc://host:port")
        startup = {*self.worker_urls, *(u for u, _ in self.prefill_urls)}
        for url, *endpoints in self.kv_events_endpoints:
            if url not in startup:
                raise ConfigError(f"--kv-events-endpoint {url}: not a --worker-urls or --prefill worker (workers "
                                  "added later declare theirs with the kv_events_endpoint label)")
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"--kv-events-endpoint {url}: ZMQ KV events are for HTTP workers (gRPC workers "
                                  "stream theirs with SubscribeKvEvents)")
            for endpoint in filter(None, endpoints):
                problem = kv_event_endpoint_problem(endpoint)
                if problem is not None:
                    raise ConfigError(f"--kv-events-endpoint {url}: {problem}")
        if self.tokenizer_cache_enable_l0 and self.tokenizer_cache_l0_max_entries <= 0:
            raise ConfigError("--tokenizer-cache-l0-max-entries must be positive when L0 is enabled")
        if self.tokenizer_cache_enable_l0 and self.tokenizer_cache_l0_max_memory <= 0:
            raise ConfigError("--tokenizer-cache-l0-max-memory must be positive when L0 is enabled")
        if self.tokenizer_cache_enable_l1 and self.tokenizer_cache_l1_max_memory <= 0:
            raise ConfigError("--tokenizer-cache-l1-max-memory must be positive when L1 is enabled")
        if not self.request_id_headers:
            raise ConfigError("--request-id-headers needs at least one header name")
        if self.external_model_refresh_secs < 0:
            raise ConfigError("--external-model-refresh-secs must not be negative")
        if self.sse_keepalive_secs < 0:
            raise ConfigError("--sse-keepalive-secs must not be negative (0 sends no keep-alive frames)")
        _validate_aliases(self.model_aliases)
        return self


def _validate_aliases(aliases: tuple[tuple[str, str], ...]) -> None:
    targets: dict[str, str] = {}
    for alias, canonical in aliases:
        if not alias or not canonical or alias == canonical:
            raise ConfigError(f"--model-alias needs ALIAS=CANONICAL with two different names, got {alias}={canonical}")
        if targets.setdefault(alias, canonical) != canonical:
            raise ConfigError(f"--model-alias {alias} names two models: {targets[alias]} and {canonical}")
    if chained := sorted(set(targets) & set(targets.values())):
        raise ConfigError(f"--model-alias {chained[0]} is both an alias and a canonical model; name the served "
                          "model directly")


def is_grpc_target(url: str) -> bool:
    """`grpc://host:port` with a numeric port (the only shape a gRPC worker URL takes)."""
    host, _, port = url.removeprefix("grpc://").rstrip("/").rpartition(":")
    return bool(host) and "/" not in host and port.isdigit()
