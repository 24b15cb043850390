"""SSE keep-alive frames (--sse-keepalive-secs) on the client streams every path opens with open_stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from shepherd.routers.common.keepalive import (
    COMMENT_FRAME,
    PING_FRAME,
    SSE_KEEPALIVE_SECS,
    KeepAliveStream,
)
from shepherd.routers.common.sink import SINK, StreamSink, open_stream

pytestmark = pytest.mark.unit

SSE = {"Content-Type": "text/event-stream"}


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Stream:
    """One stream a test drives: the handler opens it, the test writes to it and ends it."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)
    finish: asyncio.Event = field(default_factory=asyncio.Event)
    response: Any = None


Opener = Callable[[web.Request], Any]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient] = []

    async def start(open_response: Opener, keepalive: float = 0.0) -> tuple[TestClient, Stream]:
        stream = Stream()

        async def handler(request: web.Request) -> web.StreamResponse:
            stream.response = await open_response(request)
            stream.opened.set()
            await stream.finish.wait()
            await stream.response.write_eof()
            return stream.response  # type: ignore[no-any-return]

        app = web.Application()
        app[SSE_KEEPALIVE_SECS] = keepalive
        for path in ("/v1/chat/completions", "/v1/messages"):
            app.router.add_post(path, handler)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client, stream

    yield start
    for client in clients:
        await client.close()


async def _body(client: TestClient, stream: Stream, path: str, drive: Callable[[Any], Any]) -> bytes:
    call = asyncio.ensure_future(client.post(path, data=b"{}"))
    await asyncio.wait_for(stream.opened.wait(), 10)
    await drive(stream.response)
    stream.finish.set()
    response = await asyncio.wait_for(call, 10)
    return await response.read()


async def _ticks() -> None:
    for _ in range(3):  # the frame is written by a task the timer starts
        await asyncio.sleep(0)


async def test_a_silent_stream_carries_a_keepalive_frame_and_a_busy_one_does_not(serve: Any) -> None:
    clock = Clock()

    async def opener(request: web.Request) -> KeepAliveStream:
        response = KeepAliveStream(200, SSE, 10.0, COMMENT_FRAME, clock=clock)
        await response.prepare(request)
        return response

    client, stream = await serve(opener)

    async def drive(response: KeepAliveStream) -> None:
        await response.write(b"data: 1\n\n")
        clock.now += 9.0  # busy: the next event comes before the period is over
        await response.write(b"data: 2\n\n")
        clock.now += 2.0
        response.due()  # the timer armed at the stream's start: 11 s later, but only 2 s of silence
        await _ticks()
        assert response.keepalives == 0
        clock.now += 8.0  # 10 s of silence
        response.due()
        await _ticks()
        assert response.keepalives == 1
        await response.write(b"data: 3\n\n")

    body = await _body(client, stream, "/v1/chat/completions", drive)
    assert body == b"data: 1\n\ndata: 2\n\n" + COMMENT_FRAME + b"data: 3\n\n"


async def test_no_frame_splits_an_event_written_in_parts(serve: Any) -> None:
    clock = Clock()

    async def opener(request: web.Request) -> KeepAliveStream:
        response = KeepAliveStream(200, SSE, 10.0, COMMENT_FRAME, clock=clock)
        await response.prepare(request)
        return response

    client, stream = await serve(opener)

    async def drive(response: KeepAliveStream) -> None:
        await response.write(b'data: {"half": ')
        clock.now += 60.0
        response.due()
        await _ticks()
        assert response.keepalives == 0  # the worker's event is half written
        await response.write(b'"done"}\n\n')
        clock.now += 10.0
        response.due()
        await _ticks()
        assert response.keepalives == 1

    body = await _body(client, stream, "/v1/chat/completions", drive)
    assert body == b'data: {"half": "done"}\n\n' + COMMENT_FRAME


@pytest.mark.parametrize("path, frame", [("/v1/chat/completions", COMMENT_FRAME), ("/v1/messages", PING_FRAME)])
async def test_open_stream_keeps_an_idle_client_stream_alive_in_its_apis_form(serve: Any, path: str,
                                                                              frame: bytes) -> None:
    async def opener(request: web.Request) -> web.StreamResponse:
        return await open_stream(request, 200, SSE)

    client, stream = await serve(opener, keepalive=0.01)
    call = asyncio.ensure_future(client.post(path, data=b"{}"))
    await asyncio.wait_for(stream.opened.wait(), 10)
    assert isinstance(stream.response, KeepAliveStream)
    await stream.response.write(b"data: 1\n\n")
    response = await asyncio.wait_for(call, 10)
    expected = b"data: 1\n\n" + frame + frame  # the event, then frames while the stream stays silent
    assert await asyncio.wait_for(response.content.readexactly(len(expected)), 10) == expected
    stream.finish.set()
    rest = await response.read()
    assert rest == frame * (len(rest) // len(frame))  # nothing but frames after


async def test_internal_streams_plain_bodies_and_a_zero_period_get_no_frames() -> None:
    built: list[type] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("internal"):
            request[SINK] = StreamSink()
        content_type = request.query.get("type", "text/event-stream")
        response = await open_stream(request, 200, {"Content-Type": content_type})
        built.append(type(response))
        return web.Response(text="done") if request.query.get("internal") else response

    for keepalive, query, expected in ((0.0, "", "StreamResponse"), (5.0, "?type=application/json", "StreamResponse"),
                                       (5.0, "?internal=1", "CapturedStream"), (5.0, "", "KeepAliveStream")):
        app = web.Application()
        app[SSE_KEEPALIVE_SECS] = keepalive
        app.router.add_post("/v1/chat/completions", handler)
        async with TestClient(TestServer(app)) as client:
            assert (await client.post("/v1/chat/completions" + query, data=b"{}")).status == 200
        assert built[-1].__name__ == expected
