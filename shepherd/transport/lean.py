"""The lean transport: an HTTP/1.1 client for the proxy's hot path, with a keep-alive pool per worker origin.

The gateway forwards bodies it never inspects, so it needs far less than a general HTTP client:
one write per request, a C parser (httptools, llhttp) for the response, and full control over the
connection's fate. Profiling put aiohttp's ClientSession at about a third of the gateway's CPU per
request; this client does the same job for a fraction of that.

Lifecycle rules:
* a connection goes back to the pool only after a complete response that allows keep-alive;
* closing a response early (client gone, timeout, error) aborts its connection, which tells the
  engine at once that nobody is listening;
* a pooled connection the server closed while idle is retried once on a fresh connection, and only
  when not a single response byte arrived.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from shepherd.transport.errors import UpstreamError, UpstreamTimeout

_HIGH_WATER = 1 << 20  # pause reading from the worker when this much body is buffered
_LOW_WATER = 1 << 18
# Bounds on a response head, like the server side's (aiohttp: 128 headers): a worker that sends
# headers forever must not grow the gateway's memory.
MAX_RESPONSE_HEADERS = 128
MAX_RESPONSE_HEAD_BYTES = 64 * 1024


class _HeadTooLarge(UpstreamError):
    """The worker's response head is over the bounds."""


class _StaleConnection(UpstreamError):
    """A reused connection was closed before any response byte: safe to resend."""


class Origin:
    """scheme://host:port of a worker, parsed once."""

    __slots__ = ("scheme", "host", "port", "ssl", "host_header", "key")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = 443 if parts.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.key = (self.scheme, self.host, self.port)


class UpstreamResponse:
    """The head of a worker's response plus a body that is read whole or as it arrives."""

    __slots__ = ("status", "headers", "content_length", "_conn", "_chunks", "_buffered", "_complete", "_error",
                 "_waiter", "_released")

    def __init__(self, conn: _Connection) -> None:
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content_length: int | None = None
        self._conn: _Connection | None = conn
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False

    # -- fed by the connection ----------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > _HIGH_WATER and self._conn is not None:
            self._conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._complete:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the proxy --------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def body_done(self) -> bool:
        return self._complete and not self._chunks

    @property
    def body_ready(self) -> bool:
        return bool(self._chunks) or self._complete

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _take(self) -> bytes:
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._conn is not None:
            self._conn.resume_reading()
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; raises UpstreamError if the worker breaks off."""
        while True:
            if self._chunks:
                yield self._take()
            elif self._complete:
                self.release()
                return
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body. With `limit`, stop (and raise ValueError) once more than that arrived."""
        parts: list[bytes] = []
        size = 0
        while True:
            if self._chunks:
                # Move what arrived out of the flow-controlled buffer, which resumes reading:
                # a body above the high-water mark must not wait for a reader that never comes.
                data = self._take()
                parts.append(data)
                size += len(data)
                if limit is not None and size > limit:
                    raise ValueError("response body over the limit")
            elif self._complete:
                break
            elif self._error is not None:
                raise self._error
            else:
                await self._wait()
        self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        """Give the connection back if the response is complete; abort it otherwise."""
        if self._released:
            return
        self._released = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.response_done(reusable=self._complete)

    close = release


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a worker; serves one request at a time."""

    def __init__(self, pool: LeanTransport, origin: Origin) -> None:
        self._pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop  # set in connection_made
        self._parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._header_list: list[tuple[str, str]] = []
        self._bytes_received = 0
        self._head_bytes = 0  # bytes of the current response before its head was complete
        self._in_head = False
        self._keep_alive = True
        self._trailing = False  # bytes after the complete response are being discarded
        self._paused = False
        # The exchange's deadline is enforced by one lazily re-armed timer: arming and cancelling a
        # timer per request cost more than the rest of `send`. The timer stays armed across
        # requests; when it fires before the current deadline it re-arms for it (see _on_timer).
        self._deadline: float | None = None  # the current exchange's, None between exchanges
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when `_timer` fires
        self.idle_since = time.monotonic()
        self.requests_served = 0
        self.closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Kept: on Python 3.11 every asyncio.get_running_loop() is a getpid syscall, and `send` and
        # `request` need the loop on every exchange.
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self._bytes_received += len(data)
        if self.response is None:  # bytes nobody asked for: the connection cannot be trusted
            self.abort()
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, _HeadTooLarge) else
                       UpstreamError(f"malformed response from the worker: {exc}"))
            self.abort()
            return
        if self._in_head and self._head_bytes > MAX_RESPONSE_HEAD_BYTES:  # still no end of the head
            self._fail(_HeadTooLarge(f"the worker's response head exceeds {MAX_RESPONSE_HEAD_BYTES} bytes"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        response = self.response
        if response is not None and not response.complete:
            if self._head is not None and not self._head.done() and self._bytes_received == 0 \
                    and self.requests_served > 0:
                self._fail(_StaleConnection("the pooled connection was closed by the worker"))
            elif response.status and response.content_length is None and not self._chunked():
                response._finish()  # a close-delimited body ends with the connection
            else:
                self._fail(UpstreamError(f"the worker closed the connection mid-response ({exc or 'EOF'})"))
        self._cancel_timer()

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        response = self.response
        if response is not None and response.complete:
            # A second response after the one we asked for: the worker is out of step with us.
            # None of it is read, and the connection is not reused.
            self._keep_alive = False
            self._trailing = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailing:
            return
        if len(self._header_list) >= MAX_RESPONSE_HEADERS:
            raise _HeadTooLarge(f"the worker sent more than {MAX_RESPONSE_HEADERS} response headers")
        self._header_list.append((name.decode("latin-1"), value.decode("utf-8", "replace")))

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        if self._trailing:
            return
        self._in_head = False
        response.status = self._parser.get_status_code()
        headers: CIMultiDict[str] = CIMultiDict(self._header_list)
        response.headers = CIMultiDictProxy(headers)
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            response.content_length = int(length)
        self._keep_alive = self._parser.should_keep_alive()
        if self._head is not None and not self._head.done():
            self._head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self.response is not None and not self._trailing:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None and not self._trailing:
            self.response._finish()
        self._deadline = None

    # -- request ------------------------------------------------------------------------------

    def _chunked(self) -> bool:
        assert self.response is not None
        return "chunked" in self.response.headers.get("transfer-encoding", "").lower()

    def send(self, head: bytes, body: bytes | None, deadline: float | None) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        loop = self.loop
        self.response = UpstreamResponse(self)
        self._head = loop.create_future()
        self._header_list = []
        self._bytes_received = 0
        self._head_bytes = 0
        self._in_head = True
        self._trailing = False
        self._deadline = deadline
        if deadline is not None and (self._timer is None or self._timer_at > deadline):
            self._arm(loop, deadline)
        if body and len(body) > 65536:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head + body if body else head)
        return self._head

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.closed:  # armed for an exchange that has ended
            return
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:  # armed for an earlier exchange: wait for this one's deadline
            self._arm(loop, deadline)
            return
        self._deadline = None
        self._fail(UpstreamTimeout("the worker did not answer within the request timeout"))
        self.abort()

    def _cancel_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, exc: BaseException) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        if self.response is not None:
            self.response._fail(exc)

    def response_done(self, reusable: bool) -> None:
        self._deadline = None  # the timer stays armed for the next exchange (or fires once, idle)
        self.requests_served += 1
        self.response = None
        self._head = None
        if reusable and self._keep_alive and not self.closed and not self._paused:
            self.idle_since = time.monotonic()
            self._pool._put_idle(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self._pool._forget(self)
            self.transport.abort()


class LeanTransport:
    """Keep-alive connections per worker origin, and the request entry point."""

    def __init__(self, *, connect_timeout: float, idle_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._origins: dict[str, Origin] = {}
        self._reaper: asyncio.TimerHandle | None = None

    def origin(self, base_url: str) -> Origin:
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origins[base_url] = Origin(base_url)
        return origin

    async def request(
        self,
        method: str,
        base_url: str,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes | None,
        total_timeout: float | None,
    ) -> UpstreamResponse:
        """Send a request and return once the response head arrived (the body follows).

        `total_timeout` bounds the whole exchange, body included: past it the connection is aborted
        and whoever is waiting (for the head or for body bytes) gets UpstreamTimeout.
        """
        origin = self.origin(base_url)
        conn = self._take_idle(origin)
        loop = conn.loop if conn is not None else asyncio.get_running_loop()
        deadline = None if total_timeout is None else loop.time() + total_timeout
        head = _encode_head(method, path, origin.host_header, headers, body)
        for _ in range(2):
            if conn is None:
                conn = self._take_idle(origin) or await self._connect(origin, deadline)
            future = conn.send(head, body, deadline)
            try:
                return await future
            except _StaleConnection:
                conn = None  # the idle connection had been closed: resend once on a fresh one
                continue
            except BaseException:
                conn.abort()
                raise
        raise UpstreamError("the worker closed two connections in a row before answering")

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin.key)
        if not idle:
            return None
        cutoff = time.monotonic() - self._idle_timeout
        while idle:
            conn = idle.pop()  # most recently used first: the least likely to be stale
            if not conn.closed and conn.idle_since >= cutoff:
                return conn
            conn.abort()
        return None

    async def _connect(self, origin: Origin, deadline: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = self._connect_timeout
        if deadline is not None:
            timeout = min(timeout, max(0.0, deadline - loop.time()))
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: _Connection(self, origin), origin.host, origin.port,
                                                       ssl=origin.ssl)
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {origin.host_header} timed out") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {origin.host_header}: {exc.strerror or exc}") from None
        self._all.add(conn)
        self._schedule_reaper()
        return conn

    def _put_idle(self, conn: _Connection) -> None:
        self._idle.setdefault(conn.origin.key, []).append(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.origin.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _schedule_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(self._idle_timeout, self._reap)

    def _reap(self) -> None:
        """Close connections idle past the timeout, before the worker closes them under us."""
        self._reaper = None
        cutoff = time.monotonic() - self._idle_timeout
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since < cutoff]:
                idle.remove(conn)
                conn.abort()
        if self._all:
            self._schedule_reaper()

    @property
    def open_connections(self) -> int:
        return len(self._all)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._idle.clear()


def _encode_head(
    method: str, path: str, host: str, headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes | None
) -> bytes:
    # the exact type first: an isinstance against the ABC costs a Python-level call on every request
    items = headers.items() if type(headers) is dict or isinstance(headers, Mapping) else headers
    lines = [f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in items)
    if body is not None:
        lines.append(f"content-length: {len(body)}\r\n")
    lines.append("\r\n")
    # surrogateescape undoes the server's decoding of the client's header bytes exactly
    return "".join(lines).encode("utf-8", "surrogateescape")
