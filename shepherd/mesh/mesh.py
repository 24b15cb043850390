"""The mesh: one sync loop over every piece of shared state, built from the config.

| state             | namespace / key  | owner (who writes)                    | staleness bound                   |
|-------------------|------------------|---------------------------------------|-----------------------------------|
| worker registry   | `workers`        | the instance whose admin API changed it | one sync interval (default 0.25 s) |
| health verdicts   | `health`         | the instance that saw the transition  | one sync interval                 |
| cache-aware trees | stream `tree`    | the instance that routed the request  | one sync interval; lossy          |
| rate limits       | `rl:*` buckets   | Redis itself (Lua, Redis's clock)     | none: every admission asks        |
| tenant/key limits | `tl:*` sets      | Redis (Lua); leases renewed by holder | none; a dead holder's leases: 30 s |
| sticky keys, rings| (none)           | computed: the same workers give the same answer everywhere (hashing) |

Without --mesh-redis-url, the processes of a `--workers N` gateway share only the worker registry,
through the supervisor's file channel; a lone process has no mesh at all (nothing is imported).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING

from shepherd.config import GatewayConfig
from shepherd.mesh.health_sync import HealthSync
from shepherd.mesh.registry_sync import RegistrySync
from shepherd.mesh.status import MeshStatus
from shepherd.mesh.store import SharedStore, StoreUnavailable
from shepherd.periodic import Periodic
from shepherd.policies.registry import PolicyRegistry
from shepherd.workers.manager import WorkerManager
from shepherd.workers.registry import RegistryEvent, WorkerRegistry
from shepherd.workers.worker import Worker

if TYPE_CHECKING:  # Redis-only pieces, imported at run time only with --mesh-redis-url
    from shepherd.mesh.rate_limit import FleetLimiter
    from shepherd.mesh.tree_sync import TreeSync

log = logging.getLogger("shepherd.mesh")


class Mesh:
    def __init__(self, config: GatewayConfig, store: SharedStore, status: MeshStatus, registry: WorkerRegistry,
                 manager: WorkerManager, policies: PolicyRegistry) -> None:
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.store = store
        self.status = status
        self.registry = RegistrySync(store, registry, manager)
        self._manager = manager
        self.health: HealthSync | None = None
        self.trees: TreeSync | None = None
        self.limiter: FleetLimiter | None = None
        if store.kind == "redis":
            from shepherd.mesh.rate_limit import FleetLimiter
            from shepherd.mesh.redis_store import RedisStore
            from shepherd.mesh.tree_sync import TreeSync

            assert isinstance(store, RedisStore)
            self.health = HealthSync(store, registry, self.instance)
            self.trees = TreeSync(store, policies, registry, self.instance)
            self.limiter = FleetLimiter(store, status, self.instance)
            registry.subscribe(self._watch_breakers)
        self._loop = Periodic("mesh sync", config.mesh.sync_interval_secs, self._round, log)

    @classmethod
    def create(cls, config: GatewayConfig, registry: WorkerRegistry, manager: WorkerManager,
               policies: PolicyRegistry) -> Mesh | None:
        if config.mesh.redis_url is not None:
            from shepherd.mesh.redis_store import RedisStore

            status = MeshStatus("redis")
            store: SharedStore = RedisStore(config.mesh.redis_url, config.mesh.name, config.mesh.op_timeout_secs,
                                            status)
        elif config.process.local_channel_dir is not None:
            from shepherd.mesh.file_store import FileStore

            status = MeshStatus("local")
            store = FileStore(config.process.local_channel_dir)
        else:
            return None
        return cls(config, store, status, registry, manager, policies)

    def _watch_breakers(self, event: RegistryEvent, worker: Worker) -> None:
        """A breaker that opens here is a verdict for every instance (chained after the metrics')."""
        if event is not RegistryEvent.ADDED or worker.breaker is None or self.health is None:
            return
        previous, health = worker.breaker.listener, self.health

        def listener(old, new):  # type: ignore[no-untyped-def]
            if previous is not None:
                previous(old, new)
            if new.name == "OPEN":
                health.report(worker, False)

        worker.breaker.listener = listener

    def remove_worker(self, worker: Worker) -> None:
        """Remove a worker here and from the shared map, so a peer's reconcile does not bring it back."""
        self._manager.submit_remove(worker)
        self.registry.announce_remove(worker)

    def on_health_transition(self, worker: Worker, ok: bool) -> None:
        if self.health is not None:
            self.health.report(worker, ok)

    async def _round(self) -> None:
        was_connected = self.status.connected
        await self.registry.sync()
        if self.health is not None:
            await self.health.sync()
        if self.trees is not None:
            await self.trees.sync()
        if self.limiter is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.limiter.renew()
        if self.status.connected:
            self.status.synced()
            if not was_connected:  # back after an outage: read every namespace whole next round
                self.registry.forget_version()
                if self.health is not None:
                    self.health.forget_version()

    def details(self) -> dict[str, object]:
        return {"instance": self.instance, **self.status.details()}

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
        with contextlib.suppress(StoreUnavailable):
            await self.registry.flush()  # the last admin changes out before leaving, if the store answers
        if self.limiter is not None:
            await self.limiter.close()  # releases on their way to Redis
        await self.store.close()
