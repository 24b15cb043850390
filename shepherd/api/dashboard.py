"""The live status page: GET /dashboard (one static page) and GET /dashboard/data (what it polls).

Both are control-plane routes (admin credentials when any key is configured; see middleware/auth).
The page is a single file with its script and styles inline and no external assets, so it works
air-gapped; a Content-Security-Policy keeps it that way. The data is read from what the gateway
already holds: the registry (health, breaker, in-flight, the engines' last load reports), the live
per-second stats (rates, errors, TTFT, cache hits per worker and model) and the worker jobs.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from shepherd.api.keys import CONTEXT
from shepherd.context import AppContext
from shepherd.errors import GatewayError
from shepherd.workers.worker import Worker

_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _page() -> bytes:
    return resources.files("shepherd.api").joinpath("dashboard.html").read_bytes()


async def dashboard_page(request: web.Request) -> web.Response:
    return web.Response(body=_page(), content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store",
                                 "X-Content-Type-Options": "nosniff"})


async def dashboard_data(request: web.Request) -> web.Response:
    try:
        minutes = float(request.query.get("minutes", "5"))
    except ValueError:
        raise GatewayError(400, "invalid_value", "'minutes' must be a number", param="minutes") from None
    if not 1 <= minutes <= 5:
        raise GatewayError(400, "invalid_value", "'minutes' must be between 1 and 5", param="minutes")
    body = dashboard_state(request.app[CONTEXT], minutes)
    return web.Response(body=orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


def dashboard_state(context: AppContext, minutes: float = 5.0) -> dict[str, Any]:
    now = time.time()
    live = context.live_stats.snapshot(minutes)
    pairs = live["pairs"]
    by_worker: dict[str, list[dict[str, Any]]] = {}
    models: dict[str, dict[str, Any]] = {}
    for row in pairs:
        by_worker.setdefault(row["worker"], []).append(row)
        model = models.setdefault(row["model"], {"model": row["model"], "requests": 0, "errors": 0,
                                                 "prompt_tokens": 0, "cached_tokens": 0})
        for key in ("requests", "errors", "prompt_tokens", "cached_tokens"):
            model[key] += row[key]
    workers = [_worker_row(w, by_worker.get(w.url, []), time.monotonic()) for w in context.registry.all()]
    for worker in context.registry.all():
        for model_id in worker.model_ids:
            models.setdefault(model_id, {"model": model_id, "requests": 0, "errors": 0, "prompt_tokens": 0,
                                         "cached_tokens": 0})
            models[model_id].setdefault("workers", 0)
            models[model_id]["workers"] += 1
    for model in models.values():
        model.setdefault("workers", 0)
        model["cache_hit_rate"] = round(model["cached_tokens"] / model["prompt_tokens"], 4) \
            if model["prompt_tokens"] else None
    jobs = context.manager.pending_jobs()
    config = context.config
    return {
        "now": now,
        # in_flight leaves out this request itself.
        "gateway": {"policy": config.policy, "in_flight": max(0, context.in_flight - 1), "draining": context.draining,
                    "uptime_secs": round(now - context.started_at, 1), "pd_disaggregation": config.pd_disaggregation,
                    "load_monitor_interval_secs": config.load_monitor_interval_secs,
                    "recording": context.recorder.info() if context.recorder is not None else None},
        "workers": workers,
        "models": sorted(models.values(), key=lambda m: str(m["model"])),
        "pairs": pairs,
        "series": live["series"],
        "window_secs": live["window_secs"],
        "step_secs": live["step_secs"],
        "jobs": {
            "pending": [_job(job) for job in jobs if job.status == "pending"],
            "failed": [_job(job) for job in jobs if job.status == "failed"],
        },
    }


def _job(job: Any) -> dict[str, Any]:
    return {"worker_id": job.worker_id, "url": job.url, **job.info()}


def _worker_row(worker: Worker, pairs: list[dict[str, Any]], monotonic_now: float) -> dict[str, Any]:
    snapshot = worker.snapshot
    requests = sum(p["requests"] for p in pairs)
    errors = sum(p["errors"] for p in pairs)
    prompt = sum(p["prompt_tokens"] for p in pairs)
    cached = sum(p["cached_tokens"] for p in pairs)
    return {
        "id": worker.id,
        "url": worker.url,
        "model_id": worker.model_id,
        "models": list(worker.model_ids),
        "worker_type": worker.worker_type.value,
        "connection_mode": worker.connection_mode,
        "status": worker.status.value,
        "available": worker.is_available,
        "breaker": worker.breaker.state.name.lower() if worker.breaker is not None else None,
        "in_flight": worker.load,
        "processed": worker.processed,
        "engine": None if snapshot is None else {
            "running": snapshot.running, "waiting": snapshot.waiting, "token_usage": round(snapshot.token_usage, 4),
            "cache_hit_rate": round(snapshot.cache_hit_rate, 4), "gen_throughput": round(snapshot.gen_throughput, 1),
            "age_secs": round(max(0.0, monotonic_now - snapshot.polled_at), 1) if snapshot.polled_at else None,
        },
        "window": {"requests": requests, "errors": errors,
                   "cache_hit_rate": round(cached / prompt, 4) if prompt else None},
    }


def add_dashboard_routes(app: web.Application) -> None:
    app.router.add_get("/dashboard", dashboard_page)
    app.router.add_get("/dashboard/data", dashboard_data)
