"""The gateway's side of client connections: aiohttp's server with a few bounds of our own.

* A request head must arrive within `--header-read-timeout-secs` of its first byte (slowloris);
  a connection idle between requests closes after `--idle-connection-timeout-secs` (aiohttp's
  keep-alive timeout, which also covers a connection that never sends a byte).
* A request aiohttp cannot parse (bad header bytes, Content-Length with Transfer-Encoding, an
  HTTP/2 preface on this HTTP/1.1 port) gets the same JSON error body as every other error, and one
  log line at most instead of an ERROR with a traceback.

aiohttp creates one RequestHandler per connection through its Server; the runner below builds a
Server whose handlers are ours, and whose requests for an exact route skip the router (ExactRoutes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial, update_wrapper
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMethod
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_urldispatcher import MatchedSubAppResource, PlainResource, PrefixedSubAppResource
from yarl import URL

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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Probe:
    """What the router reads of a request to resolve it: its method and its path."""

    def __init__(self, method: str, path: str) -> None:
        self.method = method
        self.rel_url = URL.build(path=path, encoded=True)


class ExactRoutes:
    """`Application._handle` for requests whose method and request target name one route exactly.

    aiohttp resolves every request through the router and wraps the route's handler in the
    middleware chain again per request; for the inference routes that was some 5% of a proxied
    request's instructions. Here each (method, path) of a route without path parameters is resolved
    once, at start, by the router itself, and its match info and middleware chain are kept; a request
    whose target is exactly that path (no query string, no percent-escapes, no dot segments, nothing
    the router would normalise) gets them from a dict. Anything else, or a request with `Expect`,
    goes through `Application._handle` as before.

    The kept match info is shared by the requests of its route. It has no path parameters to vary,
    and its app is set once; aiohttp's own outermost middleware, which sets and restores the match
    info's current app for sub-applications, is left out (the table is empty when there are any).
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._fallback: Handler = app._handle
        self._routes: dict[tuple[str, str], tuple[Any, Handler]] = {}

    async def build(self) -> None:
        """Fill the table from the frozen router (a router that can still change keeps it empty)."""
        app = self._app
        resources = list(app.router.resources())
        if not app.frozen or any(isinstance(r, PrefixedSubAppResource | MatchedSubAppResource) for r in resources):
            return
        middlewares = list(app.middlewares)
        if any(getattr(m, "__middleware_version__", None) != 1 for m in middlewares):
            return  # an old-style middleware is built per request by aiohttp
        for resource in resources:
            if not isinstance(resource, PlainResource):
                continue
            for route in resource:
                method, path = route.method, resource.canonical
                if method == hdrs.METH_ANY or (method, path) in self._routes:
                    continue
                match_info = await app.router.resolve(_Probe(method, path))  # type: ignore[arg-type]
                if match_info.route is not route or match_info.http_exception is not None:
                    continue  # another resource wins this path: leave it to the router
                match_info.add_app(app)
                match_info.freeze()
                handler: Handler = route.handler
                for middleware in reversed(middlewares):  # as aiohttp chains them: the first is outermost
                    handler = update_wrapper(partial(middleware, handler=handler), handler)
                self._routes[(method, path)] = (match_info, handler)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        entry = self._routes.get((request.method, request.raw_path))
        if entry is None or request.headers.get(hdrs.EXPECT):
            return await self._fallback(request)
        request._match_info, handler = entry
        return await handler(request)


class _GatewayServer(web.Server):
    def __init__(self, base: web.Server, header_timeout: float,
                 request_handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]]) -> None:
        super().__init__(request_handler, request_factory=base.request_factory,
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
        base = await super()._make_server()  # starts and freezes the app
        routes = ExactRoutes(self.app)
        await routes.build()
        # the app's request factory makes web.Requests, which is what `handle` takes
        return _GatewayServer(base, self._header_timeout, routes.handle)  # type: ignore[arg-type]
