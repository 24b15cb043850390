"""Public utility routes: liveness, readiness, the model list and engine info passthroughs."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from shepherd.api.engine_metrics import engine_metrics
from shepherd.api.keys import CONTEXT
from shepherd.context import AppContext
from shepherd.errors import GatewayError
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import WorkerType


async def liveness(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def readiness(request: web.Request) -> web.Response:
    status, body = readiness_state(request.app[CONTEXT])
    return web.json_response(body, status=status, dumps=_dumps)


def readiness_state(context: AppContext) -> tuple[int, dict[str, Any]]:
    """What /readiness answers (status, body): on the main port, and published to --health-check-port."""
    if context.draining:
        return 503, {"status": "not ready", "reason": "draining"}
    if context.config.pd_disaggregation:
        return _pd_readiness(context.registry)
    workers = context.registry.of_type(WorkerType.REGULAR)
    healthy = sum(1 for worker in workers if worker.is_available)
    # An unreachable mesh store is reported, never a reason to leave the load balancer's rotation:
    # the gateway serves on its last known state.
    mesh = {"mesh": context.mesh.details()} if context.mesh is not None else {}
    if healthy:
        return 200, {"status": "ready", "healthy_workers": healthy, "total_workers": len(workers), **mesh}
    return 503, {"status": "not ready", "reason": "no healthy workers", "healthy_workers": 0,
                 "total_workers": len(workers), **mesh}


def _pd_readiness(registry: WorkerRegistry) -> tuple[int, dict[str, Any]]:
    """Disaggregated serving needs at least one healthy worker of each role."""
    prefill = sum(1 for w in registry.of_type(WorkerType.PREFILL) if w.is_available)
    decode = sum(1 for w in registry.of_type(WorkerType.DECODE) if w.is_available)
    body: dict[str, Any] = {"healthy_prefill_workers": prefill, "healthy_decode_workers": decode,
                            "total_workers": len(registry)}
    if prefill and decode:
        return 200, {"status": "ready", **body}
    reason = "no healthy prefill workers" if not prefill else "no healthy decode workers"
    return 503, {"status": "not ready", "reason": reason, **body}


def _model_cards(registry: WorkerRegistry) -> dict[str, dict[str, Any]]:
    """The union of every worker's models, one card per model id (the first worker's card wins), and
    one per --model-alias of a served model (its `root` names the model it stands for)."""
    seen: dict[str, dict[str, Any]] = {}
    for worker in registry.all():
        cards = worker.model_cards or tuple({"id": model} for model in worker.model_ids)
        for card in cards:
            model_id = str(card["id"])
            if model_id not in seen:
                seen[model_id] = {"id": model_id, "object": "model",
                                  "created": card.get("created", int(worker.created_at)),
                                  "owned_by": card.get("owned_by", worker.runtime_type),
                                  **{k: v for k, v in card.items() if k not in ("id", "object")}}
    if registry.has_aliases:
        for model_id, card in list(seen.items()):
            for alias in registry.aliases_of(model_id):
                seen.setdefault(alias, {**card, "id": alias, "root": model_id})
    return seen


async def list_models(request: web.Request) -> web.Response:
    cards = _model_cards(request.app[CONTEXT].registry)
    return web.json_response({"object": "list", "data": list(cards.values())}, dumps=_dumps)


async def get_model(request: web.Request) -> web.Response:
    """One model's card, as in the list; 404 model_not_found when no worker serves it."""
    model_id = request.match_info["model_id"]
    card = _model_cards(request.app[CONTEXT].registry).get(model_id)
    if card is None:
        raise GatewayError(404, "model_not_found", f"The model '{model_id}' does not exist", param="model")
    return web.json_response(card, dumps=_dumps)


def _passthrough_get(upstream_path: str):  # type: ignore[no-untyped-def]
    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[CONTEXT].router.route(request, upstream_path, None, None, method="GET")

    return handle


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def add_utility_routes(app: web.Application) -> None:
    app.router.add_get("/health", liveness)
    app.router.add_get("/liveness", liveness)
    app.router.add_get("/readiness", readiness)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id:.+}", get_model)  # ids may hold slashes (org/name)
    for path in ("/health_generate", "/get_server_info", "/get_model_info"):
        app.router.add_get(path, _passthrough_get(path))
    app.router.add_get("/engine_metrics", engine_metrics)


