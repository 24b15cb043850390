"""Cache-aware routing across instances: each instance's radix trees learn what the others routed.

Owner: the instance that routed a request appends (model, tree kind, worker URL, prompt prefix) to
its outbox; each sync writes the outbox as one zlib-compressed batch to a capped Redis stream and
reads the batches the others wrote since the last one it read, inserting their prompts under the
same worker (matched by URL: worker ids differ between instances). Staleness is one sync
interval. The stream is lossy by design: a full outbox (an outage) drops the oldest events, and an
instance that was away reads back only what the capped stream still holds; trees are a cache hint.
"""

from __future__ import annotations

import logging
import zlib
from collections import deque
from typing import Any

import orjson

from shepherd.mesh.redis_store import RedisStore
from shepherd.mesh.store import StoreUnavailable
from shepherd.policies.cache_aware import CacheAwarePolicy
from shepherd.policies.registry import PolicyRegistry
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.mesh")

MAX_OUTBOX = 20_000  # events waiting to be written
MAX_PREFIX = 4096  # characters (or tokens) of a prompt shared: what prefix matching needs
READ_BATCHES = 256  # batches read per sync at most


class TreeSync:
    def __init__(self, store: RedisStore, policies: PolicyRegistry, registry: WorkerRegistry, instance: str) -> None:
        self._store = store
        self._policies = policies
        self._registry = registry
        self._instance = instance
        self._outbox: deque[list[Any]] = deque(maxlen=MAX_OUTBOX)
        self._last_id = "$"  # start from the stream's end: history before this instance is not news
        self.received = 0  # events learnt from peers (tests and the status read it)
        policies.tree_observer = self.record

    def record(self, model: str | None, key: str | tuple[int, ...], worker: Worker) -> None:
        """A decision made here (called by the cache_aware policy on the request path: O(1))."""
        if isinstance(key, str):
            self._outbox.append([model, "s", worker.url, key[:MAX_PREFIX]])
        else:
            self._outbox.append([model, "t", worker.url, list(key[:MAX_PREFIX])])

    async def sync(self) -> None:
        try:
            if self._outbox:
                events = list(self._outbox)
                await self._store.append_event(zlib.compress(orjson.dumps({"by": self._instance, "e": events}), 1))
                for _ in events:
                    self._outbox.popleft()
            batches = await self._store.read_events(self._last_id, READ_BATCHES)
        except StoreUnavailable:
            return
        for entry_id, payload in batches:
            self._last_id = entry_id
            if payload:
                self._learn(payload)

    def _learn(self, payload: bytes) -> None:
        try:
            batch = orjson.loads(zlib.decompress(payload))
        except (zlib.error, ValueError):
            return
        if batch.get("by") == self._instance:
            return
        for model, kind, url, key in batch.get("e", ()):
            worker = self._registry.get_by_url(url)
            if worker is None or (model is not None and not self._registry.serves(model)):
                continue  # a worker or model this instance does not have (yet): nothing to learn
            policy = self._policies.for_model(model)  # created here if no request named the model yet
            if not isinstance(policy, CacheAwarePolicy):
                continue
            if kind == "s":
                policy.text_tree.insert(str(key), worker.id)
            else:
                policy.token_tree.insert(tuple(key), worker.id)
            self.received += 1
