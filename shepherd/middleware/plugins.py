"""The WASM plugin hooks in the request path (--enable-wasm).

It sits inside the gateway middleware, so it runs after authentication: unauthenticated clients
cannot spend plugin time, and plugins never see the gateway's credentials. It hooks serving routes
only (not health, model list, admin or /metrics). With no plugin attached it costs two attribute
reads per request.

* on-request: the body is read (up to --wasm-max-body-size, else 413) and shown to every attached
  plugin in order; the request the router sees carries their header and body changes.
* on-response: runs on buffered answers only. A streamed answer (SSE, NDJSON, chunked) has left
  before it could be hooked, so it is passed as is.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from shepherd.api.body import read_body
from shepherd.context import AppContext
from shepherd.errors import GatewayError, error_response, flavor_for_path
from shepherd.middleware.auth import CONTROL_PLANE_PREFIXES, is_public
from shepherd.plugins.abi import REQUEST_HOOK, RESPONSE_HOOK, Rejection
from shepherd.plugins.chain import ChainResult, run_request_chain, run_response_chain, skip_chain
from shepherd.plugins.registry import Plugin, PluginRegistry
from shepherd.plugins.runtime import PluginFailure, RuntimeBusy
from shepherd.request_keys import RAW_BODY, REQUEST_ID

_STREAMING_TYPES = ("text/event-stream", "application/x-ndjson")


def hooks_route(request: web.Request) -> bool:
    path = request.path
    if is_public(path) or path.startswith(CONTROL_PLANE_PREFIXES) or path == "/metrics":
        return False
    return request.match_info.route.resource is not None  # unknown paths get their 404 unhooked


def plugin_middleware(context: AppContext) -> Any:
    plugins = context.plugins
    assert plugins is not None
    max_body = min(plugins.config.max_body_size, context.config.max_payload_size)

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        request_chain, response_chain = plugins.request_chain, plugins.response_chain
        if not (request_chain or response_chain) or not hooks_route(request):
            return await handler(request)
        routed = request
        result: ChainResult | None = None
        if request_chain:
            try:
                result = await _on_request(plugins, request, request_chain, max_body)
            except RuntimeBusy:
                _busy(request_chain, REQUEST_HOOK)
        if result is not None:
            if result.failure is not None:
                plugin, failure = result.failure
                raise GatewayError(503, "plugin_failed",
                                   f"Plugin {plugin.spec.name!r} failed ({failure.kind}): {failure}")
            if result.rejection is not None:
                return _rejection_response(request.path, *result.rejection)
            if result.changed:
                routed = _rebuilt(request, result.headers, result.body.encode())
        try:
            response = await handler(routed)
        finally:
            if routed is not request:
                for key, value in routed.items():  # what the router noted (model, worker) is logged outside
                    request[key] = value
        if response_chain and _hookable(response):
            try:
                return await _on_response(plugins, request, response, response_chain, max_body)
            except RuntimeBusy:
                _busy(response_chain, RESPONSE_HOOK)
        return response

    return middleware


async def _on_request(plugins: PluginRegistry, request: web.Request, chain: tuple[Plugin, ...],
                      max_body: int) -> ChainResult:
    raw = await read_body(request, max_body)
    if len(raw) > max_body:  # a chunked body carries no Content-Length to refuse it by
        raise GatewayError(413, "request_body_too_large",
                           f"The request body exceeds the {max_body}-byte limit for plugin hooks")
    try:
        body = raw.decode()
    except UnicodeDecodeError:
        raise GatewayError(400, "invalid_json", "The request body is not valid UTF-8") from None
    headers = CIMultiDict(request.headers)
    method, path, query, request_id = request.method, request.path, request.query_string, request[REQUEST_ID]
    return await plugins.runtime.run(
        lambda: run_request_chain(chain, method, path, query, headers, body, request_id))


def _busy(chain: tuple[Plugin, ...], hook: str) -> None:
    blocker = skip_chain(chain, hook)
    if blocker is not None:
        raise GatewayError(503, "plugin_busy", f"Plugin {blocker.spec.name!r} could not run: every plugin thread is "
                           "busy", headers={"Retry-After": "1"})


def _hookable(response: web.StreamResponse) -> bool:
    if response.prepared or not isinstance(response, web.Response):
        return False
    if not isinstance(response.body, bytes | bytearray):
        return False
    return not response.content_type.startswith(_STREAMING_TYPES) and not response.chunked


async def _on_response(plugins: PluginRegistry, request: web.Request, response: web.Response,
                       chain: tuple[Plugin, ...], max_body: int) -> web.StreamResponse:
    raw = bytes(response.body)  # type: ignore[arg-type]
    unreadable = None
    body = ""
    if len(raw) > max_body:
        unreadable = PluginFailure("body_too_large", f"the response body exceeds {max_body} bytes")
    else:
        try:
            body = raw.decode()
        except UnicodeDecodeError:
            unreadable = PluginFailure("body_not_utf8", "the response body is not UTF-8 text")
    headers = CIMultiDict(response.headers)
    status, request_id = response.status, request[REQUEST_ID]
    result = await plugins.runtime.run(
        lambda: run_response_chain(chain, status, headers, body, request_id, unreadable))
    if result.failure is not None:
        plugin, failure = result.failure
        raise GatewayError(502, "plugin_failed", f"Plugin {plugin.spec.name!r} failed on the response "
                                                 f"({failure.kind}): {failure}")
    if result.rejection is not None:
        return _rejection_response(request.path, *result.rejection)
    if not result.changed:
        return response
    headers = result.headers
    for name in ("Content-Length", "Transfer-Encoding"):  # the new body gets its own framing
        headers.popall(name, None)
    return web.Response(status=result.status, body=result.body.encode(), headers=headers)


def _rejection_response(path: str, plugin: Plugin, rejection: Rejection) -> web.Response:
    if not rejection.body:
        response = error_response(rejection.status, "plugin_rejected",
                                  f"The request was rejected by plugin {plugin.spec.name!r}",
                                  flavor=flavor_for_path(path))
        for name, value in rejection.headers:
            response.headers.add(name, value)
        return response
    headers = CIMultiDict(rejection.headers)
    headers.setdefault("content-type", "application/json")
    return web.Response(status=rejection.status, body=rejection.body.encode(), headers=headers)


def _rebuilt(request: web.Request, headers: CIMultiDict[str], body: bytes) -> web.Request:
    """The request with the plugins' headers and body.

    aiohttp's clone() refuses a request whose body was read, and a clone's read() would find the
    payload stream drained; so the read marker is lifted for the clone and the new body installed
    as the clone's already-read body (the one place the gateway touches aiohttp internals)."""
    headers.popall("Transfer-Encoding", None)
    headers["Content-Length"] = str(len(body))
    saved = request._read_bytes
    request._read_bytes = None
    try:
        clone = request.clone(headers=headers)
    finally:
        request._read_bytes = saved
    clone._read_bytes = body
    clone[RAW_BODY] = body  # what read_body() hands the handler
    return clone
