"""Admin routes: the worker registry API and fan-out operations over every worker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from shepherd.api.body import parse_json_object, read_body
from shepherd.api.keys import CONTEXT
from shepherd.errors import GatewayError
from shepherd.policies.precise_cache import PreciseCachePolicy
from shepherd.workers.manager import WorkerConflict
from shepherd.workers.metadata import auth_headers
from shepherd.workers.spec import SpecError, WorkerSpec
from shepherd.workers.worker import Worker, WorkerType

FLUSH_TIMEOUT = aiohttp.ClientTimeout(total=45)
LOADS_TIMEOUT = aiohttp.ClientTimeout(total=5)
_ADMIN_BODY_LIMIT = 1024 * 1024


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _worker_or_404(request: web.Request) -> Worker:
    worker_id = request.match_info["worker_id"]
    worker = request.app[CONTEXT].registry.get(worker_id)
    if worker is None:
        raise GatewayError(404, "worker_not_found", f"No worker with id {worker_id}")
    return worker


async def _spec_body(request: web.Request) -> dict[str, Any]:
    return parse_json_object(await read_body(request, _ADMIN_BODY_LIMIT))


# -- /workers -----------------------------------------------------------------------------------

async def add_worker(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    try:
        spec = WorkerSpec.from_json(await _spec_body(request))
    except SpecError as exc:
        raise GatewayError(400, "invalid_worker_spec", str(exc)) from None
    try:
        worker_id = context.manager.submit_add(spec)
    except WorkerConflict as exc:
        raise GatewayError(409, "worker_already_exists", str(exc)) from None
    if context.mesh is not None:
        context.mesh.registry.announce_add(worker_id, spec)
    location = f"/workers/{worker_id}"
    body = {"status": "accepted", "worker_id": worker_id, "url": spec.url, "location": location,
            "message": "The worker is being probed and will receive traffic once it answers"}
    return _json(body, status=202, headers={"Location": location})


async def list_workers(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    model = request.query.get("model")
    workers = [w for w in context.registry.all() if model is None or w.serves(model)]
    pending = [{"id": job.worker_id, "url": job.url, "status": job.status, "job_status": job.info()}
               for job in context.manager.pending_jobs() if job.kind == "add"]
    stats = {f"{kind.value}_count": sum(1 for w in workers if w.worker_type is kind) for kind in WorkerType}
    return _json({"workers": [w.info() for w in workers], "pending": pending, "total": len(workers),
                  "stats": stats})


async def get_worker(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    worker_id = request.match_info["worker_id"]
    worker = context.registry.get(worker_id)
    job = context.manager.job(worker_id)
    if worker is not None:
        info = worker.info()
        if job is not None:
            info["job_status"] = job.info()
        return _json(info)
    if job is not None:
        return _json({"id": worker_id, "url": job.url, "status": job.status, "job_status": job.info()})
    raise GatewayError(404, "worker_not_found", f"No worker with id {worker_id}")


async def update_worker(request: web.Request) -> web.Response:
    worker = _worker_or_404(request)
    context = request.app[CONTEXT]
    try:
        updated = context.manager.update(worker, await _spec_body(request))
    except SpecError as exc:
        raise GatewayError(400, "invalid_worker_spec", str(exc)) from None
    if context.mesh is not None:
        context.mesh.registry.announce_update(updated)
    return _json(updated.info())


async def remove_worker(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    worker_id = request.match_info["worker_id"]
    if context.registry.get(worker_id) is None:
        job = context.manager.cancel_add(worker_id)
        if job is not None:  # still being probed: nothing to drain, it just never joins
            return _json({"status": "deleted", "worker_id": worker_id, "url": job.url,
                          "message": "The worker was still being probed; its registration was cancelled"})
    worker = _worker_or_404(request)
    context = request.app[CONTEXT]
    context.manager.submit_remove(worker)
    if context.mesh is not None:
        context.mesh.registry.announce_remove(worker)
    body = {"status": "accepted", "worker_id": worker.id, "url": worker.url,
            "message": "The worker gets no new requests and is removed once its in-flight requests finish"}
    return _json(body, status=202)


# -- fan-out operations -------------------------------------------------------------------------

async def _fan_out(
    request: web.Request, call: Callable[[aiohttp.ClientSession, Worker], Awaitable[Any]]
) -> list[tuple[Worker, Any]]:
    """Run `call` once per distinct worker URL, concurrently; exceptions are returned, not raised."""
    context = request.app[CONTEXT]
    workers = list({w.url: w for w in context.registry.all()}.values())
    if not workers:
        raise GatewayError(503, "no_workers", "No workers are registered with the gateway")
    results = await asyncio.gather(*(call(context.session, w) for w in workers), return_exceptions=True)
    return list(zip(workers, results, strict=True))


async def flush_cache(request: web.Request) -> web.Response:
    async def flush(session: aiohttp.ClientSession, worker: Worker) -> int:
        if worker.connection_mode == "grpc":
            return await request.app[CONTEXT].grpc.flush_cache(worker)
        async with session.post(worker.url + "/flush_cache", headers=auth_headers(worker.api_key),
                                timeout=FLUSH_TIMEOUT) as response:
            await response.read()
            return response.status

    results = await _fan_out(request, flush)
    failed = [{"url": w.url, "error": _describe(result)} for w, result in results
              if not (isinstance(result, int) and 200 <= result < 300)]
    flushed = [w.url for w, _ in results if w.url not in {f["url"] for f in failed}]
    if not failed:
        return _json({"status": "success", "message": f"Cache flushed on {len(flushed)} workers",
                      "workers_flushed": flushed})
    return _json({"status": "partial_success" if flushed else "failed", "workers_flushed": flushed,
                  "failed": failed}, status=206 if flushed else 502)


async def get_loads(request: web.Request) -> web.Response:
    async def fetch(session: aiohttp.ClientSession, worker: Worker) -> Any:
        if worker.connection_mode == "grpc":
            return await request.app[CONTEXT].grpc.loads(worker)
        async with session.get(worker.url + "/v1/loads", headers=auth_headers(worker.api_key),
                               timeout=LOADS_TIMEOUT) as response:
            if response.status >= 300:
                raise RuntimeError(f"HTTP {response.status}")
            return orjson.loads(await response.read())

    results = await _fan_out(request, fetch)
    loads = []
    for worker, result in results:
        row: dict[str, Any] = {"worker": worker.url, "worker_type": worker.worker_type.value,
                               "inflight": worker.load}
        if isinstance(result, dict) and isinstance(result.get("loads"), list):
            row["load"] = sum(int(rank.get("num_used_tokens", 0)) for rank in result["loads"])
            row["details"] = result
        else:
            row["load"] = -1
            row["error"] = _describe(result)
        loads.append(row)
    successful = sum(1 for row in loads if row["load"] >= 0)
    return _json({"loads": loads, "total_workers": len(loads), "successful": successful,
                  "failed": len(loads) - successful})


async def kv_index(request: web.Request) -> web.Response:
    """What precise_cache routes by: per model its load spread and learned TTFT constants, and what
    the KV-event index holds per worker (live stream, blocks, resyncs)."""
    context = request.app[CONTEXT]
    reports = {}
    for registry in context.all_policy_registries():
        for model, policy in registry.by_model().items():
            if isinstance(policy, PreciseCachePolicy):
                reports[model or "default"] = policy.report()
    index = context.kv_index
    return _json({"subscribed": index is not None, "workers": index.stats() if index is not None else {},
                  "policies": reports})


def _describe(result: Any) -> str:
    if isinstance(result, BaseException):
        return f"{result.__class__.__name__}: {result}".rstrip(": ")
    return f"HTTP {result}"


def add_admin_routes(app: web.Application) -> None:
    app.router.add_post("/workers", add_worker)
    app.router.add_get("/workers", list_workers)
    app.router.add_get("/workers/{worker_id}", get_worker)
    app.router.add_patch("/workers/{worker_id}", update_worker)
    app.router.add_delete("/workers/{worker_id}", remove_worker)
    app.router.add_post("/flush_cache", flush_cache)
    app.router.add_get("/get_loads", get_loads)
    app.router.add_get("/kv_index", kv_index)
