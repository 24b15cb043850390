"""Refresh on a miss: a request for a model no worker serves re-reads the providers' model lists.

Providers add models without telling anyone, so the first request for a new model asks each
external worker (whose models came from its list) for a fresh list before answering 404. Each
worker is asked at most once per `min_interval` and concurrent misses share one call, so a client
asking for nonsense cannot turn the gateway into a load generator against its providers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import aiohttp

from shepherd.providers.aliases import alias_map
from shepherd.providers.discovery import MODEL_DISCOVERY_LABEL, list_models, model_cards
from shepherd.providers.kinds import provider_kind
from shepherd.workers.errors import ProbeError
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.providers")

REFRESH_TIMEOUT_SECS = 5.0


class ModelRefresher:
    def __init__(self, registry: WorkerRegistry, session: aiohttp.ClientSession, min_interval_secs: float) -> None:
        self._registry = registry
        self._session = session
        self._min_interval = min_interval_secs
        self._last: dict[str, float] = {}  # worker id -> when its list was last requested
        self._inflight: dict[str, asyncio.Task[None]] = {}

    def refreshable(self) -> list[Worker]:
        return [w for w in self._registry.all()
                if w.connection_mode == "external" and w.labels.get(MODEL_DISCOVERY_LABEL) == "provider"]

    async def refresh(self) -> None:
        """Re-read the model lists that are due (or already being read); waits at most 5 s."""
        now = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        for worker in self.refreshable():
            task = self._inflight.get(worker.id)
            if task is None:
                if now - self._last.get(worker.id, -self._min_interval) < self._min_interval:
                    continue
                self._last[worker.id] = now
                task = asyncio.ensure_future(self._refresh_one(worker))
                self._inflight[worker.id] = task
                task.add_done_callback(functools.partial(self._forget, worker.id))
            tasks.append(task)
        if tasks:
            # shield: a client that gives up must not cancel a refresh other requests wait on
            await asyncio.wait([asyncio.shield(t) for t in tasks], timeout=REFRESH_TIMEOUT_SECS)

    def _forget(self, worker_id: str, _: object) -> None:
        self._inflight.pop(worker_id, None)

    async def _refresh_one(self, worker: Worker) -> None:
        kind = provider_kind(worker.provider or "custom")
        try:
            ids = await list_models(self._session, worker.url, kind, worker.api_key,
                                    aiohttp.ClientTimeout(total=REFRESH_TIMEOUT_SECS))
        except (TimeoutError, ProbeError, aiohttp.ClientError, OSError) as exc:
            log.warning("refreshing the models of %s failed: %s", worker.url, exc)
            return
        if not ids or self._registry.get(worker.id) is not worker:
            return  # an empty list is more likely a provider hiccup than a provider with no models
        aliases = alias_map(ids)
        if tuple(ids) == worker.model_ids and aliases == worker.aliases:
            return
        added = sorted(set(ids) - set(worker.model_ids))
        worker.model_ids, worker.aliases = tuple(ids), aliases
        worker.model_cards = tuple(model_cards(ids, kind, aliases))
        self._registry.replace(worker)
        log.info("models of %s refreshed: %d listed, new: %s", worker.url, len(ids), ", ".join(added) or "none")

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)
