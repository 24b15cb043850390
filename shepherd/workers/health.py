"""Active health checks: probe every worker, take the failing ones out of rotation, bring them back.

Each worker (each distinct base URL: data-parallel ranks share one probe) is probed every
`interval_secs` at `endpoint`, with `timeout_secs`. A ready worker turns not-ready after
`failure_threshold` consecutive failures, and ready again after `success_threshold` consecutive
successes. With `remove_unhealthy`, a worker still failing `3 x failure_threshold` probes after it
left rotation is removed from the registry.

A busy engine can answer its health route slowly while serving real traffic perfectly well. So a
probe that merely times out does not count against a worker that has answered a real request since
the previous probe; a refused connection or an error status always counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from shepherd.config import HealthConfig
from shepherd.periodic import Periodic
from shepherd.workers.metadata import auth_headers
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker, WorkerStatus

log = logging.getLogger("shepherd.health")

MAX_CONCURRENT_PROBES = 128

# A probe for a kind of worker other than HTTP: (worker, timeout) -> (healthy, timed out).
Probe = Callable[[Worker, float], Awaitable[tuple[bool, bool]]]


@dataclass
class _Track:
    successes: int = 0
    failures: int = 0
    failures_while_down: int = 0
    last_probe_at: float = 0.0


class HealthChecker:
    def __init__(self, config: HealthConfig, registry: WorkerRegistry, session: aiohttp.ClientSession,
                 remove: Callable[[Worker], None] | None = None) -> None:
        self._config = config
        self._registry = registry
        self._session = session
        self.remove = remove  # a worker that stayed unhealthy (the mesh replaces it to tell the fleet)
        self._tracks: dict[str, _Track] = {}  # base URL -> probe history
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_PROBES)
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_secs)
        self._loop = Periodic("health check", config.interval_secs, self.check_once, log)
        self._probes: dict[str, Probe] = {}  # connection mode -> probe (HTTP is built in)
        self.on_result: Callable[[Worker, bool], None] | None = None  # for metrics
        self.on_transition: Callable[[Worker, bool], None] | None = None  # into or out of rotation (the mesh)

    def register_probe(self, connection_mode: str, probe: Probe) -> None:
        """Health-check workers of another connection mode (gRPC: the engine's HealthCheck RPC)."""
        self._probes[connection_mode] = probe

    def start(self) -> None:
        if not self._config.disabled:
            self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def check_once(self) -> None:
        """Probe every worker once (concurrently, at most MAX_CONCURRENT_PROBES at a time)."""
        groups: dict[str, list[Worker]] = {}
        for worker in self._registry.all():
            probed = worker.connection_mode == "http" or worker.connection_mode in self._probes
            if probed and worker.status in (WorkerStatus.READY, WorkerStatus.NOT_READY):
                groups.setdefault(worker.base_url, []).append(worker)
        for url in set(self._tracks) - set(groups):
            del self._tracks[url]
        await asyncio.gather(*(self._check(url, workers) for url, workers in groups.items()))

    async def _check(self, url: str, workers: list[Worker]) -> None:
        track = self._tracks.setdefault(url, _Track(last_probe_at=time.monotonic()))
        since = track.last_probe_at
        track.last_probe_at = time.monotonic()
        async with self._limit:
            probe = self._probes.get(workers[0].connection_mode)
            if probe is not None:
                healthy, timed_out = await probe(workers[0], self._config.timeout_secs)
            else:
                healthy, timed_out = await self._probe(url, workers[0].api_key)
        if not healthy and timed_out and any(w.last_success_at > since for w in workers):
            return  # slow to answer the probe, but serving real requests: inconclusive
        self._apply(track, workers, healthy)

    async def _probe(self, url: str, api_key: str | None) -> tuple[bool, bool]:
        """(healthy, timed out)."""
        try:
            async with self._session.get(url + self._config.endpoint, headers=auth_headers(api_key),
                                         timeout=self._timeout) as response:
                await response.read()
                return 200 <= response.status < 300, False
        except TimeoutError:
            return False, True
        except (aiohttp.ClientError, OSError):
            return False, False

    def _apply(self, track: _Track, workers: list[Worker], healthy: bool) -> None:
        config = self._config
        if healthy:
            track.successes += 1
            track.failures = 0
            track.failures_while_down = 0
        else:
            track.failures += 1
            track.successes = 0
        for worker in workers:
            if self.on_result is not None:
                self.on_result(worker, healthy)
            if healthy and worker.breaker is not None:
                worker.breaker.on_healthy_probe()
            if healthy and worker.liveness is not None:
                worker.liveness.contact()  # lifts a stall
            if worker.status is WorkerStatus.READY and track.failures >= config.failure_threshold:
                worker.status = WorkerStatus.NOT_READY
                log.warning("worker %s is unhealthy after %d failed probes; out of rotation", worker.url,
                            track.failures)
                if self.on_transition is not None:
                    self.on_transition(worker, False)
            elif worker.status is WorkerStatus.NOT_READY and track.successes >= config.success_threshold:
                worker.status = WorkerStatus.READY
                log.info("worker %s is healthy again after %d good probes; back in rotation", worker.url,
                         track.successes)
                if self.on_transition is not None:
                    self.on_transition(worker, True)
        if not healthy and all(w.status is WorkerStatus.NOT_READY for w in workers):
            track.failures_while_down += 1
            if config.remove_unhealthy and self.remove is not None and \
                    track.failures_while_down > 3 * config.failure_threshold:
                log.warning("worker %s stayed unhealthy; removing it", workers[0].base_url)
                self.remove(workers[0])
