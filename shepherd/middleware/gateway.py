"""The one middleware every route runs through.

In: a request id, the shutdown gate, authentication, a trace span. Out: OpenAI-style errors for
anything raised, the request id header, metrics and one access-log line per request.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from shepherd.context import AppContext
from shepherd.errors import ERROR_CODE_HEADER, GatewayError, error_response, flavor_for_path
from shepherd.headers import REQUEST_ID_HEADER
from shepherd.middleware.auth import is_serving, reject_duplicate_credentials
from shepherd.middleware.priority import preempted
from shepherd.middleware.request_id import resolve_request_id
from shepherd.request_keys import BODY_BYTES, MODEL, REQUEST_ID, SPAN, TENANT, TICKET, USAGE, WORKER, peek

log = logging.getLogger("shepherd.api")
access_log = logging.getLogger("shepherd.access")

_PROBE_PATHS = frozenset({"/health", "/liveness", "/readiness"})

_HTTP_EXCEPTION_CODES = {
    404: ("unknown_url", "No route matches {method} {path}"),
    405: ("method_not_allowed", "Method {method} is not allowed on {path}"),
    413: ("request_body_too_large", "The request body exceeds the gateway's --max-payload-size"),
}


def gateway_middleware(context: AppContext) -> web.middleware:  # type: ignore[valid-type]
    request_id_headers = context.config.request_id_headers
    auth = context.auth if context.auth.enabled else None
    tenants = context.tenants
    metrics = context.metrics
    tracing = context.tracing

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        path = request.path
        request_id = resolve_request_id(request.headers, path, request_id_headers)
        request[REQUEST_ID] = request_id
        if context.closing and path not in _PROBE_PATHS:
            # Shutting down: requests that still arrive on kept-alive connections go elsewhere.
            refusal = error_response(503, "shutting_down", "The gateway is shutting down; retry on another one",
                                     headers={"Connection": "close", "Retry-After": "1"}, flavor=flavor_for_path(path))
            refusal.headers[REQUEST_ID_HEADER] = request_id
            return refusal
        span = None
        if tracing is not None and path not in _PROBE_PATHS:
            method = _method(request)
            attributes = {"http.request.method": method, "url.path": path, "shepherd.request_id": request_id}
            if method == "_OTHER":
                attributes["http.request.method_original"] = request.method[:32]
            span = tracing.start_request(f"{'HTTP' if method == '_OTHER' else method} {_route(request)}",
                                         request.headers, attributes)
            request[SPAN] = span
        context.in_flight += 1
        response: web.StreamResponse
        try:
            reject_duplicate_credentials(request.headers)
            authenticated = await auth.check(path, request.headers) if auth is not None else None
            if is_serving(path):
                request[TENANT] = tenants.resolve(authenticated, request.headers, request.remote)
            response = await handler(request)
        except GatewayError as exc:
            response = exc.to_response(flavor_for_path(path))
        except asyncio.CancelledError:
            ticket = request.get(TICKET)
            if ticket is None or not ticket.preempted:
                raise  # the client left
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # the scheduler's cancel ended the work, not this request: it is answered
            response = preempted(admitted=True).to_response(flavor_for_path(path))
        except web.HTTPException as exc:
            response = _from_http_exception(request, exc)
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", request.method, path, request_id)
            response = error_response(500, "internal_error", "The gateway hit an internal error",
                                      flavor=flavor_for_path(path))
        finally:
            context.in_flight -= 1
            held = peek(request, BODY_BYTES)
            if held:
                context.bodies.give_back(held)
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = request_id
        status = response.status
        elapsed = time.perf_counter() - started
        if metrics is not None:
            requests, duration, responses = metrics.http_bundle(
                _method(request), _route(request), status,
                metrics.error_code_label(response.headers.get(ERROR_CODE_HEADER, "")))
            requests.value += 1
            duration.observe(elapsed)
            responses.value += 1
            tenant = peek(request, TENANT)
            if tenant is not None:
                metrics.tenant_requests(metrics.tenant_label(tenant), str(status)).value += 1
        if span is not None:
            if MODEL in request:
                span.set_attribute("gen_ai.request.model", request[MODEL])
            tracing.finish(span, status)  # type: ignore[union-attr]
        if access_log.isEnabledFor(logging.INFO) and path not in _PROBE_PATHS:
            _log_request(request, status, elapsed, response.headers.get(ERROR_CODE_HEADER))
        return response

    return middleware


# The method of metrics and spans: any method but HTTP's own is "_OTHER" (OpenTelemetry's rule for
# http.request.method). The HTTP parser already refuses unknown tokens, but it takes some thirty
# (WebDAV's, RTSP's, ...), each of which would otherwise be a series per route.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})


def _method(request: web.Request) -> str:
    method = request.method
    return method if method in _KNOWN_METHODS else "_OTHER"


def _route(request: web.Request) -> str:
    """The matched route template (bounded label cardinality), else "other"."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "other"


_LOGGED_KEYS = (("tenant", TENANT), ("model", MODEL), ("worker", WORKER))


def _log_request(request: web.Request, status: int, elapsed: float, error_code: str | None) -> None:
    """One access line. The text repeats, as `name=value`, every field of the JSON line but the
    four the line opens with (method, path, status, duration)."""
    request_id = request[REQUEST_ID]
    method, path = request.method, request.path
    fields = {"request_id": request_id, "method": method, "path": path, "status": status,
              "duration_ms": round(elapsed * 1000, 2)}
    text = [f"request_id={request_id}"]
    for name, key in _LOGGED_KEYS:
        value = peek(request, key)
        if value is not None:
            fields[name] = value
            text.append(f"{name}={value}")
    usage = peek(request, USAGE)
    if usage:
        fields["prompt_tokens"], fields["completion_tokens"] = usage[0], usage[1]
        text.append(f"prompt_tokens={usage[0]} completion_tokens={usage[1]}")
    if error_code:
        fields["error_code"] = error_code
        text.append(f"error_code={error_code}")
    access_log.info("%s %s %d %.1fms %s", method, path, status, elapsed * 1000, " ".join(text), extra=fields)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    if exc.status < 400:
        return exc  # redirects and the like pass through unchanged
    code, template = _HTTP_EXCEPTION_CODES.get(exc.status, ("http_error", "{reason}"))
    message = template.format(method=request.method, path=request.path, reason=exc.reason)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return error_response(exc.status, code, message, headers=headers, flavor=flavor_for_path(request.path))
