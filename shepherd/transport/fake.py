"""A transport whose workers are Python functions: router tests without processes or sockets.

    transport = FakeTransport()
    transport.route("http://w1", lambda call: FakeReply(200, {"content-type": "application/json"}, [b"{}"]))
    transport.route("http://w2", lambda call: FakeReply.unreachable())

Every call is recorded (`transport.calls`), and every response remembers whether it was read to the
end or aborted (`call.aborted`), which is what a test of "the upstream request was cancelled" needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from multidict import CIMultiDict, CIMultiDictProxy

from shepherd.transport.errors import UpstreamError, UpstreamTimeout


@dataclass
class FakeCall:
    method: str
    base_url: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    aborted: bool = False  # closed before its body was read to the end
    finished: bool = False  # its body was read to the end


@dataclass
class FakeReply:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    chunks: Sequence[bytes] = (b"{}",)
    streamed: bool = False  # no Content-Length: the body is relayed as it arrives
    break_after: int | None = None  # raise UpstreamError after this many chunks
    chunk_delay: float = 0.0
    error: UpstreamError | None = None  # raised instead of a head
    hang: bool = False  # never answer: the request's own timeout ends it (UpstreamTimeout)

    @classmethod
    def unreachable(cls) -> FakeReply:
        return cls(error=UpstreamError("cannot connect (fake)"))

    @classmethod
    def timeout(cls) -> FakeReply:
        return cls(error=UpstreamTimeout("no answer in time (fake)"))


Handler = Callable[[FakeCall], FakeReply]


class FakeResponse:
    def __init__(self, reply: FakeReply, call: FakeCall) -> None:
        self.status = reply.status
        headers = CIMultiDict(reply.headers)
        self.content_length: int | None = None
        if not reply.streamed:
            self.content_length = sum(len(c) for c in reply.chunks)
            headers["content-length"] = str(self.content_length)
        self.headers = CIMultiDictProxy(headers)
        self._reply = reply
        self._call = call
        self.body_done = False
        # The first chunk is here with the head unless the reply paces its chunks.
        self.body_ready = bool(reply.chunks) and not reply.chunk_delay and reply.break_after != 0

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        reply = self._reply
        for index, chunk in enumerate(reply.chunks):
            if reply.break_after is not None and index >= reply.break_after:
                break
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            self.body_done = reply.break_after is None and index == len(reply.chunks) - 1
            yield chunk
        if reply.break_after is not None:
            raise UpstreamError("the worker closed the connection mid-response (fake)")
        self._call.finished = True

    async def read(self, limit: int | None = None) -> bytes:
        parts = [chunk async for chunk in self.iter_chunks()]
        body = b"".join(parts)
        if limit is not None and len(body) > limit:
            raise ValueError("response body over the limit")
        return body

    def close(self) -> None:
        if not self._call.finished:
            self._call.aborted = True


class FakeTransport:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self.calls: list[FakeCall] = []

    def route(self, base_url: str, handler: Handler | FakeReply) -> None:
        self._handlers[base_url.rstrip("/")] = handler if callable(handler) else (lambda call: handler)

    def calls_to(self, base_url: str) -> list[FakeCall]:
        return [c for c in self.calls if c.base_url == base_url.rstrip("/")]

    async def request(
        self,
        method: str,
        base_url: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes | None,
        total_timeout: float | None,
    ) -> FakeResponse:
        call = FakeCall(method, base_url.rstrip("/"), path, dict(headers), body)
        self.calls.append(call)
        await asyncio.sleep(0)
        handler = self._handlers.get(call.base_url)
        if handler is None:
            raise UpstreamError(f"cannot connect to {base_url} (no fake worker there)")
        reply = handler(call)
        if reply.hang:
            try:
                await asyncio.sleep(total_timeout if total_timeout is not None else 3600)
            finally:
                call.aborted = True
            raise UpstreamTimeout("no answer within the request timeout (fake)")
        if reply.error is not None:
            call.aborted = True
            raise reply.error
        return FakeResponse(reply, call)

    async def close(self) -> None:
        return None
