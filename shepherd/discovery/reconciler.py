"""Make the registry's discovered workers follow what a discovery source says should exist.

Every change goes through the WorkerManager (submit_add, submit_remove: probe, drain, remove), so
discovered workers live exactly like workers added by hand. The reconciler only ever touches the
workers it added itself: it remembers their ids, and a URL that is already registered by someone
else (the command line, `POST /workers`) is left alone.

Level-triggered: a source hands over the complete desired set; `reconcile()` compares it with what
exists and is re-run on every change and on a short tick, so a pending add or drain that finished
meanwhile is picked up without any callback from the manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from shepherd.periodic import BackgroundTask
from shepherd.workers.manager import WorkerConflict, WorkerManager
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.spec import WorkerSpec

log = logging.getLogger("shepherd.discovery")

PROVIDER_LABEL = "shepherd.ai/discovery-provider"
ID_LABEL = "shepherd.ai/discovery-id"
HASH_LABEL = "shepherd.ai/discovery-spec-hash"

_TICK_SECS = 1.0
_RETRY_FAILED_ADD_SECS = 10.0  # a worker whose registration failed is tried again after this long


@dataclass(frozen=True)
class DesiredWorker:
    """One worker a source wants: `source_id` names it in the source (a pod, a file entry)."""

    source_id: str
    spec: WorkerSpec

    @property
    def fingerprint(self) -> str:
        """Changes whenever the worker must be re-registered (the API key is deliberately left out)."""
        spec = self.spec
        body = orjson.dumps([spec.url, spec.worker_type.value, spec.runtime_type, spec.bootstrap_port,
                             spec.model_cards, spec.labels, spec.priority, spec.cost, self.source_id,
                             spec.kv_connector, spec.kv_engine_id, spec.kv_role],
                            option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(body).hexdigest()[:16]


@dataclass
class _Owned:
    worker_id: str
    fingerprint: str


class Reconciler(BackgroundTask):
    def __init__(self, provider: str, manager: WorkerManager, registry: WorkerRegistry,
                 tick_secs: float = _TICK_SECS) -> None:
        self.provider = provider
        self._manager = manager
        self._registry = registry
        self._tick_secs = tick_secs
        self._desired: dict[str, DesiredWorker] = {}
        self._owned: dict[str, _Owned] = {}  # url -> the worker this reconciler registered there
        self._retry_at: dict[str, float] = {}  # url -> when a failed registration may be retried
        self._foreign_logged: set[str] = set()
        self._wake = asyncio.Event()

    def set_desired(self, workers: Mapping[str, DesiredWorker] | list[DesiredWorker]) -> None:
        """Replace the desired set (keyed by URL) and reconcile soon."""
        items = workers.values() if isinstance(workers, Mapping) else workers
        desired: dict[str, DesiredWorker] = {}
        for want in items:
            labels = {**want.spec.labels, PROVIDER_LABEL: self.provider, ID_LABEL: want.source_id}
            spec = _with_labels(want.spec, labels)
            spec.labels[HASH_LABEL] = DesiredWorker(want.source_id, spec).fingerprint
            desired.setdefault(spec.url, DesiredWorker(want.source_id, spec))
        self._desired = desired
        self._wake.set()

    def owned_urls(self) -> list[str]:
        return list(self._owned)

    def reconcile(self) -> None:
        now = time.monotonic()
        for url, owned in list(self._owned.items()):
            want = self._desired.get(url)
            job = self._manager.job(owned.worker_id)
            worker = self._registry.get(owned.worker_id)
            if job is not None and job.status == "pending":
                continue  # still registering or draining: look again when it is done
            if worker is None:
                # Gone: a failed registration, our own removal, or the health checker or an admin
                # removed it. Forget it; it is added again below if it is still wanted.
                del self._owned[url]
                if job is not None and job.kind == "add" and job.status == "failed":
                    self._retry_at[url] = now + _RETRY_FAILED_ADD_SECS
                    log.warning("discovered worker %s (%s) was not registered: %s; retrying in %.0fs", url,
                                want.source_id if want else "gone", job.message, _RETRY_FAILED_ADD_SECS)
                continue
            if want is None or want.fingerprint != owned.fingerprint:
                why = "is gone or not ready" if want is None else "changed"
                log.info("discovery (%s): %s %s; draining worker %s", self.provider,
                         worker.labels.get(ID_LABEL, url), why, url)
                self._manager.submit_remove(worker)
        for url, want in self._desired.items():
            if url in self._owned or self._retry_at.get(url, 0.0) > now:
                continue
            self._retry_at.pop(url, None)
            if any(w.base_url == url for w in self._registry.all()):
                if url not in self._foreign_logged:  # registered by hand or on the command line
                    self._foreign_logged.add(url)
                    log.warning("discovery (%s): %s is already registered outside discovery; leaving it alone",
                                self.provider, url)
                continue
            try:
                worker_id = self._manager.submit_add(want.spec)
            except WorkerConflict:
                continue  # an add by someone else is pending at that URL
            self._foreign_logged.discard(url)
            self._owned[url] = _Owned(worker_id, want.fingerprint)
            log.info("discovery (%s): adding worker %s for %s", self.provider, url, want.source_id)
        self._retry_at = {url: at for url, at in self._retry_at.items() if url in self._desired}
        self._foreign_logged &= set(self._desired)

    # -- lifecycle ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick_secs)
            self._wake.clear()
            try:
                self.reconcile()
            except Exception:  # a bug here must not stop discovery for good
                log.exception("discovery (%s): reconcile failed", self.provider)


def _with_labels(spec: WorkerSpec, labels: dict[str, str]) -> WorkerSpec:
    return dataclasses.replace(spec, model_cards=list(spec.model_cards), labels=labels)
