"""Policies by model: each model has its own policy instance (its own counters, trees and pins).

A model's policy is fixed by its first worker: that worker's `policy` label if it names a known
policy, else the gateway's `--policy`. When the model's last worker leaves, its policy goes too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shepherd.config import PolicyOptions
from shepherd.kv.index import KvIndex
from shepherd.periodic import Periodic
from shepherd.policies.base import Policy
from shepherd.policies.cache_aware import CacheAwarePolicy
from shepherd.policies.factory import POLICY_NAMES, create_policy
from shepherd.policies.sticky import StickySessions
from shepherd.workers.registry import RegistryEvent, WorkerRegistry
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.policies")


class PolicyRegistry:
    def __init__(self, default_policy: str, options: PolicyOptions | None = None,
                 registry: WorkerRegistry | None = None, kv_index: KvIndex | None = None) -> None:
        self.default_name = default_policy
        self.kv_index = kv_index  # what the engines' KV events say they hold (precise_cache reads it)
        self.options = options or PolicyOptions()
        self._registry = registry
        self._by_model: dict[str | None, Policy] = {}
        # --routing-key-override: pins that outrank every policy of this registry (read by Selector.pick)
        self.sticky = (StickySessions(self.options.max_sticky_keys, self.options.max_idle_secs)
                       if self.options.routing_key_override else None)
        # (model, prompt key, chosen worker) of every cache_aware decision, for the mesh; None: off.
        self.tree_observer: Callable[[str | None, str | tuple[int, ...], Worker], None] | None = None
        self._loop = Periodic("policy maintenance", min(self.options.eviction_interval_secs,
                                                        self.options.max_idle_secs),
                              self._maintain_round, log, first_round_now=False)

    def for_model(self, model: str | None) -> Policy:
        policy = self._by_model.get(model)
        if policy is None:
            policy = self._by_model[model] = self._observed(
                model, create_policy(self.default_name, self.options, kv_index=self.kv_index))
        return policy

    def set_model_policy(self, model: str, policy_name: str) -> Policy:
        policy = self._observed(model, create_policy(policy_name, self.options, kv_index=self.kv_index))
        self._by_model[model] = policy
        return policy

    def _observed(self, model: str | None, policy: Policy) -> Policy:
        observer = self.tree_observer
        if observer is not None and isinstance(policy, CacheAwarePolicy):
            policy.observer = lambda key, worker: observer(model, key, worker)
        return policy

    def all(self) -> list[Policy]:
        return list(self._by_model.values())

    def cache_trees(self) -> list[tuple[str | None, float, float]]:
        """(model, hit ratio, tree size) of every cache_aware policy, for the metrics scrape."""
        return [(model, policy.hit_ratio, float(policy.text_tree.size + policy.token_tree.size))
                for model, policy in self._by_model.items() if isinstance(policy, CacheAwarePolicy)]

    def by_model(self) -> dict[str | None, Policy]:
        return dict(self._by_model)

    def on_registry_event(self, event: RegistryEvent, worker: Worker) -> None:
        if event is RegistryEvent.ADDED:
            hint = worker.labels.get("policy")
            for model in worker.model_ids:
                if model in self._by_model:
                    continue
                if hint and hint in POLICY_NAMES:
                    self.set_model_policy(model, hint)
                elif hint:
                    log.warning("worker %s names unknown policy %r; model %s uses %s", worker.url, hint, model,
                                self.default_name)
        elif event is RegistryEvent.REMOVED:
            if self.sticky is not None:
                self.sticky.on_worker_removed(worker)
            keys: tuple[str | None, ...] = (*worker.model_ids, None)
            for key in keys:
                policy = self._by_model.get(key)
                if policy is None:
                    continue
                policy.on_worker_removed(worker)
                if key is not None and self._registry is not None and not self._registry.for_model(key):
                    del self._by_model[key]

    # -- housekeeping -------------------------------------------------------------------------

    def maintain(self) -> None:
        for policy in self.all():
            policy.maintain()
        if self.sticky is not None:
            self.sticky.expire()

    async def _maintain_round(self) -> None:
        self.maintain()

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
