"""Inference routes: every one is parsed once and handed to the router."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from shepherd.api.admit import admit, leave
from shepherd.api.body import parse_json_object, read_body
from shepherd.api.keys import CONTEXT
from shepherd.context import AppContext
from shepherd.errors import GatewayError
from shepherd.request_keys import FIRST_CHUNK, USAGE, WANT_USAGE, WORKER
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


def _inference_handler(upstream_path: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        context = request.app[CONTEXT]
        # The body is read (under its deadline) before admission: a client that sends it slowly
        # must not sit on a slot that requests ready to run are waiting for.
        raw = await read_body(request, context.config.max_payload_size)
        body = parse_json_object(raw)
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise GatewayError(400, "invalid_type", "'model' must be a string", param="model")
        ticket = await admit(context, request, model)
        try:
            arrived, started = time.time(), time.perf_counter()
            request[WANT_USAGE] = True
            status = 500
            try:
                if context.mcp is not None and context.mcp.pool.static and upstream_path == CHAT_PATH:
                    response = await context.mcp.handle_chat(context, request, body)
                elif upstream_path == "/v1/messages" and body.get("mcp_servers") is not None:
                    response = await context.mcp_service().handle_messages(context, request, body)
                else:
                    response = await context.router.route(request, upstream_path, raw, body)
                status = response.status
                return response
            except GatewayError as exc:
                status = exc.status
                raise
            except asyncio.CancelledError:  # the client went away first, or the scheduler preempted it
                status = 503 if ticket is not None and ticket.preempted else 499
                raise
            finally:
                _observe(context, request, upstream_path, body, status, arrived, started)
        finally:
            leave(context, request, ticket)

    return handle


def _observe(context: AppContext, request: web.Request, api: str, body: Mapping[str, Any], status: int,
             arrived: float, started: float) -> None:
    """The one place a finished inference request is told to the status page and the traffic recorder."""
    duration = time.perf_counter() - started
    first_chunk = request.get(FIRST_CHUNK)
    ttft = first_chunk - started if first_chunk is not None else None
    usage = request.get(USAGE)
    worker = request.get(WORKER)
    model = body.get("model")
    context.live_stats.observe(worker, model if isinstance(model, str) else None, status,
                               ttft if ttft is not None else duration,
                               usage[0] if usage else 0, usage[2] if usage and len(usage) > 2 else 0)
    if context.recorder is not None:
        context.recorder.record(arrived=arrived, api=api, body=body, headers=request.headers, status=status,
                                worker=worker, usage=usage, ttft=ttft, duration=duration)


def add_inference_routes(app: web.Application) -> None:
    for path, upstream_path in INFERENCE_ROUTES.items():
        app.router.add_post(path, _inference_handler(upstream_path))
