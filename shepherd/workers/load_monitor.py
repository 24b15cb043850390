"""The load monitor: polls each engine's own view of its load and hangs it on the Worker.

Every `--load-monitor-interval` seconds each ready HTTP worker (each distinct base URL, once) is asked
for its load: `GET /v1/loads` (SGLang, also what SMG's mock speaks), else `GET /get_load` (older SGLang),
else the Prometheus text of `GET /metrics` (vLLM and SGLang gauges). The result becomes
`worker.snapshot`, which load-aware policies read without awaiting anything; a worker whose poll
fails has its snapshot cleared, so no policy trusts stale numbers. Data-parallel ranks get their own
rank's row; other workers get the sum over ranks.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import orjson

from shepherd.periodic import Periodic
from shepherd.workers.metadata import auth_headers
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import LoadSnapshot, Worker, WorkerStatus

log = logging.getLogger("shepherd.load_monitor")

POLL_TIMEOUT = aiohttp.ClientTimeout(total=5)
_ABSENT_STATUSES = (404, 405, 501)
_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)", re.MULTILINE)


# Per-rank load rows for a kind of worker other than HTTP (gRPC: the engine's GetLoads RPC).
LoadSource = Callable[[Worker], Awaitable[list[dict[str, Any]]]]


class LoadMonitor:
    def __init__(self, registry: WorkerRegistry, session: aiohttp.ClientSession, interval_secs: float) -> None:
        self._registry = registry
        self._session = session
        self.interval_secs = interval_secs
        self._seq = 0
        self._route: dict[str, str] = {}  # base URL -> which endpoint answered last ("loads", "get_load", "metrics")
        self._sources: dict[str, LoadSource] = {}  # connection mode -> source (HTTP is built in)
        self._loop = Periodic("load poll", interval_secs, self.poll_once, log)

    def register_source(self, connection_mode: str, source: LoadSource) -> None:
        self._sources[connection_mode] = source

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def poll_once(self) -> None:
        groups: dict[str, list[Worker]] = {}
        for worker in self._registry.all():
            if worker.connection_mode == "http" or worker.connection_mode in self._sources:
                if worker.status is WorkerStatus.READY:
                    groups.setdefault(worker.base_url, []).append(worker)
                else:
                    worker.snapshot = None
        if not groups:
            return
        self._seq += 1
        results = await asyncio.gather(*(self._rows(workers[0]) for workers in groups.values()),
                                       return_exceptions=True)
        now = time.monotonic()
        for (url, workers), rows in zip(groups.items(), results, strict=True):
            if isinstance(rows, BaseException) or not rows:
                if isinstance(rows, BaseException):
                    log.debug("load poll of %s failed: %s", url, rows)
                for worker in workers:
                    worker.snapshot = None
                continue
            for worker in workers:
                mine = rows
                if worker.dp_rank is not None:
                    mine = [r for r in rows if r.get("dp_rank", 0) == worker.dp_rank] or rows
                worker.snapshot = snapshot = _snapshot(mine, self._seq, now, worker.load)
                if worker.liveness is not None:
                    # The engine answered; one that reports generating tokens is making progress.
                    if snapshot.gen_throughput > 0:
                        worker.liveness.progress(worker, now)
                    else:
                        worker.liveness.contact(now)

    async def _rows(self, worker: Worker) -> list[dict[str, Any]]:
        source = self._sources.get(worker.connection_mode)
        if source is not None:
            return await asyncio.wait_for(source(worker), POLL_TIMEOUT.total)
        return await self._fetch(worker.base_url, worker.api_key)

    async def _fetch(self, url: str, api_key: str | None) -> list[dict[str, Any]]:
        """The worker's per-rank load rows, from whichever endpoint it speaks."""
        known = self._route.get(url)
        for route in ([known] if known else ["loads", "get_load", "metrics"]):
            status, body = await self._get(url, _PATHS[route], api_key)
            if 200 <= status < 300:
                rows = _PARSERS[route](body)
                if rows:
                    self._route[url] = route
                    return rows
            elif status not in _ABSENT_STATUSES:
                raise RuntimeError(f"{_PATHS[route]} answered HTTP {status}")
        self._route.pop(url, None)  # ask every endpoint again next time
        return []

    async def _get(self, url: str, path: str, api_key: str | None) -> tuple[int, bytes]:
        async with self._session.get(url + path, headers=auth_headers(api_key), timeout=POLL_TIMEOUT) as response:
            return response.status, await response.read()


def _snapshot(rows: Iterable[dict[str, Any]], seq: int, now: float, in_flight: int | None = None) -> LoadSnapshot:
    rows = list(rows)

    def total(name: str) -> float:
        return sum(float(r.get(name) or 0) for r in rows)

    usages = [float(r.get("token_usage") or 0) for r in rows]
    return LoadSnapshot(
        running=int(total("num_running_reqs")),
        waiting=int(total("num_waiting_reqs")),
        waiting_uncached_tokens=int(total("num_waiting_uncached_tokens")),
        used_tokens=int(total("num_used_tokens")),
        max_tokens=int(total("max_total_num_tokens")),
        token_usage=sum(usages) / len(usages) if usages else 0.0,
        gen_throughput=total("gen_throughput"),
        cache_hit_rate=total("cache_hit_rate") / len(rows) if rows else 0.0,
        max_running=int(total("max_running_requests")),
        seq=seq,
        polled_at=now,
        in_flight_at_report=in_flight,
    )


def _parse_loads(body: bytes) -> list[dict[str, Any]]:
    data = orjson.loads(body)
    rows = data.get("loads") if isinstance(data, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _parse_get_load(body: bytes) -> list[dict[str, Any]]:
    data = orjson.loads(body)
    rows = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
    return [{"dp_rank": r.get("dp_rank", 0), "num_running_reqs": max(0, int(r.get("num_reqs", 0))
                                                                     - int(r.get("num_waiting_reqs", 0))),
             "num_waiting_reqs": r.get("num_waiting_reqs", 0), "num_used_tokens": r.get("num_tokens", 0)}
            for r in rows if isinstance(r, dict)]


_METRIC_FIELDS = {
    "num_running_reqs": "num_running_reqs", "num_queue_reqs": "num_waiting_reqs", "token_usage": "token_usage",
    "gen_throughput": "gen_throughput", "cache_hit_rate": "cache_hit_rate",
    "num_requests_running": "num_running_reqs", "num_requests_waiting": "num_waiting_reqs",
    "kv_cache_usage_perc": "token_usage", "gpu_cache_usage_perc": "token_usage",
    "gpu_prefix_cache_hit_rate": "cache_hit_rate",
}


def _parse_metrics(body: bytes) -> list[dict[str, Any]]:
    """SGLang (`sglang:`/`sglang_`) or vLLM (`vllm:`) gauges; no KV-usage gauge means no load."""
    row: dict[str, float] = {}
    for name, _, value in _METRIC_LINE.findall(body.decode(errors="replace")):
        prefix, _, short = name.partition(":") if ":" in name else name.partition("_")
        if prefix in ("sglang", "vllm") and short in _METRIC_FIELDS:
            field = _METRIC_FIELDS[short]
            row[field] = row.get(field, 0.0) + float(value) if field != "token_usage" else float(value)
    return [row] if "token_usage" in row else []


_PATHS = {"loads": "/v1/loads?include=core,queues", "get_load": "/get_load", "metrics": "/metrics"}
_PARSERS = {"loads": _parse_loads, "get_load": _parse_get_load, "metrics": _parse_metrics}
