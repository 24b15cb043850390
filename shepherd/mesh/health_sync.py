"""Health and breaker verdicts across instances: namespace `health`, one entry per worker URL.

Owner: the instance that saw a transition (its health checker took the worker out of rotation or
back, or its circuit breaker opened) writes `{ok, at, by}`; the newest verdict wins. A peer applies
a verdict from another instance at its next sync: "down" takes the worker out of rotation here
too, "up" puts it back. The local health checker keeps probing, so a verdict that was wrong (or
a worker that recovered) is corrected by the probes of whichever instance sees it next.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import orjson

from shepherd.mesh.store import SharedStore, StoreUnavailable
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker, WorkerStatus

log = logging.getLogger("shepherd.mesh")

NAMESPACE = "health"
MAX_PENDING = 10_000
VERDICT_TTL_SECS = 300.0  # older verdicts are history, not news


class HealthSync:
    def __init__(self, store: SharedStore, registry: WorkerRegistry, instance: str) -> None:
        self._store = store
        self._registry = registry
        self._instance = instance
        self._pending: OrderedDict[str, bytes] = OrderedDict()  # url -> verdict not yet written
        self._applied: dict[str, float] = {}  # url -> time of the newest verdict applied or written
        self._seen_version: int | None = None

    def report(self, worker: Worker, ok: bool) -> None:
        """A transition seen here (called on the event loop by the health checker and breakers)."""
        at = time.time()
        self._applied[worker.url] = at
        self._pending[worker.url] = orjson.dumps({"ok": ok, "at": at, "by": self._instance})
        self._pending.move_to_end(worker.url)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def forget_version(self) -> None:
        self._seen_version = None

    async def sync(self) -> None:
        try:
            while self._pending:
                url, value = next(iter(self._pending.items()))
                await self._store.write(NAMESPACE, url, value)
                if self._pending.get(url) is value:
                    del self._pending[url]
            version = await self._store.version(NAMESPACE)
            if version == self._seen_version:
                return
            version, entries = await self._store.read(NAMESPACE)
        except StoreUnavailable:
            return
        self._apply(entries)
        self._seen_version = version

    def _apply(self, entries: dict[str, bytes]) -> None:
        now = time.time()
        for url, value in entries.items():
            try:
                verdict = orjson.loads(value)
                ok, at, by = bool(verdict["ok"]), float(verdict["at"]), str(verdict["by"])
            except (ValueError, KeyError, TypeError):
                continue
            if by == self._instance or at <= self._applied.get(url, 0.0) or now - at > VERDICT_TTL_SECS:
                continue
            self._applied[url] = at
            worker = self._registry.get_by_url(url)
            if worker is None:
                continue
            if not ok and worker.status is WorkerStatus.READY:
                worker.status = WorkerStatus.NOT_READY
                log.warning("mesh: worker %s is out of rotation: instance %s found it failing", url, by)
            elif ok and worker.status is WorkerStatus.NOT_READY:
                worker.status = WorkerStatus.READY
                if worker.breaker is not None:
                    worker.breaker.on_healthy_probe()
                log.info("mesh: worker %s is back in rotation: instance %s found it healthy", url, by)
