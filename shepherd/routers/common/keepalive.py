"""SSE keep-alive frames (--sse-keepalive-secs): an event stream to a client that has carried nothing for
that long gets a frame that every SSE reader skips, so an idle-timeout proxy in front of the gateway does
not cut a stream that is waiting on a long prefill, a slow tool or a slow worker.

Every path opens its client streams through `open_stream` (sink.py), which gives event streams this
response class; the paths themselves know nothing of it. The frame is an SSE comment on the
OpenAI-shaped endpoints and Anthropic's `ping` event on /v1/messages (as SMG).

A frame is written only between events (the last write ended with a blank line, so it cannot split one),
never while a write is under way, and not while the client has not read what was sent already (nothing
is gained, and the gateway must not buffer frames for a client that does not read).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter

from shepherd.errors import flavor_for_path

COMMENT_FRAME = b": keep-alive\n\n"
PING_FRAME = b'event: ping\ndata: {"type": "ping"}\n\n'

SSE_KEEPALIVE_SECS: web.AppKey[float] = web.AppKey("shepherd_sse_keepalive_secs", float)  # 0: none


def keepalive_frame(path: str) -> bytes:
    return PING_FRAME if flavor_for_path(path) == "anthropic" else COMMENT_FRAME


class KeepAliveStream(web.StreamResponse):
    """A client event stream that carries `frame` after `every` seconds without a write."""

    def __init__(self, status: int, headers: Mapping[str, str], every: float, frame: bytes,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(status=status, headers=headers)
        self._every = every
        self._frame = frame
        self._clock = clock
        self._last = 0.0  # when the last write finished
        self._between_events = True
        self._writing = False
        self._timer: asyncio.TimerHandle | None = None
        self._ping: asyncio.Task[None] | None = None
        self.keepalives = 0  # frames sent (tests and logs read it)

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        first = not self.prepared  # aiohttp prepares again once the handler returned
        writer = await super().prepare(request)
        if first:
            self._last = self._now()
            self._arm(self._last + self._every)
        return writer

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._writing = True
        try:
            await super().write(data)
        finally:
            self._writing = False
        if len(data):
            tail = bytes(data[-4:])
            self._between_events = tail.endswith(b"\n\n") or tail == b"\r\n\r\n"
            self._last = self._now()

    async def write_eof(self, data: bytes = b"") -> None:
        self._stop()
        await super().write_eof(data)

    def due(self) -> None:
        """The timer fired: a frame if the stream has been silent for the whole period, else wait on."""
        self._timer = None
        if not self._open():
            return  # ended, or the client left: nothing more to keep alive
        if self._now() >= self._last + self._every:
            self._ping = asyncio.get_running_loop().create_task(self._send())  # it re-arms the timer
        else:
            self._rearm()

    async def _send(self) -> None:
        try:
            writer, transport = self._payload_writer, self._transport()
            if (isinstance(writer, StreamWriter) and transport is not None and not self._writing
                    and self._between_events and not transport.get_write_buffer_size()):
                # drain=False: the frame goes to the transport at once, so it never interleaves with, or
                # waits alongside, a write of the path's own
                await writer.write(self._frame, drain=False)
                self.keepalives += 1
                self._last = self._now()
        except (ConnectionError, RuntimeError):
            return  # the client left; the path finds out on its next write
        finally:
            self._ping = None
        if self._open():
            self._rearm()

    def _transport(self) -> asyncio.Transport | None:
        transport = self._req.transport if self._req is not None else None
        return transport if transport is not None and not transport.is_closing() else None  # type: ignore[return-value]

    def _open(self) -> bool:
        return not self._eof_sent and self._transport() is not None

    def _rearm(self) -> None:
        """Wake when the stream will have been silent for a whole period (a period from now, when a frame
        was due but could not be sent)."""
        now = self._now()
        at = self._last + self._every
        self._arm(at if at > now else now + self._every)

    def _arm(self, at: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(max(at - self._now(), 0.0), self.due)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None
