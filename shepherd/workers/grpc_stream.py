"""Generate streams on the gateway's own HTTP/2 connection to a gRPC worker (h2), not through grpc.aio.

Why: grpc.aio hands over one message per `read()`, each through a completion queue, a poller thread
and a wake-up of the event loop: about 100 us of CPU per streamed token, three times what the HTTP
path spends relaying the same token. Here the bytes of every message that has arrived are parsed
in one `data_received`, so a reader that fell behind gets all of them at once (`ready()`) and
detokenizes and writes them together, as the HTTP path relays several SSE events in one read.
The unary RPCs (health, info, loads, abort, embed) stay on grpc.aio.

Semantics follow grpc.aio where the gateway relies on them: `read()` returns a message or
`grpc.aio.EOF`, and failures are `grpc.aio.AioRpcError` with the status the server sent (trailers
or trailers-only), UNAVAILABLE when the connection fails or is lost, DEADLINE_EXCEEDED past the
deadline (also sent as `grpc-timeout`), CANCELLED after `cancel()` (which resets the stream).
Flow control bounds what is held: a stream's window is returned only as its messages are read.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

log = logging.getLogger("shepherd.grpc")

CONNECT_TIMEOUT = 10.0
MAX_MESSAGE = 256 * 1024 * 1024  # as the grpc.aio channel's limit
_STREAM_WINDOW = 1 << 20  # per stream: what a worker may send ahead of a reader that does not read
_CONNECTION_WINDOW = 16 << 20
_HTTP_TO_GRPC = {400: grpc.StatusCode.INTERNAL, 401: grpc.StatusCode.UNAUTHENTICATED,
                 403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.UNIMPLEMENTED,
                 429: grpc.StatusCode.UNAVAILABLE, 502: grpc.StatusCode.UNAVAILABLE,
                 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.UNAVAILABLE}  # gRPC's HTTP mapping
_RESET_TO_GRPC = {h2.errors.ErrorCodes.CANCEL: grpc.StatusCode.CANCELLED,
                  h2.errors.ErrorCodes.REFUSED_STREAM: grpc.StatusCode.UNAVAILABLE,
                  h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: grpc.StatusCode.RESOURCE_EXHAUSTED,
                  h2.errors.ErrorCodes.INADEQUATE_SECURITY: grpc.StatusCode.PERMISSION_DENIED}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def _keepalive(sock: socket.socket) -> None:
    """The grpc.aio channel's keepalive (a probe after 30 s of silence, given up after 10 s), done by
    the kernel: a worker that vanished without closing fails its streams instead of leaving them
    to their deadlines; unacknowledged writes give up after 10 s too."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 1),
                          ("TCP_USER_TIMEOUT", 10_000)):
        if hasattr(socket, option):  # Linux; elsewhere the system's keepalive timing
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection; its streams are `GenerateStream`s, keyed by stream id."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.streams: dict[int, GenerateStream] = {}
        self.transport: asyncio.Transport | None = None
        self.usable = True  # False after GOAWAY or loss: no new streams
        self._window_waiters: list[asyncio.Future[None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _keepalive(sock)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_CONNECTION_WINDOW - 65_535)
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(f"HTTP/2 protocol error from the worker: {exc}")
            if self.transport is not None:
                self.transport.close()
            return
        touched: set[GenerateStream] = set()
        for event in events:
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.DataReceived):
                if stream is None:  # a stream we left: give its window back at once
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    continue
                stream.on_data(event.data, event.flow_controlled_length)
                touched.add(stream)
            elif isinstance(event, h2.events.WindowUpdated):
                self._wake_senders()
            elif stream is None:
                if isinstance(event, h2.events.ConnectionTerminated):
                    self._goaway(event.last_stream_id)
            elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                stream.on_headers(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                stream.on_end()
                touched.add(stream)
            elif isinstance(event, h2.events.StreamReset):
                code = _RESET_TO_GRPC.get(event.error_code, grpc.StatusCode.INTERNAL)  # type: ignore[call-overload]
                stream.fail(rpc_error(code, f"stream reset by the worker ({event.error_code!r})"))
                touched.add(stream)
        for stream in touched:
            stream.wake()
        self.flush()

    def _goaway(self, last_stream_id: int | None) -> None:
        self.usable = False
        for stream_id, stream in list(self.streams.items()):
            if last_stream_id is not None and stream_id > last_stream_id:
                stream.fail(rpc_error(grpc.StatusCode.UNAVAILABLE, "the worker is going away (GOAWAY)"))
                stream.wake()

    def _fail_all(self, details: str) -> None:
        self.usable = False
        for stream in list(self.streams.values()):
            stream.fail(rpc_error(grpc.StatusCode.UNAVAILABLE, details))
            stream.wake()
        self.streams.clear()
        self._wake_senders()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail_all(f"connection to the worker lost{f': {exc}' if exc else ''}")

    def _wake_senders(self) -> None:
        waiters, self._window_waiters = self._window_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def send_body(self, stream_id: int, body: bytes) -> None:
        """The request message, as the flow-control windows allow, then END_STREAM."""
        view = memoryview(body)
        while True:
            if not self.usable or self.transport is None:
                raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection to the worker lost while sending")
            size = min(len(view), self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if size or not view:
                self.h2.send_data(stream_id, bytes(view[:size]), end_stream=size == len(view))
                self.flush()
                view = view[size:]
                if not view:
                    return
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._window_waiters.append(waiter)
            await waiter


class StreamChannel:
    """The Generate streams of one worker, multiplexed on one HTTP/2 connection (opened when needed,
    again after it was lost)."""

    def __init__(self, target: str) -> None:
        self.target = target  # host:port
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._closed = False

    def open(self, path: str, request: bytes, timeout: float | None, metadata: Sequence[tuple[str, str]] | None,
             deserialize: Callable[[bytes], Any]) -> GenerateStream:
        """A stream that starts at its first `read()` (like a grpc.aio call, it cannot fail here)."""
        return GenerateStream(self, path, request, timeout, metadata, deserialize)

    async def connection(self, wait: float) -> _Connection:
        if self._closed:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "the channel is closed")
        current = self._connection
        if current is not None and current.usable and current.transport is not None:
            return current
        if self._connecting is None:  # one connect for every stream that waits on it
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.wait_for(asyncio.shield(connecting), wait)
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, f"no connection to {self.target} in time") from None

    async def _connect(self) -> _Connection:
        host, _, port = self.target.rpartition(":")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, connection = await asyncio.get_running_loop().create_connection(
                    _Connection, host.strip("[]"), int(port))
        except (OSError, TimeoutError) as exc:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"failed to connect to {self.target}: {exc}") from None
        finally:
            self._connecting = None
        if self._closed:
            assert connection.transport is not None
            connection.transport.close()
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "the channel is closed")
        self._connection = connection
        return connection

    async def close(self) -> None:
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None:
            connection.h2.close_connection()
            connection.flush()
            connection.transport.close()


class GenerateStream:
    """One server-streaming call: every whole message that arrived is parsed and waits in `_messages`."""

    __slots__ = ("_channel", "_path", "_request", "_timeout", "_metadata", "_deserialize", "_connection",
                 "_stream_id", "_messages", "_buffer", "_padding", "_unacked", "_status", "_details", "_error",
                 "_ended", "_waiter", "_timer", "_started", "_http_status")

    def __init__(self, channel: StreamChannel, path: str, request: bytes, timeout: float | None,
                 metadata: Sequence[tuple[str, str]] | None, deserialize: Callable[[bytes], Any]) -> None:
        self._channel = channel
        self._path = path
        self._request = request
        self._timeout = timeout
        self._metadata = metadata or ()
        self._deserialize = deserialize
        self._connection: _Connection | None = None
        self._stream_id = 0
        self._messages: collections.deque[tuple[Any, int]] = collections.deque()  # (message, wire bytes)
        self._buffer = bytearray()
        self._unacked = 0
        self._status: grpc.StatusCode | None = None
        self._details = ""
        self._http_status = 0
        self._error: grpc.aio.AioRpcError | None = None
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = False

    async def _start(self) -> None:
        self._started = True
        loop = asyncio.get_running_loop()
        if self._timeout is not None:
            self._timer = loop.call_later(self._timeout, self._expire)
        try:
            connection = await self._channel.connection(CONNECT_TIMEOUT if self._timeout is None
                                                        else min(CONNECT_TIMEOUT, self._timeout))
        except grpc.aio.AioRpcError as exc:
            self.fail(exc)
            return
        if self._error is not None:  # expired or cancelled while connecting
            return
        self._connection = connection
        conn = connection.h2
        try:
            self._stream_id = stream_id = conn.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:  # a connection's ids run out: the next stream opens another
            connection.usable = False
            self.fail(rpc_error(grpc.StatusCode.UNAVAILABLE, "the connection ran out of stream ids"))
            return
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", self._path.encode()),
                   (b":authority", self._channel.target.encode()), (b"content-type", b"application/grpc"),
                   (b"te", b"trailers")]
        if self._timeout is not None:
            headers.append((b"grpc-timeout", b"%dm" % max(1, int(self._timeout * 1000))))
        headers += [(key.encode(), value.encode()) for key, value in self._metadata]
        connection.streams[stream_id] = self
        try:
            conn.send_headers(stream_id, headers)
            body, self._request = len(self._request).to_bytes(4, "big") + self._request, b""
            await connection.send_body(stream_id, b"\0" + body)
        except grpc.aio.AioRpcError as exc:
            self.fail(exc)
        except h2.exceptions.TooManyStreamsError:  # the worker's SETTINGS_MAX_CONCURRENT_STREAMS: it is busy
            self.fail(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "the worker takes no more concurrent streams"))
        except h2.exceptions.H2Error as exc:  # e.g. the stream was reset while we sent
            if self._error is None:
                self.fail(rpc_error(grpc.StatusCode.INTERNAL, f"sending the request failed: {exc}"))

    # Events from the connection.
    def on_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        for key, value in headers:
            if key == b":status":
                self._http_status = int(value)
            elif key == b"grpc-status":
                self._status = _CODES.get(int(value), grpc.StatusCode.UNKNOWN)
            elif key == b"grpc-message":
                self._details = unquote(value.decode("utf-8", "replace"))

    def on_data(self, data: bytes, flow_length: int) -> None:
        padding = flow_length - len(data)
        if padding and self._connection is not None:
            self._connection.h2.acknowledge_received_data(padding, self._stream_id)
        buffer = self._buffer
        buffer += data
        start, size = 0, len(buffer)
        while size - start >= 5:
            length = int.from_bytes(buffer[start + 1:start + 5], "big")
            if buffer[start]:
                self._abandon(rpc_error(grpc.StatusCode.INTERNAL, "the worker sent a compressed message"))
                return
            if length > MAX_MESSAGE:
                self._abandon(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, f"a message of {length} bytes"))
                return
            end = start + 5 + length
            if end > size:
                break
            try:
                message = self._deserialize(bytes(buffer[start + 5:end]))
            except Exception as exc:  # noqa: BLE001 - whatever the parser raises is the worker's fault
                self._abandon(rpc_error(grpc.StatusCode.INTERNAL, f"a message that does not parse: {exc}"))
                return
            self._messages.append((message, end - start))
            start = end
        if start:
            del buffer[:start]

    def on_end(self) -> None:
        self._ended = True
        self._forget()
        if self._error is not None:
            return
        if self._buffer:
            self._error = rpc_error(grpc.StatusCode.INTERNAL, "the stream ended inside a message")
        elif self._status is None:
            code = _HTTP_TO_GRPC.get(self._http_status, grpc.StatusCode.UNKNOWN)
            self._error = rpc_error(code, f"the stream ended without a status (HTTP {self._http_status})")
        elif self._status is not grpc.StatusCode.OK:
            self._error = rpc_error(self._status, self._details)

    def fail(self, error: grpc.aio.AioRpcError) -> None:
        if self._error is None and not (self._ended and self._status is grpc.StatusCode.OK):
            self._error = error
        self._ended = True
        self._forget()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The reader's side.
    async def read(self) -> Any:
        """The next message, or grpc.aio.EOF after a clean end. Raises AioRpcError."""
        if not self._started:
            await self._start()
        while not self._messages:
            if self._ended or self._error is not None:
                if self._error is not None:
                    raise self._error
                return grpc.aio.EOF
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                self.cancel()
                raise
            finally:
                self._waiter = None
        message, size = self._messages.popleft()
        self._consumed(size)
        return message

    def ready(self) -> list[Any]:
        """Every message that already arrived (maybe none), without waiting."""
        if not self._messages:
            return []
        messages = self._messages
        self._messages = collections.deque()
        self._consumed(sum(size for _, size in messages))
        return [message for message, _ in messages]

    def cancel(self) -> bool:
        if self._ended:
            return False
        connection, stream_id = self._connection, self._stream_id
        self.fail(rpc_error(grpc.StatusCode.CANCELLED, "cancelled by the gateway"))
        if connection is not None and stream_id and connection.transport is not None:
            try:
                connection.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.H2Error:
                pass  # already closed on the wire
            connection.flush()
        self.wake()
        return True

    def _consumed(self, size: int) -> None:
        """Give the window of read messages back (h2 sends WINDOW_UPDATE once enough has gathered)."""
        connection = self._connection
        if connection is None or not self._stream_id:
            return
        try:
            connection.h2.acknowledge_received_data(size, self._stream_id)
        except h2.exceptions.H2Error:
            return  # the stream closed meanwhile
        connection.flush()

    def _expire(self) -> None:
        self._timer = None
        if not self._ended:
            self.cancel()
            self._error = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _abandon(self, error: grpc.aio.AioRpcError) -> None:
        self.cancel()
        self._error = error

    def _forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        connection = self._connection
        if connection is not None and connection.streams.get(self._stream_id) is self:
            del connection.streams[self._stream_id]
