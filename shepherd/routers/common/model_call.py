"""A model call made by the gateway itself: a Chat Completions body through the normal router.

The Responses executor (and the MCP tool loop) call a model the way a client would, so worker
selection, retries, breakers, metrics and every worker's own path apply (HTTP engines, gRPC engines,
providers with their translation), but the answer comes back to the caller instead of going out on
the client's socket:

* `stream` false: the chat completion as a dict;
* `stream` true: a `ChatStream`, an async iterator of chat chunk dicts (`[DONE]` ends it).

Errors are GatewayError with the worker's status (an error chunk mid-stream raises from the
iterator). Cancelling the caller, or closing a ChatStream early, cancels the routed request, which
aborts its upstream request like a client that went away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, cast

import orjson
from aiohttp import web

from shepherd.errors import GatewayError
from shepherd.request_keys import FIRST_CHUNK, LINEAGE, USAGE, WORKER
from shepherd.routers.common.sink import SINK, StreamSink
from shepherd.routers.common.sse import SSEDecoder

CHAT_PATH = "/v1/chat/completions"


class Routes(Protocol):
    """What routes a request (the RouterManager)."""

    async def route(self, request: web.Request, upstream_path: str, raw_body: bytes | None,
                    body: Mapping[str, Any] | None, method: str = "POST") -> web.StreamResponse: ...


class HasRouter(Protocol):
    @property
    def router(self) -> Routes: ...


def _error_from(status: int, payload: bytes) -> GatewayError:
    """A worker's error answer (OpenAI-style body, or anything else) as a GatewayError with its status."""
    code, message = "upstream_error", f"The model answered HTTP {status}"
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        if isinstance(error.get("message"), str):
            message = error["message"]
        if isinstance(error.get("code"), str):
            code = error["code"]
        elif isinstance(error.get("type"), str):
            code = error["type"]
    elif isinstance(error, str):
        message = error
    return GatewayError(status, code, message)


def _whole(response: web.StreamResponse) -> dict[str, Any]:
    body = response.body if isinstance(response, web.Response) else None
    payload = body if isinstance(body, bytes) else b""
    if response.status >= 400:
        raise _error_from(response.status, payload)
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise GatewayError(502, "upstream_invalid_response", "The model's answer is not JSON") from None
    if not isinstance(document, dict):
        raise GatewayError(502, "upstream_invalid_response", "The model's answer is not a JSON object")
    return document


class ChatStream:
    """The chunks of a streamed model call, as dicts. Iterate it to the end, or `aclose()` it."""

    def __init__(self, task: asyncio.Task[web.StreamResponse], sink: StreamSink, origin: web.Request,
                 sub: web.Request) -> None:
        self._task = task
        self._sink = sink
        self._origin = origin
        self._sub = sub
        self.status = sink.opened.result()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        decoder = SSEDecoder()
        try:
            while True:
                data = await self._next()
                events = decoder.finish() if data is None else decoder.feed(data)
                for event in events:
                    if event.data == "[DONE]":
                        continue
                    try:
                        chunk = orjson.loads(event.data)
                    except orjson.JSONDecodeError:
                        raise GatewayError(502, "upstream_invalid_response",
                                           "The model's stream carried an event that is not JSON") from None
                    if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
                        raise _error_from(502, orjson.dumps(chunk))
                    if isinstance(chunk, dict):
                        yield chunk
                if data is None:
                    break
            await self._task  # the path's own failure, if it had one
        finally:
            await self.aclose()

    async def _next(self) -> bytes | None:
        """The next chunk, or None at the end (the path also ends when its task finishes)."""
        queue = self._sink.queue
        if not queue.empty():
            return queue.get_nowait()
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            getter.cancel()
            raise
        if getter.done():
            return getter.result()
        getter.cancel()
        return None if queue.empty() else queue.get_nowait()

    async def aclose(self) -> None:
        """Stop: the routed request is cancelled (its upstream request aborted) if it still runs."""
        _carry_back(self._sub, self._origin)
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, GatewayError):
                await self._task


def _carry_back(sub: web.Request, origin: web.Request) -> None:
    """What the access log and status page read about the served request (the time to first byte is
    the first model call's: a tool loop's later calls do not move it)."""
    for key in (WORKER, USAGE):
        if key in sub:
            origin[key] = sub[key]  # type: ignore[index]
    if FIRST_CHUNK in sub and FIRST_CHUNK not in origin:
        origin[FIRST_CHUNK] = sub[FIRST_CHUNK]


async def call_model(context: HasRouter, request: web.Request, chat_body: Mapping[str, Any],
                     path: str = CHAT_PATH, lineage: str | None = None) -> dict[str, Any] | ChatStream:
    """Route `chat_body` (to `path`, Chat Completions by default) as part of `request`; `lineage` is
    what the call continues (a Responses conversation or chain), the sticky key without a routing key.

    Returns the answer as a dict, or a ChatStream when the body has `stream: true` and the worker
    started a stream. Raises GatewayError (the worker's status for a worker's error answer)."""
    sub = cast(web.Request, request.clone(rel_url=path))  # headers, request id and trace span carry over
    sink = StreamSink()
    sub[SINK] = sink
    if lineage is not None:
        sub[LINEAGE] = lineage
    raw = orjson.dumps(chat_body)
    task = asyncio.ensure_future(context.router.route(sub, path, raw, chat_body))
    try:
        waiting: set[asyncio.Future[Any]] = {task, sink.opened}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise
    if sink.opened.done():
        _carry_back(sub, request)  # the worker is known once its stream started
        stream = ChatStream(task, sink, request, sub)
        if stream.status >= 400:
            payload = b""
            async for part in _raw(stream):
                payload += part
            raise _error_from(stream.status, payload)
        return stream
    sink.opened.cancel()
    _carry_back(sub, request)
    return _whole(task.result())


async def _raw(stream: ChatStream) -> AsyncIterator[bytes]:
    """A failed stream's bytes (its error body), at most 64 KiB."""
    size = 0
    try:
        while (data := await stream._next()) is not None and size < 1 << 16:
            size += len(data)
            yield data
    finally:
        await stream.aclose()
