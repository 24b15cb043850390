"""Worker lifecycle on the control plane: register (probe, then add), update, drain and remove.

Mutations answer the caller at once and finish in background tasks, so a slow or still-loading
engine never blocks the admin API or start-up. Each pending job is visible through `job()`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from shepherd.config import GatewayConfig
from shepherd.providers.discovery import PermanentProbeError, discover_external
from shepherd.workers.circuit_breaker import CircuitBreaker
from shepherd.workers.errors import ProbeError
from shepherd.workers.liveness import Liveness
from shepherd.workers.metadata import WorkerMetadata, probe_worker
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.spec import WorkerSpec
from shepherd.workers.worker import Worker, WorkerStatus, WorkerType

log = logging.getLogger("shepherd.workers")

# A prefill worker hands KV caches over, a decode worker receives them: a role saying otherwise is a
# misconfigured engine (warned about; SMG only stores the role).
_CONTRARY_KV_ROLES = {("kv_consumer", WorkerType.PREFILL), ("kv_producer", WorkerType.DECODE)}

_DRAIN_POLL_SECS = 0.05
_FAILED_JOBS_KEPT = 100  # failed adds stay visible for inspection, up to this many


# A probe for URLs of another scheme (grpc://); a preparation step that must succeed before a
# worker becomes routable (e.g. loading its model's tokenizer).
Prober = Callable[[WorkerSpec], Awaitable[WorkerMetadata]]
Preparer = Callable[[Worker], Awaitable[None]]


class WorkerConflict(Exception):
    """A worker already exists (or is being added) at that URL."""


@dataclass
class Job:
    worker_id: str
    url: str
    kind: str  # "add" | "remove"
    status: str = "pending"  # pending | failed | cancelled (deleted while pending)
    message: str = ""
    started_at: float = 0.0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = field(default=None, repr=False)  # an add's registration, to cancel it

    def info(self) -> dict[str, object]:
        return {"kind": self.kind, "status": self.status, "message": self.message,
                "elapsed_secs": round(time.monotonic() - self.started_at, 3)}


def _positive_int(value: str | None, default: int) -> int:
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return number if number > 0 else default


def new_worker_id() -> str:
    """A UUIDv7: time-ordered, so ids sort by registration time."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 | 0b10 << 62 | (
        rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


class WorkerManager:
    def __init__(self, config: GatewayConfig, registry: WorkerRegistry, session: aiohttp.ClientSession,
                 provider_session: aiohttp.ClientSession | None = None) -> None:
        self._config = config
        self._registry = registry
        self._session = session
        # Providers' model lists go through the providers' transport (its proxy and TLS settings).
        self._provider_session = provider_session or session
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._probers: dict[str, Prober] = {}
        self._preparers: list[Preparer] = []
        self.on_exclusion: Callable[[str], None] | None = None  # a stall or wedge (by reason), for metrics
        self.on_stall: Callable[[Any], None] | None = None  # a stalled worker (the mesh tells the fleet)

    def _liveness(self, provider: str | None) -> Liveness | None:
        """Stall/wedge tracking for a local engine; a provider is neither polled nor probed, so a
        stall could never be lifted, and it streams no engine load to judge a wedge by."""
        config = self._config
        if provider is not None or max(config.worker_stall_secs, config.worker_wedge_secs,
                                       config.worker_stale_secs) <= 0:
            return None
        liveness = Liveness(config.worker_stall_secs, config.worker_wedge_secs, self.on_exclusion,
                            stale_secs=config.worker_stale_secs)
        liveness.on_stall = self.on_stall
        return liveness

    def register_prober(self, scheme: str, prober: Prober) -> None:
        self._probers[scheme] = prober

    def add_preparer(self, preparer: Preparer) -> None:
        self._preparers.append(preparer)

    def job(self, worker_id: str) -> Job | None:
        return self._jobs.get(worker_id)

    def pending_jobs(self) -> list[Job]:
        return list(self._jobs.values())

    # -- add ----------------------------------------------------------------------------------

    def submit_add(self, spec: WorkerSpec, worker_id: str | None = None) -> str:
        """Reserve an id for the worker (or use `worker_id`, the id a peer gave it) and register it
        in the background."""
        if any(w.base_url == spec.url for w in self._registry.all()) or any(
            job.url == spec.url and job.kind == "add" and job.status == "pending" for job in self._jobs.values()
        ):
            raise WorkerConflict(f"a worker already exists at {spec.url}")
        worker_id = worker_id or new_worker_id()
        job = Job(worker_id, spec.url, "add", started_at=time.monotonic())
        self._jobs[worker_id] = job
        job.task = self._spawn(self._register(spec, job))
        return worker_id

    def cancel_add(self, worker_id: str) -> Job | None:
        """Forget a worker that is still being probed (or whose registration failed): its probing stops
        and it is never registered. None when no such add is pending."""
        job = self._jobs.get(worker_id)
        if job is None or job.kind != "add":
            return None
        del self._jobs[worker_id]
        if job.task is not None and not job.task.done():
            job.task.cancel()
        job.status, job.message = "cancelled", "deleted before it was registered"
        job.finished.set()
        log.info("worker %s deleted while %s", job.url, "being probed" if job.task else "failed")
        return job

    async def add(self, spec: WorkerSpec) -> Worker:
        """Register a worker and wait until it is routable (used by tests and embedders)."""
        worker_id = self.submit_add(spec)
        job = self._jobs[worker_id]
        await job.finished.wait()
        worker = self._registry.get(worker_id)
        if worker is None:
            raise ProbeError(job.message or f"worker {spec.url} was not registered")
        return worker

    async def _register(self, spec: WorkerSpec, job: Job) -> None:
        try:
            await self._probe_and_register(spec, job)
        except Exception as exc:  # a bug in a probe must fail the job visibly, not leave it pending
            log.exception("registering worker %s failed", spec.url)
            job.status, job.message = "failed", f"{exc.__class__.__name__}: {exc}"
        finally:
            job.finished.set()

    async def _probe_and_register(self, spec: WorkerSpec, job: Job) -> None:
        deadline = time.monotonic() + self._config.worker_startup_timeout_secs
        if self._config.worker_startup_delay_secs > 0:
            await asyncio.sleep(self._config.worker_startup_delay_secs)
        attempt = 0
        while True:
            attempt += 1
            try:
                metadata = await self._probe(spec)
                break
            except (TimeoutError, ProbeError, aiohttp.ClientError, OSError) as exc:
                job.message = f"attempt {attempt}: {exc}"
                if isinstance(exc, PermanentProbeError):
                    job.status = "failed"
                    self._prune_failed_jobs()
                    log.error("worker %s was not registered: %s", spec.url, exc)
                    return
                if time.monotonic() + self._config.worker_startup_check_interval_secs > deadline:
                    job.status = "failed"
                    self._prune_failed_jobs()
                    log.error("worker %s did not become healthy within %.0fs: %s", spec.url,
                              self._config.worker_startup_timeout_secs, exc)
                    return
                if attempt == 1:
                    log.info("waiting for worker %s to become healthy (%s)", spec.url, exc)
                await asyncio.sleep(self._config.worker_startup_check_interval_secs)

        model_cards = spec.model_cards or metadata.model_cards
        model_ids = tuple(str(card["id"]) for card in model_cards) or ("unknown",)
        if (spec.kv_role, spec.worker_type) in _CONTRARY_KV_ROLES:
            log.warning("worker %s is registered as %s with kv_role %s: its KV connector cannot %s KV caches; "
                        "check its --kv-transfer-config", spec.url, spec.worker_type.value, spec.kv_role,
                        "send" if spec.worker_type is WorkerType.PREFILL else "receive")
        labels = {**metadata.labels, **spec.labels}
        dp_size = _positive_int(labels.get("dp_size"), 1) if self._config.dp_aware else 1
        ranks: list[int | None] = list(range(dp_size)) if dp_size > 1 else [None]
        workers = [
            Worker(
                id=job.worker_id if rank in (None, 0) else new_worker_id(),
                url=spec.url if rank is None else f"{spec.url}@{rank}",
                base_url=spec.url,
                dp_rank=rank,
                dp_size=dp_size,
                model_ids=model_ids,
                worker_type=spec.worker_type,
                connection_mode=metadata.connection_mode,
                runtime_type=spec.runtime_type or metadata.runtime_type,
                labels=labels,
                priority=spec.priority,
                cost=spec.cost,
                api_key=spec.api_key,
                bootstrap_port=spec.bootstrap_port,
                kv_connector=spec.kv_connector,
                kv_engine_id=spec.kv_engine_id,
                kv_role=spec.kv_role,
                model_cards=tuple(model_cards),
                status=WorkerStatus.READY,
                breaker=None if self._config.breaker.disabled else CircuitBreaker(self._config.breaker),
                liveness=self._liveness(metadata.provider),
                provider=metadata.provider,
                aliases=metadata.aliases,
            )
            for rank in ranks
        ]
        for prepare in self._preparers:  # e.g. a gRPC worker's model needs its tokenizer first
            try:
                for worker in workers:
                    await prepare(worker)
            except Exception as exc:
                job.status, job.message = "failed", f"{exc.__class__.__name__}: {exc}"
                self._prune_failed_jobs()
                log.error("worker %s could not be prepared: %s", spec.url, exc)
                return
        try:
            for worker in workers:
                self._registry.add(worker)
        except ValueError as exc:  # the URL was registered by someone else meanwhile
            for worker in workers:
                if self._registry.get(worker.id) is worker:
                    self._registry.remove(worker.id)
            job.status, job.message = "failed", str(exc)
            return
        del self._jobs[job.worker_id]
        log.info("worker %s registered: models=%s runtime=%s%s", spec.url, ",".join(model_ids),
                 workers[0].runtime_type, f" dp_size={dp_size}" if dp_size > 1 else "")

    async def _probe(self, spec: WorkerSpec) -> WorkerMetadata:
        if spec.runtime_type == "external":  # providers have no /health: their model list is the probe
            return await discover_external(self._provider_session, spec)
        prober = self._probers.get(spec.url.partition("://")[0])  # e.g. grpc:// workers
        if prober is not None:
            return await prober(spec)
        return await probe_worker(self._session, spec.url, spec.api_key)

    def _prune_failed_jobs(self) -> None:
        failed = [job for job in self._jobs.values() if job.status == "failed"]
        for job in failed[:-_FAILED_JOBS_KEPT]:
            del self._jobs[job.worker_id]

    # -- update -------------------------------------------------------------------------------

    def update(self, worker: Worker, changes: dict[str, object]) -> Worker:
        """Apply validated PATCH fields; live state (load, status) is kept."""
        spec = WorkerSpec(url=worker.url, labels=dict(worker.labels), priority=worker.priority,
                          cost=worker.cost, api_key=worker.api_key)
        spec.apply_update(changes)
        worker.labels, worker.priority, worker.cost, worker.api_key = (
            spec.labels, spec.priority, spec.cost, spec.api_key)
        self._registry.replace(worker)
        return worker

    # -- remove -------------------------------------------------------------------------------

    def submit_remove(self, worker: Worker) -> None:
        """Stop routing to the worker (all its data-parallel ranks) now; remove it once idle."""
        siblings = [w for w in self._registry.all() if w.base_url == worker.base_url]
        for sibling in siblings:
            sibling.status = WorkerStatus.DRAINING
        job = Job(worker.id, worker.base_url, "remove", started_at=time.monotonic())
        self._jobs[worker.id] = job
        self._spawn(self._drain_and_remove(siblings, job))

    async def remove(self, worker: Worker) -> None:
        self.submit_remove(worker)
        await self._jobs[worker.id].finished.wait()

    async def _drain_and_remove(self, workers: list[Worker], job: Job) -> None:
        deadline = time.monotonic() + self._config.worker_drain_timeout_secs

        def in_flight() -> int:
            return sum(w.load for w in workers)

        # `load` is a plain counter the data plane updates without signalling; polling it keeps
        # the hot path free of any per-request notification.
        while in_flight() > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL_SECS)
        if in_flight() > 0:
            log.warning("worker %s removed with %d requests still in flight after %.0fs drain",
                        job.url, in_flight(), self._config.worker_drain_timeout_secs)
        for worker in workers:
            self._registry.remove(worker.id)
        self._jobs.pop(job.worker_id, None)
        job.finished.set()
        log.info("worker %s removed", job.url)

    # -- lifecycle ----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
