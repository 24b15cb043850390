"""The Worker: one engine endpoint the gateway can route to, plus its live routing state."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

from shepherd.workers import availability
from shepherd.workers.circuit_breaker import CircuitBreaker
from shepherd.workers.liveness import Liveness


class WorkerStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    NOT_READY = "not_ready"
    FAILED = "failed"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    """What the engine last reported about its queue and KV cache (see workers/load_monitor.py)."""

    running: int = 0
    waiting: int = 0
    waiting_uncached_tokens: int = 0
    used_tokens: int = 0
    max_tokens: int = 0
    token_usage: float = 0.0
    gen_throughput: float = 0.0
    cache_hit_rate: float = 0.0
    max_running: int = 0  # the running window (max_running_requests) the engine reports; 0: none reported
    seq: int = 0  # bumps on every poll, so per-policy "since the last poll" tallies can reset
    polled_at: float = 0.0
    in_flight_at_report: int | None = None  # this gateway's requests on the worker then; None: not known

    def waiting_now(self, in_flight: int) -> int:
        """The engine's queue now, as this gateway can tell: the report moved by what the gateway
        sent (+1 each) and saw finish (-1 each, a finished request lets a waiting one run) since.
        A report is up to a poll interval old; trusted as it stands, every gateway dumps the next
        interval's traffic on whichever engines reported short queues (and vetoes the others)."""
        if self.in_flight_at_report is None:
            return self.waiting
        return max(0, self.waiting + in_flight - self.in_flight_at_report)


class WorkerType(StrEnum):
    REGULAR = "regular"
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(eq=False)
class Worker:
    """A registered worker.

    Identity and spec fields are set at registration; `status`, `load` and `processed` are live
    state that the data plane reads on every routing decision, so they are plain attributes. Writes
    to `load`, `processed` and `snapshot` are announced to the worker's watchers (see `watch`), so a
    policy can keep an index of its fleet instead of scanning every worker on every decision.
    """

    id: str
    url: str
    model_ids: tuple[str, ...]
    worker_type: WorkerType = WorkerType.REGULAR
    connection_mode: str = "http"
    runtime_type: str = "sglang"
    labels: dict[str, str] = field(default_factory=dict)
    priority: int = 50
    cost: float = 1.0
    api_key: str | None = None
    model_cards: tuple[dict[str, Any], ...] = ()
    provider: str | None = None  # external workers: openai, anthropic, gemini, xai, custom
    aliases: dict[str, str] = field(default_factory=dict)  # extra names a model answers to -> its listed id
    created_at: float = field(default_factory=time.time)
    base_url: str = ""  # where requests go; differs from `url` only for a data-parallel rank ("url@rank")
    dp_rank: int | None = None
    dp_size: int = 1
    bootstrap_port: int | None = None  # PD prefill workers: where decode workers fetch the KV (SGLang)
    kv_connector: str | None = None  # vLLM PD prefill workers: their KV connector (routers/http/kv_connector.py)
    kv_engine_id: str | None = None  # ... and, for Mooncake, the engine id the hand-over names
    kv_role: str | None = None  # ... and the role its connector was configured with (shown, checked at registration)

    status: WorkerStatus = WorkerStatus.READY
    load: int = 0  # requests this gateway has in flight on the worker
    processed: int = 0  # lifetime count of requests routed here
    snapshot: LoadSnapshot | None = None  # the engine's own view, from the load monitor
    breaker: CircuitBreaker | None = None  # None: no breaker (always closed)
    liveness: Liveness | None = None  # stall/wedge detection (liveness.py); None: none
    last_success_at: float = 0.0  # monotonic time of the last good answer, for the health checker
    # Client API paths the engine has no route for (learned from its 404): the gateway translates them.
    missing_apis: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.base_url:
            self.base_url = self.url

    def watch(self, watcher: WorkerWatcher) -> None:
        """Tell `watcher` (held weakly) of every later write to `load`, `processed` or `snapshot`."""
        refs = self.__dict__.setdefault("_watchers", [])
        refs[:] = [ref for ref in refs if ref() is not None and ref() is not watcher]
        refs.append(weakref.ref(watcher))

    def unwatch(self, watcher: WorkerWatcher) -> None:
        refs = self.__dict__.get("_watchers")
        if refs:
            refs[:] = [ref for ref in refs if ref() is not None and ref() is not watcher]

    @property
    def bootstrap_host(self) -> str:
        """The host part of the worker's URL (where a PD decode worker reaches its bootstrap server)."""
        host = urlsplit(self.base_url).hostname
        return host or "localhost"

    @property
    def model_id(self) -> str:
        return self.model_ids[0] if self.model_ids else "unknown"

    @property
    def is_available(self) -> bool:
        """Whether new requests may be routed here: ready, its breaker lets traffic through, and it is
        neither stalled nor wedged."""
        return self.status is WorkerStatus.READY and (self.breaker is None or self.breaker.allows()) and \
            (self.liveness is None or self.liveness.admits)

    def serves(self, model: str) -> bool:
        return model in self.model_ids or model in self.aliases

    def upstream_model(self, model: str) -> str:
        """The id to send upstream for a requested model name (resolves aliases)."""
        return self.aliases.get(model, model)

    def info(self) -> dict[str, Any]:
        """The public view used by `GET /workers`; never includes the API key."""
        return {
            "id": self.id,
            "url": self.url,
            "model_id": self.model_id,
            "models": list(self.model_cards) or [{"id": m} for m in self.model_ids],
            "worker_type": self.worker_type.value,
            "connection_mode": self.connection_mode,
            "runtime_type": self.runtime_type,
            "provider": self.provider,
            "labels": dict(self.labels),
            "priority": self.priority,
            "cost": self.cost,
            "status": self.status.value,
            "is_healthy": self.status is WorkerStatus.READY,
            "load": self.load,
            "processed": self.processed,
            **({"dp_rank": self.dp_rank, "dp_size": self.dp_size} if self.dp_rank is not None else {}),
            **({"bootstrap_port": self.bootstrap_port} if self.worker_type is WorkerType.PREFILL else {}),
            **({"kv_connector": self.kv_connector} if self.kv_connector is not None else {}),
            **({"kv_engine_id": self.kv_engine_id} if self.kv_engine_id is not None else {}),
            **({"kv_role": self.kv_role} if self.kv_role is not None else {}),
            **({"circuit_breaker": self.breaker.info()} if self.breaker is not None else {}),
            **({"stalled": self.liveness.stalled, "wedged": self.liveness.wedged, "stale": self.liveness.stale}
               if self.liveness is not None else {}),
            **({"translated_apis": sorted(self.missing_apis)} if self.missing_apis else {}),
            **({"engine_load": {k: getattr(self.snapshot, k) for k in LoadSnapshot.__slots__}}
               if self.snapshot is not None else {}),
        }


class WorkerWatcher(Protocol):
    def worker_changed(self, worker: Worker, field: str) -> None:
        """`worker.<field>` (load, processed or snapshot) was just written."""


class _Announced:
    """A live Worker field whose writes are told to the worker's watchers.

    It defines `__set__` but no `__get__`, so a read finds the value in the instance dict at the cost
    of a plain attribute read (the policies' fallback scans read `load` on every worker)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __set__(self, worker: Worker, value: Any) -> None:
        state = worker.__dict__
        state[self._name] = value
        refs = state.get("_watchers")
        if refs:
            for ref in refs:
                watcher = ref()
                if watcher is not None:
                    watcher.worker_changed(worker, self._name)


class _AvailabilityField:
    """`status`, `breaker` and `liveness`: a write may change whether the worker is available (availability.py)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __set__(self, worker: Worker, value: Any) -> None:
        worker.__dict__[self._name] = value
        availability.changed()


# Set after @dataclass, so that its __init__ keeps the plain defaults (and writes through these).
for _name in ("load", "processed", "snapshot"):
    setattr(Worker, _name, _Announced(_name))
for _name in ("status", "breaker", "liveness"):
    setattr(Worker, _name, _AvailabilityField(_name))
