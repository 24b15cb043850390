"""Everything the gRPC pipeline adds to a gateway, built and closed together."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from shepherd.config import GatewayConfig
from shepherd.observability.metrics import Metrics
from shepherd.observability.tracing import Tracing
from shepherd.policies.registry import PolicyRegistry
from shepherd.routers.grpc.output import OutputFactory
from shepherd.routers.grpc.router import GrpcRouter
from shepherd.routers.manager import RouterManager
from shepherd.tokenizer.cache import CacheConfig
from shepherd.tokenizer.registry import TokenizerRegistry
from shepherd.workers.grpc_client import GrpcWorkerClient
from shepherd.workers.grpc_pool import GrpcClientPool
from shepherd.workers.grpc_setup import GrpcWorkerSetup
from shepherd.workers.manager import WorkerManager
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker


@dataclass
class GrpcComponents:
    tokenizers: TokenizerRegistry
    pool: GrpcClientPool
    setup: GrpcWorkerSetup
    router: GrpcRouter

    @classmethod
    def install(cls, config: GatewayConfig, registry: WorkerRegistry, policies: PolicyRegistry,
                manager: WorkerManager, routers: RouterManager, outputs: OutputFactory | None = None,
                metrics: Metrics | None = None, tracing: Tracing | None = None) -> GrpcComponents:
        """Build the pipeline and hook it into worker registration and request routing.

        `outputs` is the chat parser hook (tool calls, reasoning); None keeps answers as plain content.
        """
        tokenizers = TokenizerRegistry(CacheConfig(
            enable_l0=config.tokenizer_cache_enable_l0, l0_max_entries=config.tokenizer_cache_l0_max_entries,
            l0_max_memory=config.tokenizer_cache_l0_max_memory,
            enable_l1=config.tokenizer_cache_enable_l1, l1_max_memory=config.tokenizer_cache_l1_max_memory))
        pool = GrpcClientPool()
        registry.subscribe(pool.on_registry_event)
        setup = GrpcWorkerSetup(config, pool, tokenizers)
        manager.register_prober("grpc", setup.probe)
        manager.add_preparer(setup.prepare)
        router = GrpcRouter(config, registry, policies, pool, tokenizers, outputs, metrics, tracing)
        routers.register("grpc", router)
        return cls(tokenizers, pool, setup, router)

    def client(self, worker: Worker) -> GrpcWorkerClient:
        client = self.pool.get(worker.url)
        if client is None:
            raise RuntimeError(f"no gRPC client for {worker.url}")
        return client

    async def loads(self, worker: Worker) -> Any:
        return await self.client(worker).get_loads()

    async def load_rows(self, worker: Worker) -> list[dict[str, Any]]:
        """The engine's per-rank load rows (GetLoads), for the load monitor."""
        rows = (await self.loads(worker)).get("loads") or []
        return [row for row in rows if isinstance(row, dict)]

    async def health(self, worker: Worker, rpc_timeout: float) -> tuple[bool, bool]:
        """(healthy, timed out) from the engine's HealthCheck RPC, for the health checker."""
        client = self.pool.get(worker.url)
        if client is None:
            return False, False
        try:
            healthy, _ = await client.health_check(rpc_timeout=rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            return False, exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        return healthy, False

    async def flush_cache(self, worker: Worker) -> int:
        return 200 if await self.client(worker).flush_cache() else 500

    async def close(self) -> None:
        await self.router.close()
        await self.setup.close()
