"""Writing a streamed gRPC answer: frames gathered per batch of engine messages, and its end (`[DONE]`, or
the common error frame when the engine broke off)."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
from aiohttp import web

from shepherd.headers import REQUEST_ID_HEADER, ROUTED_WORKER_HEADER
from shepherd.routers.common.sse import DONE_FRAME, ClientGone, end_stream, send, start_sse, stream_error_frame
from shepherd.routers.grpc.execution import EngineCall


class FrameBuffer:
    """The frames made from one batch of engine messages (all that had arrived), sent in one write.

    The driver flushes after each batch, before it waits for the engine again, so no frame waits
    for a message that has not arrived; a reader that fell behind catches up in fewer writes."""

    __slots__ = ("response", "_frames")

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self._frames: list[bytes] = []

    def add(self, frame: bytes) -> None:
        self._frames.append(frame)

    def take(self) -> bytes:
        frames, self._frames = self._frames, []
        return frames[0] if len(frames) == 1 else b"".join(frames)

    async def flush(self) -> None:
        if self._frames:
            await send(self.response, self.take())


async def start_engine_sse(request: web.Request, request_id: str, engine: EngineCall) -> FrameBuffer:
    return FrameBuffer(await start_sse(request, {REQUEST_ID_HEADER: request_id,
                                                 ROUTED_WORKER_HEADER: engine.worker.url}))


async def run_stream(out: FrameBuffer, engine: EngineCall, events: Awaitable[None], api: str = "openai") -> None:
    """Await `events` (which adds the stream's frames), then [DONE] (OpenAI streams; an Anthropic
    stream ends with its own message_stop). An engine failure mid-stream ends with the client's API's
    error event; a client that left ends it quietly (the caller's cleanup aborts the engine call)."""
    try:
        await events
        if api == "openai":
            out.add(DONE_FRAME)
        await out.flush()
        await out.response.write_eof()
    except grpc.aio.AioRpcError as exc:
        engine.broke_off()
        message = f"Worker {engine.worker.url} failed mid-stream: {exc.code().name} {exc.details() or ''}".rstrip()
        await end_stream(out.response, out.take() + stream_error_frame(api, message, code="worker_stream_failed"))
    except ClientGone:
        engine.attempt.client_left()
