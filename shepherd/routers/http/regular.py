"""The regular HTTP router: pick a worker, forward the request, relay the answer.

Bodies travel as the bytes the client sent; the parsed JSON is only read for routing. A response
with a Content-Length is relayed whole; anything else (SSE) is relayed chunk by chunk as it arrives.
A request that fails before any byte reached the client is retried on another worker.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from opentelemetry.trace import SpanKind

from shepherd.api.errors import GatewayError, flavor_for_path
from shepherd.config import GatewayConfig
from shepherd.observability.metrics import Metrics
from shepherd.observability.tracing import Tracing
from shepherd.policies.base import RoutingRequest
from shepherd.policies.registry import PolicyRegistry
from shepherd.request_keys import FIRST_CHUNK, MODEL, REQUEST_ID, SPAN, USAGE, WANT_USAGE, WORKER
from shepherd.routers.attempt import Attempt, Outcome, count_attempt, count_request
from shepherd.routers.http.headers import (
    REQUEST_ID_HEADER,
    ROUTED_WORKER_HEADER,
    client_response_headers,
    upstream_request_headers,
)
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.upstream import UpstreamError, UpstreamPool, UpstreamResponse, UpstreamTimeout
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.router")
access_log = logging.getLogger("shepherd.access")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class _RetryableFailure(Exception):
    """An attempt failed before anything reached the client; another worker may serve it."""

    def __init__(self, error: GatewayError | None = None, response: web.Response | None = None) -> None:
        super().__init__(error.message if error else "retryable upstream status")
        self.error = error
        self.response = response


async def _sse_events(chunks: AsyncIterator[bytes], transform: Callable[[bytes], bytes]) -> AsyncIterator[bytes]:
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


def _usage(payload: bytes) -> tuple[int, int, int] | None:
    """(prompt, completion, cached) tokens from an OpenAI or Anthropic JSON answer (access log, recorder)."""
    try:
        usage = orjson.loads(payload).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return _token_pair(usage)


def _stream_usage(last_chunk: bytes) -> tuple[int, int, int] | None:
    """Usage from the final usage event of a stream, if the last chunk carries one."""
    for line in reversed(last_chunk.split(b"\n")):
        if line.startswith(b"data: {") and b'"usage"' in line:
            try:
                return _token_pair(orjson.loads(line[6:]).get("usage"))
            except (orjson.JSONDecodeError, AttributeError):
                return None
    return None


def _token_pair(usage: Any) -> tuple[int, int, int] | None:
    """(prompt, completion, cached prompt) tokens; cached is 0 when the worker does not say."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    if not (isinstance(prompt, int) and isinstance(completion, int)):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else usage.get("cache_read_input_tokens")
    return prompt, completion, cached if isinstance(cached, int) else 0


class HttpRouter:
    def __init__(
        self,
        config: GatewayConfig,
        registry: WorkerRegistry,
        policies: PolicyRegistry,
        upstream: UpstreamPool,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._config = config
        self._registry = registry
        self._policies = policies
        self._upstream = upstream
        self._metrics = metrics
        self._tracing = tracing
        self._rng = random.Random()

    # -- selection ----------------------------------------------------------------------------

    def select_worker(
        self, model: str | None, routing: RoutingRequest, exclude: frozenset[Worker] = frozenset()
    ) -> Worker:
        workers = self._registry.for_model(model)
        if any(w.connection_mode == "external" for w in workers):  # providers are the external router's
            workers = tuple(w for w in workers if w.connection_mode != "external")
        if not workers:
            if not len(self._registry):
                raise GatewayError(503, "no_workers", "No workers are registered with the gateway yet")
            raise GatewayError(404, "model_not_found", f"The model `{model}` does not exist", param="model")
        available = [w for w in workers if w.is_available and w not in exclude]
        if not available and exclude:  # every other worker was tried: allow a repeat
            available = [w for w in workers if w.is_available]
        if not available:
            raise GatewayError(
                503, "no_available_workers", f"No available workers for model `{model or 'default'}`",
                headers={"Retry-After": "1"},
            )
        policy = self._policies.for_model(model)
        worker = policy.select(available, routing)
        if worker is None:
            raise GatewayError(503, "no_available_workers", "The routing policy found no acceptable worker",
                               headers={"Retry-After": "1"})
        if self._metrics is not None:
            self._metrics.selections(worker.worker_type.value, worker.connection_mode, model or "default",
                                     policy.name, worker.url).inc()
        return worker

    # -- forwarding ---------------------------------------------------------------------------

    async def route(
        self,
        request: web.Request,
        upstream_path: str,
        raw_body: bytes | None,
        body: Mapping[str, Any] | None,
        method: str = "POST",
    ) -> web.StreamResponse:
        """Forward the request to a worker chosen for its model, retrying elsewhere where safe."""
        model = body.get("model") if body else None
        if model is not None:
            request[MODEL] = model
        started = time.perf_counter()
        try:
            response = await self._attempts(request, upstream_path, raw_body, body, method, model)
        except GatewayError as exc:
            self._record(model, upstream_path, body, exc.status, started, exc.code)
            raise
        self._record(model, upstream_path, body, response.status, started, None)
        return response

    def _record(self, model: str | None, endpoint: str, body: Mapping[str, Any] | None, status: int,
                started: float, error_code: str | None) -> None:
        if self._metrics is not None:
            count_request(self._metrics, ("http", "regular", "http"), model, endpoint, body, status, started,
                          error_code)

    async def _attempts(
        self,
        request: web.Request,
        upstream_path: str,
        raw_body: bytes | None,
        body: Mapping[str, Any] | None,
        method: str,
        model: str | None,
    ) -> web.StreamResponse:
        routing = RoutingRequest(upstream_path, body, request.headers,
                                 routing_key_headers=self._config.policy_options.routing_key_headers)
        request_id: str = request[REQUEST_ID]
        attempts = 1 + self._config.retry_max_retries
        tried: set[Worker] = set()
        last_failure: _RetryableFailure | None = None
        metrics, tracing = self._metrics, self._tracing
        span = request.get(SPAN) if tracing is not None else None
        for attempt in range(attempts):
            if attempt:
                delay = self.backoff_secs(attempt - 1)
                if metrics is not None:
                    metrics.retries("regular", upstream_path).inc()
                    metrics.retry_backoff(str(attempt)).observe(delay)
                await asyncio.sleep(delay)
            select_span = tracing.start_child(span, "select_worker") if tracing is not None and span else None
            try:
                worker = self.select_worker(model, routing, frozenset(tried))
            except GatewayError as exc:
                if select_span is not None:
                    tracing.finish(select_span, exc.status)  # type: ignore[union-attr]
                if exc.status != 503 or attempt + 1 == attempts:
                    raise
                last_failure = _RetryableFailure(exc)
                continue
            if select_span is not None:
                select_span.set_attribute("shepherd.worker", worker.url)
                tracing.finish(select_span, None)  # type: ignore[union-attr]
            tried.add(worker)
            request[WORKER] = worker.url
            try:
                payload = raw_body
                if worker.dp_rank is not None and body is not None:
                    # A data-parallel rank is addressed in the body: the one case the bytes change.
                    payload = orjson.dumps({**body, "data_parallel_rank": worker.dp_rank})
                return await self._forward(request, worker, method, upstream_path, payload, request_id,
                                           final=attempt + 1 == attempts)
            except _RetryableFailure as failure:
                last_failure = failure
                log.info("request %s to %s failed (attempt %d/%d): %s", request_id, worker.url,
                         attempt + 1, attempts, failure)
        if metrics is not None and attempts > 1:
            metrics.retries_exhausted("regular", upstream_path).inc()
        assert last_failure is not None
        if last_failure.response is not None:
            return last_failure.response
        assert last_failure.error is not None
        raise last_failure.error

    def backoff_secs(self, retry_index: int) -> float:
        config = self._config
        delay = min(config.retry_initial_backoff_ms * config.retry_backoff_multiplier**retry_index,
                    config.retry_max_backoff_ms)
        jitter = delay * config.retry_jitter_factor * self._rng.uniform(-1.0, 1.0)
        return max(0.0, delay + jitter) / 1000.0

    async def _forward(
        self,
        request: web.Request,
        worker: Worker,
        method: str,
        upstream_path: str,
        raw_body: bytes | None,
        request_id: str,
        *,
        final: bool,
    ) -> web.StreamResponse:
        headers = upstream_request_headers(request.headers, request_id, worker.api_key,
                                           self._config.gateway_keys, has_body=raw_body is not None)
        tracing = self._tracing
        span = request.get(SPAN) if tracing is not None else None
        upstream_span = None
        if span is not None and tracing is not None:
            upstream_span = tracing.start_child(span, f"{method} {upstream_path}", SpanKind.CLIENT)
            upstream_span.set_attribute("server.address", worker.base_url)
            tracing.inject(upstream_span, headers)
        attempt = Attempt(worker)
        outcome = attempt.outcome
        try:
            try:
                upstream = await attempt.send(self._upstream, method, upstream_path, headers, raw_body,
                                              self._config.request_timeout_secs)
            except UpstreamTimeout:
                raise self._transport_failure(final, 504, "call_upstream_timeout",
                                              f"Worker {worker.url} did not answer in time") from None
            except UpstreamError as exc:
                raise self._transport_failure(final, 502, "call_upstream_connection_failed",
                                              f"Could not reach worker {worker.url}: {exc}") from None
            if upstream.status in RETRYABLE_STATUSES and not final:
                response = await self.buffered_response(request, upstream, worker, request_id, outcome)
                raise _RetryableFailure(response=response)
            if upstream.content_length is not None:
                return await self.buffered_response(request, upstream, worker, request_id, outcome)
            return await self.relay_stream(request, upstream, worker, request_id, outcome)
        except asyncio.CancelledError:
            outcome.client_gone = True
            raise
        finally:
            attempt.close()
            if upstream_span is not None and tracing is not None:
                tracing.finish(upstream_span, 599 if outcome.worker_failed else outcome.status)
            if self._metrics is not None:
                count_attempt(self._metrics, "http", worker, request.get(MODEL), outcome)

    @staticmethod
    def _transport_failure(final: bool, status: int, code: str, message: str) -> Exception:
        error = GatewayError(status, code, message)
        return error if final else _RetryableFailure(error)

    async def buffered_response(
        self, request: web.Request, upstream: UpstreamResponse, worker: Worker, request_id: str, outcome: Outcome,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> web.Response:
        """Read the worker's whole answer (within --max-payload-size) and answer the client with it."""
        limit = self._config.max_payload_size
        too_large = GatewayError(502, "upstream_response_too_large",
                                 f"The worker's response exceeds the {limit}-byte limit")
        if upstream.content_length is not None and upstream.content_length > limit:
            raise too_large
        try:
            payload = await upstream.read(limit)
        except UpstreamTimeout:
            outcome.worker_failed = True
            raise GatewayError(504, "call_upstream_timeout", f"Worker {worker.url} timed out mid-response") from None
        except UpstreamError as exc:
            outcome.worker_failed = True
            raise GatewayError(502, "upstream_response_incomplete",
                               f"Worker {worker.url} failed mid-response: {exc}") from None
        except ValueError:
            raise too_large from None
        if transform is not None:
            payload = transform(payload)
        if b"\"usage\"" in payload[-1024:] and (WANT_USAGE in request or access_log.isEnabledFor(logging.INFO)):
            request[USAGE] = _usage(payload)
        headers = client_response_headers(upstream.headers)
        headers[REQUEST_ID_HEADER] = request_id
        headers[ROUTED_WORKER_HEADER] = worker.url
        return web.Response(status=upstream.status, body=payload, headers=headers)

    async def relay_stream(
        self, request: web.Request, upstream: UpstreamResponse, worker: Worker, request_id: str, outcome: Outcome,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> web.StreamResponse:
        """Relay the worker's body chunk by chunk as it arrives. With `transform`, whole SSE events are
        rewritten one by one (so a chunk that ends mid-event waits for the rest of that event)."""
        headers = client_response_headers(upstream.headers)
        headers[REQUEST_ID_HEADER] = request_id
        headers[ROUTED_WORKER_HEADER] = worker.url
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        is_sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        chunk = b"\n\n"
        metrics = self._metrics
        model = request.get(MODEL) or "default"
        dispatched = time.perf_counter()
        previous = 0.0
        chunks = upstream.iter_chunks() if transform is None else _sse_events(upstream.iter_chunks(), transform)
        try:
            async for chunk in chunks:
                if FIRST_CHUNK not in request:
                    request[FIRST_CHUNK] = time.perf_counter()
                if metrics is not None:
                    now = time.perf_counter()
                    if previous:
                        metrics.inter_chunk(request.path, model).observe(now - previous)
                    else:
                        metrics.ttfb(request.path, model, worker.url).observe(now - dispatched)
                    previous = now
                await response.write(chunk)
            if b'"usage"' in chunk and (WANT_USAGE in request or access_log.isEnabledFor(logging.INFO)):
                request[USAGE] = _stream_usage(chunk)
        except ConnectionError as exc:
            if request.transport is None or request.transport.is_closing():
                log.info("client of request %s went away mid-stream; closing the upstream", request_id)
                outcome.client_gone = True
                return response
            outcome.worker_failed = True
            await self._end_stream_with_error(response, request, worker, exc, is_sse, chunk.endswith(b"\n\n"))
        except UpstreamError as exc:
            outcome.worker_failed = True
            await self._end_stream_with_error(response, request, worker, exc, is_sse, chunk.endswith(b"\n\n"))
        else:
            await response.write_eof()
        return response

    async def _end_stream_with_error(
        self,
        response: web.StreamResponse,
        request: web.Request,
        worker: Worker,
        exc: BaseException,
        is_sse: bool,
        at_event_boundary: bool,
    ) -> None:
        """The worker failed after the stream started: tell the client cleanly, never hang."""
        reason = "timed out" if isinstance(exc, UpstreamTimeout) else f"failed: {exc.__class__.__name__}"
        log.warning("stream from %s %s", worker.url, reason)
        if not is_sse:
            if request.transport is not None:
                request.transport.close()  # a truncated non-SSE body must not look complete
            return
        message = f"The worker {reason} mid-stream"
        if flavor_for_path(request.path) == "anthropic":
            event = orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message}})
            frame = b"event: error\ndata: " + event + b"\n\n"
        else:
            event = orjson.dumps({"error": {"message": message, "type": "server_error", "param": None,
                                            "code": "upstream_stream_error"}})
            frame = b"data: " + event + b"\n\ndata: [DONE]\n\n"
        if not at_event_boundary:  # end the worker's half-written event before ours
            frame = b"\n\n" + frame
        try:
            await response.write(frame)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
