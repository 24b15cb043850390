"""The worker registry across instances: namespace `workers`, one entry per worker base URL.

Owner: whoever changes it through the admin API (or starts with it on the command line) writes
the entry; every instance reconciles its own registry to the map whenever the map's version
moves (read every --mesh-sync-interval-secs, so a change is everywhere within about one interval).
* an entry this instance lacks is added (probed here first, under the entry's worker id);
* an entry that changed since the last reconcile is applied as a patch (labels, priority, cost, key);
* a worker whose entry went away is drained and removed (only workers the map once listed:
  workers found by this instance's discovery are its own).
If the map's data generation changes (Redis restarted without its data), each instance writes back
the workers it has instead of removing them.
Announcements wait in a bounded outbox and are written in order, so an admin call never waits on
(or fails because of) the store; an outage delays them until the store answers again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from typing import Any

import orjson

from shepherd.mesh.store import SharedStore, StoreUnavailable
from shepherd.workers.manager import WorkerConflict, WorkerManager
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.spec import WorkerSpec
from shepherd.workers.worker import Worker, WorkerStatus, WorkerType

log = logging.getLogger("shepherd.mesh")

NAMESPACE = "workers"
MAX_OUTBOX = 10_000
_MUTABLE = ("labels", "priority", "cost", "api_key")


def encode_spec(worker_id: str, spec: WorkerSpec) -> bytes:
    data = dataclasses.asdict(spec)
    data["worker_type"] = spec.worker_type.value
    return orjson.dumps({"id": worker_id, "spec": data})


_SPEC_FIELDS = frozenset(field.name for field in dataclasses.fields(WorkerSpec))
_unknown_fields_seen: set[str] = set()


def decode_spec(value: bytes) -> tuple[str, WorkerSpec]:
    """An entry as a peer wrote it. Fields this version does not know (a newer peer's, during a rolling
    upgrade) are left out, so the worker is still served here with what this version understands."""
    data = orjson.loads(value)
    spec = dict(data["spec"])
    unknown = set(spec) - _SPEC_FIELDS
    if unknown:
        for name in sorted(unknown - _unknown_fields_seen)[:8]:
            _unknown_fields_seen.add(name)
            log.warning("mesh: a peer's worker entries carry the field %r, unknown to this version; left out", name)
        spec = {name: spec[name] for name in spec.keys() & _SPEC_FIELDS}
    spec["worker_type"] = WorkerType(spec["worker_type"])
    return str(data["id"]), WorkerSpec(**spec)


def spec_of(worker: Worker) -> WorkerSpec:
    return WorkerSpec(url=worker.base_url, model_cards=[dict(c) for c in worker.model_cards],
                      worker_type=worker.worker_type, runtime_type=worker.runtime_type, labels=dict(worker.labels),
                      priority=worker.priority, cost=worker.cost, api_key=worker.api_key,
                      provider=worker.provider,
                      bootstrap_port=worker.bootstrap_port, kv_connector=worker.kv_connector,
                      kv_engine_id=worker.kv_engine_id, kv_role=worker.kv_role)


class RegistrySync:
    def __init__(self, store: SharedStore, registry: WorkerRegistry, manager: WorkerManager) -> None:
        self._store = store
        self._registry = registry
        self._manager = manager
        self._outbox: deque[tuple[str, bytes | None, bool]] = deque(maxlen=MAX_OUTBOX)
        self._seen_version: int | None = None
        self._generation: str | None = None  # the store's data generation: a new one means it lost its data
        self._listed: set[str] = set()  # base URLs the shared map has listed
        self._entries: dict[str, bytes] = {}  # the entries as last reconciled: a patch is an entry that changed

    # -- announcements (admin API, startup workers) ---------------------------------------------

    def announce_add(self, worker_id: str, spec: WorkerSpec, *, startup: bool = False) -> None:
        """A worker added here; a startup worker does not replace an entry another instance wrote."""
        self._outbox.append((spec.url, encode_spec(worker_id, spec), startup))

    def announce_update(self, worker: Worker) -> None:
        self._outbox.append((worker.base_url, encode_spec(worker.id, spec_of(worker)), False))

    def announce_remove(self, worker: Worker) -> None:
        self._outbox.append((worker.base_url, None, False))

    async def flush(self) -> None:
        while self._outbox:
            url, value, only_if_absent = self._outbox[0]
            await self._store.write(NAMESPACE, url, value, only_if_absent=only_if_absent)
            self._outbox.popleft()
            if value is not None:
                self._listed.add(url)

    # -- reconciliation ------------------------------------------------------------------------

    def forget_version(self) -> None:
        """Read the whole map next round (after an outage, the version alone may mislead)."""
        self._seen_version = None

    async def sync(self) -> None:
        try:
            generation = await self._store.generation(NAMESPACE)
            if self._generation is not None and generation != self._generation:
                # Redis restarted empty (or was flushed): what this instance knows is the best record
                # left, so it is written back rather than read as "every worker was removed".
                log.warning("mesh: the shared worker registry lost its data; re-announcing this instance's "
                            "%d workers", len(self._registry))
                self._republish()
            self._generation = generation
            await self.flush()
            version = await self._store.version(NAMESPACE)
            if version == self._seen_version:
                return
            version, entries = await self._store.read(NAMESPACE)
        except StoreUnavailable:
            return
        if self._outbox:
            return  # our own changes first, or the reconcile would undo them
        self._reconcile(entries)
        self._seen_version = version

    def _republish(self) -> None:
        seen: set[str] = set()
        for worker in self._registry.all():
            if worker.base_url not in seen and worker.status is not WorkerStatus.DRAINING:
                seen.add(worker.base_url)
                self.announce_add(worker.id, spec_of(worker), startup=True)

    def _reconcile(self, entries: dict[str, bytes]) -> None:
        by_base: dict[str, list[Worker]] = {}
        for worker in self._registry.all():
            by_base.setdefault(worker.base_url, []).append(worker)
        pending = {job.url for job in self._manager.pending_jobs() if job.status == "pending"}
        for url, value in entries.items():
            try:
                worker_id, spec = decode_spec(value)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("mesh: ignoring an unreadable worker entry for %s: %s", url, exc)
                continue
            local = by_base.get(url)
            if not local:
                if url not in pending:
                    self._add(worker_id, spec)
                continue
            if self._entries.get(url, value) == value:
                continue  # unchanged since last seen (or first seen here: the worker was added from it)
            for worker in local:
                changes = self._changes(worker, spec)
                if changes and worker.status is not WorkerStatus.DRAINING:
                    self._manager.update(worker, changes)
                    log.info("mesh: worker %s updated by a peer: %s", worker.url, ", ".join(sorted(changes)))
        for url in self._listed - set(entries):
            for worker in by_base.get(url, [])[:1]:
                if worker.status is not WorkerStatus.DRAINING:
                    log.info("mesh: worker %s removed by a peer; draining it here", url)
                    self._manager.submit_remove(worker)
        self._listed = set(entries)
        self._entries = dict(entries)

    def _add(self, worker_id: str, spec: WorkerSpec) -> None:
        try:
            self._manager.submit_add(spec, worker_id=worker_id)
            log.info("mesh: worker %s added by a peer; registering it here", spec.url)
        except WorkerConflict:
            pass

    @staticmethod
    def _changes(worker: Worker, spec: WorkerSpec) -> dict[str, Any]:
        return {name: getattr(spec, name) for name in _MUTABLE if getattr(worker, name) != getattr(spec, name)}
