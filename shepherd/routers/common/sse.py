"""Server-sent events: an incremental decoder for upstream streams, encoders for our own, and the one
error frame that ends a stream that broke after it started (in the client's API).

The decoder accepts bytes split anywhere (inside a line, inside a UTF-8 sequence, between `\\r` and
`\\n`) and yields each event once its terminating blank line arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from shepherd.routers.common.sink import open_stream

DONE_FRAME = b"data: [DONE]\n\n"


class SSEEvent(NamedTuple):
    event: str | None  # the `event:` field, None when absent
    data: str  # the `data:` lines joined with "\n"


class SSEDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Events completed by `chunk`; a partial line waits for the next chunk."""
        self._buffer += chunk
        events: list[SSEEvent] = []
        start = 0
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        self._buffer = buffer[start:]
        return events

    def finish(self) -> list[SSEEvent]:
        """The stream ended: a last event without its blank line still counts."""
        events = self.feed(b"\n") if self._buffer else []
        if self._data:
            events.append(self._dispatch())
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch() if self._data or self._event is not None else None
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def _dispatch(self) -> SSEEvent:
        event = SSEEvent(self._event, "\n".join(self._data))
        self._event = None
        self._data = []
        return event


def data_frame(payload: Any) -> bytes:
    """An OpenAI-style frame: `data: {...}`."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def event_frame(event: str, payload: Any) -> bytes:
    """An Anthropic-style frame: `event: <type>` then `data: {...}`."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def stream_error_frame(api: str, message: str, *, kind: str | None = None,
                       code: str | None = "upstream_stream_error") -> bytes:
    """The last frame of a stream that failed after it started, in the client's API: an Anthropic
    `error` event, or an OpenAI error chunk followed by `[DONE]` (so no client waits for more).
    `kind` is the error's type (a provider's own, when it sent one)."""
    if api == "anthropic":
        return event_frame("error", {"type": "error", "error": {"type": kind or "api_error", "message": message}})
    error = {"message": message, "type": kind or "server_error", "param": None, "code": code}
    return data_frame({"error": error}) + DONE_FRAME


class ClientGone(Exception):
    """The client closed the connection; nobody reads what we would send."""


async def start_sse(request: web.Request, headers: Mapping[str, str]) -> web.StreamResponse:
    """Send the head of an event stream the gateway writes itself."""
    return await open_stream(request, 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                            **headers})


async def send(response: web.StreamResponse, frame: bytes) -> None:
    try:
        await response.write(frame)
    except (ConnectionError, RuntimeError) as exc:  # RuntimeError: writing after the transport closed
        raise ClientGone() from exc


async def end_stream(response: web.StreamResponse, frame: bytes = b"") -> None:
    """Write the last bytes and end the stream; a client already gone is no error here."""
    try:
        if frame:
            await response.write(frame)
        await response.write_eof()
    except (ConnectionError, RuntimeError):
        pass


async def whole_events(chunks: AsyncIterator[bytes], transform: Callable[[bytes], bytes]) -> AsyncIterator[bytes]:
    """Regroup a byte stream into whole SSE events and rewrite each one."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        end = pending.rfind(b"\n\n")
        if end < 0:
            continue
        complete, pending = pending[:end + 2], pending[end + 2:]
        yield b"".join(transform(event + b"\n\n") for event in complete.split(b"\n\n")[:-1])
    if pending:
        yield transform(pending)
