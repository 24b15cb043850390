"""Inference routes: every one is parsed once and handed to the router."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from shepherd.api.body import parse_json_object, read_body
from shepherd.api.keys import CONTEXT
from shepherd.errors import GatewayError
from shepherd.headers import presented_key

# gateway path -> the worker path it is forwarded to
INFERENCE_ROUTES: dict[str, str] = {
    "/v1/chat/completions": "/v1/chat/completions",
    "/v1/completions": "/v1/completions",
    "/generate": "/generate",
    "/v1/embeddings": "/v1/embeddings",
    "/v1/rerank": "/v1/rerank",
    "/rerank": "/v1/rerank",
    "/v1/classify": "/v1/classify",
    "/v1/messages": "/v1/messages",
    "/v1/responses": "/v1/responses",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _inference_handler(upstream_path: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        context = request.app[CONTEXT]
        admission = context.admission if context.config.admission.enabled else None
        # The body is read (under its deadline) before admission: a client that sends it slowly
        # must not sit on a slot that requests ready to run are waiting for.
        raw = await read_body(request, context.config.max_payload_size)
        body = parse_json_object(raw)
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise GatewayError(400, "invalid_type", "'model' must be a string", param="model")
        ticket = await admission.acquire(presented_key(request.headers)) if admission else None
        try:
            return await context.router.route(request, upstream_path, raw, body)
        finally:
            if ticket is not None and admission is not None:
                admission.release(ticket)

    return handle


def add_inference_routes(app: web.Application) -> None:
    for path, upstream_path in INFERENCE_ROUTES.items():
        app.router.add_post(path, _inference_handler(upstream_path))
