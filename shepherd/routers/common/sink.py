"""Where a routing path writes a streamed answer: the client's connection, or a gateway-internal reader.

Every path opens its event streams with `open_stream`. A request made by the gateway itself (a model
call, see model_call.py) carries a `StreamSink`; its stream's bytes then go into a bounded queue that
the gateway reads, instead of onto the client's socket. A full queue makes the path wait, so a slow
internal reader holds at most `SINK_DEPTH` chunks, exactly like a slow client's socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web
from multidict import CIMultiDict

from shepherd.routers.common.keepalive import SSE_KEEPALIVE_SECS, KeepAliveStream, keepalive_frame

SINK_DEPTH = 64  # chunks buffered between the path and the internal reader


class StreamSink:
    """The receiving end of one internal request's stream."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(SINK_DEPTH)  # None: the stream ended
        self.opened: asyncio.Future[int] = asyncio.get_running_loop().create_future()  # the stream's status


SINK: web.RequestKey[StreamSink] = web.RequestKey("shepherd_stream_sink", StreamSink)


class CapturedStream(web.StreamResponse):
    """A StreamResponse whose bytes go to a StreamSink (nothing is sent on any socket)."""

    def __init__(self, sink: StreamSink, status: int, headers: Mapping[str, str]) -> None:
        super().__init__(status=status, headers=CIMultiDict(headers))
        self._sink = sink
        self._ended = False

    async def prepare(self, request: web.BaseRequest) -> None:  # type: ignore[override]
        if not self._sink.opened.done():
            self._sink.opened.set_result(self.status)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._ended:
            raise RuntimeError("write after the end of the stream")
        if data:
            await self._sink.queue.put(bytes(data))

    async def write_eof(self, data: bytes = b"") -> None:
        if self._ended:
            return
        if data:
            await self._sink.queue.put(bytes(data))
        self._ended = True
        await self._sink.queue.put(None)

    async def drain(self) -> None:
        return None


async def open_stream(request: web.Request, status: int, headers: Mapping[str, str],
                      first_chunk_ready: bool = False) -> web.StreamResponse:
    """Start a streamed answer to `request` (headers sent); write to it, then `write_eof`. A client's
    event stream carries keep-alive frames while it is idle (--sse-keepalive-secs, keepalive.py).

    `first_chunk_ready`: the caller writes its first chunk at once, without awaiting anything, so the
    head goes out with that chunk in one write instead of two; it costs the client no time. Never
    set it for a chunk that has yet to arrive: the client would not see the head until it did."""
    sink = request.get(SINK)
    response: web.StreamResponse
    keepalive = request.config_dict.get(SSE_KEEPALIVE_SECS, 0.0)
    if sink is not None:
        response = CapturedStream(sink, status, headers)
    elif keepalive > 0 and _is_event_stream(headers):
        response = KeepAliveStream(status, headers, keepalive, keepalive_frame(request.path))
    else:
        response = web.StreamResponse(status=status, headers=headers)
    if first_chunk_ready:
        # aiohttp's own switch (web.Response sets it for every body): the head waits in the writer
        # for the first write or write_eof.
        response._send_headers_immediately = False
    await response.prepare(request)
    return response


def _is_event_stream(headers: Mapping[str, str]) -> bool:
    return any(name.lower() == "content-type" and value.startswith("text/event-stream")
               for name, value in headers.items())
