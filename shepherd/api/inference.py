"""Inference routes: every one is parsed once and handed to the router."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from shepherd.api.admit import admit, leave
from shepherd.api.body import parse_json_object, read_body
from shepherd.api.keys import CONTEXT
from shepherd.api.outcome import observed
from shepherd.context import AppContext
from shepherd.errors import GatewayError
from shepherd.request_keys import WANT_USAGE
from shepherd.routers.common.model_call import CHAT_PATH

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
    "/v1/messages/count_tokens": "/v1/messages/count_tokens",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _inference_handler(context: AppContext, upstream_path: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        # The body is read (under its deadline) before admission: a client that sends it slowly
        # must not sit on a slot that requests ready to run are waiting for.
        raw = await read_body(request, context.config.max_payload_size, context)
        body = parse_json_object(raw)
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise GatewayError(400, "invalid_type", "'model' must be a string", param="model")
        ticket = await admit(context, request, model)
        try:
            request[WANT_USAGE] = True
            with observed(context, request, upstream_path, body, ticket) as outcome:
                if context.mcp is not None and context.mcp.pool.static and upstream_path == CHAT_PATH:
                    response = await context.mcp.handle_chat(context, request, body)
                elif upstream_path == "/v1/messages" and body.get("mcp_servers") is not None:
                    response = await context.mcp_service().handle_messages(context, request, body)
                else:
                    response = await context.router.route(request, upstream_path, raw, body)
                outcome.status = response.status
                return response
        finally:
            leave(context, request, ticket)

    return handle


def add_inference_routes(app: web.Application) -> None:
    context = app[CONTEXT]  # looked up once here rather than on every request
    for path, upstream_path in INFERENCE_ROUTES.items():
        app.router.add_post(path, _inference_handler(context, upstream_path))
