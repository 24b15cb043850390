"""call_model: a chat body through a router, answered to the gateway instead of the client."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from shepherd.errors import GatewayError
from shepherd.request_keys import REQUEST_ID
from shepherd.routers.common.model_call import ChatStream, call_model
from shepherd.routers.common.sink import open_stream
from shepherd.routers.common.sse import DONE_FRAME, data_frame, stream_error_frame


class FakeRouter:
    """Answers like a routing path: whole, streamed (chunk by chunk), or with an error."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.seen: list[tuple[str, str, Mapping[str, Any] | None]] = []
        self.cancelled = asyncio.Event()

    async def route(self, request: web.Request, upstream_path: str, raw_body: bytes | None,
                    body: Mapping[str, Any] | None, method: str = "POST") -> web.StreamResponse:
        self.seen.append((request.path, upstream_path, body))
        if self.mode == "whole":
            return web.Response(body=orjson.dumps({"object": "chat.completion", "choices": []}))
        if self.mode == "error":
            return web.Response(status=400, body=orjson.dumps({"error": {"message": "bad", "code": "nope"}}))
        if self.mode == "raise":
            raise GatewayError(503, "no_workers", "none")
        response = await open_stream(request, 200, {"Content-Type": "text/event-stream"})
        try:
            for index in range(3):
                await response.write(data_frame({"object": "chat.completion.chunk", "n": index}))
                if self.mode == "slow":
                    await asyncio.sleep(10)
            if self.mode == "broken":
                await response.write(stream_error_frame("openai", "engine died"))
            else:
                await response.write(DONE_FRAME)
            await response.write_eof()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return response


class Context:
    def __init__(self, router: FakeRouter) -> None:
        self.router = router


def _request() -> web.Request:
    request = make_mocked_request("POST", "/v1/responses", headers={"x-test": "1"})
    request[REQUEST_ID] = "req-1"
    return request


async def test_whole_answer_is_a_dict_on_the_chat_path() -> None:
    router = FakeRouter("whole")
    answer = await call_model(Context(router), _request(), {"model": "m", "messages": []})
    assert answer == {"object": "chat.completion", "choices": []}
    assert router.seen == [("/v1/chat/completions", "/v1/chat/completions", {"model": "m", "messages": []})]


async def test_worker_error_keeps_its_status() -> None:
    with pytest.raises(GatewayError) as caught:
        await call_model(Context(FakeRouter("error")), _request(), {"model": "m"})
    assert (caught.value.status, caught.value.code, caught.value.message) == (400, "nope", "bad")
    with pytest.raises(GatewayError) as raised:
        await call_model(Context(FakeRouter("raise")), _request(), {"model": "m"})
    assert raised.value.status == 503


async def test_stream_yields_chunk_dicts() -> None:
    stream = await call_model(Context(FakeRouter("stream")), _request(), {"model": "m", "stream": True})
    assert isinstance(stream, ChatStream)
    assert [chunk["n"] async for chunk in stream] == [0, 1, 2]


async def test_error_frame_mid_stream_raises() -> None:
    stream = await call_model(Context(FakeRouter("broken")), _request(), {"model": "m", "stream": True})
    assert isinstance(stream, ChatStream)
    seen = []
    with pytest.raises(GatewayError) as caught:
        async for chunk in stream:
            seen.append(chunk["n"])
    assert seen == [0, 1, 2] and "engine died" in caught.value.message


async def test_closing_the_stream_cancels_the_routed_request() -> None:
    router = FakeRouter("slow")
    stream = await call_model(Context(router), _request(), {"model": "m", "stream": True})
    assert isinstance(stream, ChatStream)
    async for chunk in stream:
        assert chunk["n"] == 0
        break
    await stream.aclose()
    assert router.cancelled.is_set()


async def test_cancelling_the_caller_cancels_the_routed_request() -> None:
    router = FakeRouter("slow")

    async def consume() -> None:
        stream = await call_model(Context(router), _request(), {"model": "m", "stream": True})
        assert isinstance(stream, ChatStream)
        async for _ in stream:
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(router.cancelled.wait(), 1)
