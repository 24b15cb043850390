"""Service discovery: Kubernetes pods or a worker file feed the registry through the WorkerManager."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shepherd.config import GatewayConfig
from shepherd.discovery.file import FileDiscovery
from shepherd.discovery.pods import PodRules
from shepherd.discovery.reconciler import Reconciler
from shepherd.workers.manager import WorkerManager
from shepherd.workers.registry import WorkerRegistry

if TYPE_CHECKING:
    from shepherd.discovery.kubernetes import PodWatcher

log = logging.getLogger("shepherd.discovery")


class Discovery:
    """One configured discovery source and its reconciler; started and stopped with the gateway."""

    def __init__(self, config: GatewayConfig, manager: WorkerManager, registry: WorkerRegistry) -> None:
        settings = config.discovery
        assert settings.provider is not None
        self.reconciler = Reconciler(settings.provider, manager, registry)
        self.source: FileDiscovery | PodWatcher
        if settings.provider == "file":
            assert settings.file is not None
            self.description = f"workers from the file {settings.file}"
            self.source = FileDiscovery(settings.file, settings.check_interval_secs, self.reconciler,
                                        pd_disaggregation=config.pd_disaggregation, api_key=config.worker_api_key)
        else:
            from shepherd.discovery.kubernetes import PodWatcher  # kubernetes_asyncio is slow to import

            rules = PodRules.from_config(settings, config.pd_disaggregation, config.worker_api_key)
            where = f"namespace {settings.namespace}" if settings.namespace else "all namespaces"
            self.description = f"Kubernetes pods ({_selectors(rules)}) in {where}"
            self.source = PodWatcher(rules, settings.namespace, self.reconciler)

    @classmethod
    def from_config(cls, config: GatewayConfig, manager: WorkerManager,
                    registry: WorkerRegistry) -> Discovery | None:
        return cls(config, manager, registry) if config.discovery.provider else None

    def start(self) -> None:
        log.info("discovery: %s", self.description)
        self.reconciler.start()
        self.source.start()

    async def stop(self) -> None:
        await self.source.stop()
        await self.reconciler.stop()


def _selectors(rules: PodRules) -> str:
    return "; ".join(f"{kind.value}: " + ",".join(f"{k}={v}" for k, v in pairs) for kind, pairs in rules.selectors)
