"""Run simulated engines: one process, one or many ports, each port its own engine."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Sequence

from aiohttp import web

from shepherd.sim.faults import Faults
from shepherd.sim.server import SimConfig, SimWorker

log = logging.getLogger("shepherd.sim")


class SimCluster:
    """Several SimWorkers served from one event loop (used by the CLI, tests and benchmarks)."""

    def __init__(self, config: SimConfig, host: str, ports: Sequence[int], faults: Faults | None = None,
                 bootstrap_ports: Sequence[int] | None = None,
                 kv_events: Sequence[tuple[str, str | None]] = ()) -> None:
        if kv_events and len(kv_events) != len(ports):
            raise ValueError("--kv-events-endpoints needs one endpoint per port")
        if kv_events and config.dp_size != 1:
            raise ValueError("--kv-events-endpoints publishes one engine per worker: use --dp-size 1")
        self.config = config
        self.kv_events = list(kv_events)  # (PUB endpoint, ROUTER replay endpoint or None) per worker
        self.bootstrap_ports = list(bootstrap_ports or [])
        self.host = host
        self.requested_ports = list(ports)
        self.faults = faults or Faults()
        self.workers: list[SimWorker] = []
        self.ports: list[int] = []
        self._runners: list[web.AppRunner] = []

    @property
    def urls(self) -> list[str]:
        return [f"http://{self.host}:{port}" for port in self.ports]

    async def start(self) -> None:
        tokenizer = None
        if self.config.tokenizer_path:
            from shepherd.tokenizer.cache import CacheConfig
            from shepherd.tokenizer.registry import TokenizerRegistry

            # The prefix cache (exact by construction) keeps a resent conversation from costing the
            # simulator's one event loop a full encode per turn.
            tokenizer = await TokenizerRegistry(CacheConfig(enable_l1=True)).load(
                self.config.model, self.config.tokenizer_path, origin="sim")
        for index, port in enumerate(self.requested_ports):
            bootstrap = self.bootstrap_ports[index] if index < len(self.bootstrap_ports) else None
            worker = SimWorker(self.config, dataclasses.replace(self.faults), name=f"{self.host}:{port}",
                               host=self.host, bootstrap_port=bootstrap)
            runner = web.AppRunner(worker.app, handler_cancellation=True, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, self.host, port, backlog=4096, reuse_address=True)
            await site.start()
            if worker.pd is not None and worker.pd.is_prefill and bootstrap is not None:
                # SGLang's prefill servers hand KV over on a bootstrap port of their own.
                bootstrap_runner = web.AppRunner(worker.pd.bootstrap_app(), access_log=None)
                await bootstrap_runner.setup()
                await web.TCPSite(bootstrap_runner, self.host, bootstrap, reuse_address=True).start()
                self._runners.append(bootstrap_runner)
            if self.kv_events and worker.engine is not None:
                from shepherd.sim.zmq_events import ZmqKvPublisher  # pyzmq only when asked for

                endpoint, replay = self.kv_events[index]
                worker.kv_publisher = ZmqKvPublisher(worker.engine, endpoint, replay)
                worker.kv_publisher.start()
            server = getattr(site, "_server", None)
            bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port
            worker.tokenizer = tokenizer
            self.workers.append(worker)
            self.ports.append(int(bound))
            self._runners.append(runner)

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.close()
        for runner in self._runners:
            await runner.cleanup()


async def run_cluster(config: SimConfig, host: str, ports: Sequence[int], faults: Faults,
                      bootstrap_ports: Sequence[int] | None = None,
                      kv_events: Sequence[tuple[str, str | None]] = ()) -> None:
    cluster = SimCluster(config, host, ports, faults, bootstrap_ports, kv_events)
    await cluster.start()
    persona = f"{config.provider} provider" if config.provider else f"{config.runtime}, {config.role}"
    print(f"mock-worker ready ({config.engine}, {persona}, model {config.model}): "
          + " ".join(cluster.urls), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await cluster.stop()
