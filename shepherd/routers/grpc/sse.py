"""The end of every streamed gRPC answer: `[DONE]`, or the common error frame when the engine broke off."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
from aiohttp import web

from shepherd.headers import REQUEST_ID_HEADER, ROUTED_WORKER_HEADER
from shepherd.routers.common.sse import DONE_FRAME, ClientGone, end_stream, send, start_sse, stream_error_frame
from shepherd.routers.grpc.execution import EngineCall


async def start_engine_sse(request: web.Request, request_id: str, engine: EngineCall) -> web.StreamResponse:
    return await start_sse(request, {REQUEST_ID_HEADER: request_id, ROUTED_WORKER_HEADER: engine.worker.url})


async def run_stream(response: web.StreamResponse, engine: EngineCall, events: Awaitable[None],
                     api: str = "openai") -> None:
    """Await `events` (which sends the stream's frames), then [DONE] (OpenAI streams; an Anthropic
    stream ends with its own message_stop). An engine failure mid-stream ends with the client's API's
    error event; a client that left ends it quietly (the caller's cleanup aborts the engine call)."""
    try:
        await events
        if api == "openai":
            await send(response, DONE_FRAME)
        await response.write_eof()
    except grpc.aio.AioRpcError as exc:
        engine.broke_off()
        message = f"Worker {engine.worker.url} failed mid-stream: {exc.code().name} {exc.details() or ''}".rstrip()
        await end_stream(response, stream_error_frame(api, message, code="worker_stream_failed"))
    except ClientGone:
        engine.attempt.client_left()
