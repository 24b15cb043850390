"""The gateway's side of client connections: aiohttp's server with a few bounds of our own.

* A request head must arrive within `--header-read-timeout-secs` of its first byte (slowloris);
  a connection idle between requests closes after `--idle-connection-timeout-secs` (aiohttp's
  keep-alive timeout, which also covers a connection that never sends a byte).
* A request aiohttp cannot parse (bad header bytes, Content-Length with Transfer-Encoding, an
  HTTP/2 preface on this HTTP/1.1 port) gets the same JSON error body as every other error, and one
  log line at most instead of an ERROR with a traceback.

aiohttp creates one RequestHandler per connection through its Server; the runner below builds a
Server whose handlers are ours.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from shepherd.errors import ERROR_CODE_HEADER, error_body

log = logging.getLogger("shepherd.server")

_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large",
            431: "Request Header Fields Too Large"}


def _raw_error(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response, for a connection that has no request object to answer."""
    body = error_body(status, code, message)
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{ERROR_CODE_HEADER}: {code}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def _reason(exc: BaseException | None, message: str | None) -> str:
    """aiohttp's reason, first line only (the rest quotes the offending bytes)."""
    text = str(getattr(exc, "message", None) or message or exc or "malformed request")
    reason = text.strip().splitlines()[0].rstrip(":")[:200] if text.strip() else "malformed request"
    if reason.startswith("Pause on PRI"):
        return "HTTP/2 is not served on this port (use HTTP/1.1)"
    return reason


class _GatewayRequestHandler(RequestHandler):
    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._last_payload: Any = None  # the body stream of the newest parsed request

    def data_received(self, data: bytes) -> None:
        # Bytes that arrive while no request is parsed or being handled, and after the previous
        # request's body ended, begin a new request head.
        last = self._last_payload
        starts_head = (self._header_timer is None and self._current_request is None and not self._messages
                       and not self._upgraded and (last is None or last.is_eof()))
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._cancel_header_timer()  # a whole head arrived (or a parse error, answered by aiohttp)
            if self._messages:
                self._last_payload = self._messages[-1][1]
        elif starts_head and data and not self._force_close:
            self._header_timer = self._loop.call_later(self._header_timeout, self._header_timed_out)

    def _header_timed_out(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or transport.is_closing() or self._current_request is not None or self._messages:
            return
        log.info("closed a connection from %s: no complete request head within %gs",
                 transport.get_extra_info("peername"), self._header_timeout)
        transport.write(_raw_error(408, "header_read_timeout",
                                   f"The request head did not arrive within {self._header_timeout:g}s"))
        self.force_close()
        transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:  # not the client's doing: keep aiohttp's full report
            super().handle_error(request, status, exc, message)
            code, text = "internal_error", "The gateway hit an internal error"
        else:
            reason = _reason(exc, message)
            level = logging.DEBUG if self._request_count == 1 and isinstance(exc, BadHttpMethod) else logging.INFO
            log.log(level, "rejected a malformed request from %s: %s", request.remote, reason)
            code, text = "invalid_http_request", f"The request is not valid HTTP/1.1: {reason}"
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already started; cannot send the error")
        response = web.Response(status=status, body=error_body(status, code, text), content_type="application/json")
        response.headers[ERROR_CODE_HEADER] = code
        response.force_close()
        return response


class _GatewayServer(web.Server):
    def __init__(self, base: web.Server, header_timeout: float) -> None:
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, loop=base._loop, **base._kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return _GatewayRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections get the bounds above."""

    def __init__(self, app: web.Application, *, header_timeout: float, idle_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=idle_timeout, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        return _GatewayServer(await super()._make_server(), self._header_timeout)
