"""The request lifecycle: one retry loop, one deadline, one place for verdicts and metrics.

`Lifecycle` belongs to a routing path (its metric labels, retry settings, timeout). Each client
request gets an `Execution`, which

* picks a candidate with the path's `select` (one worker, or a prefill/decode pair) and tries it
  with the path's `attempt`; an attempt that raises RetryableFailure is retried on a candidate not
  yet tried, after an exponential backoff with jitter, while attempts and the deadline allow;
* bounds all attempts together by one deadline (`--request-timeout-secs` from the request's start);
* gives every attempt's breaker its verdict. A worker that answered 500 is judged only once the
  next worker answered: if another worker answered the same request with the same 500, the request
  is the cause (a "poison" request), retrying stops and no worker is charged for it;
* counts per-request, per-attempt, selection and retry metrics, and opens the trace spans.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web

from shepherd.config import GatewayConfig, RetryConfig
from shepherd.errors import GatewayError
from shepherd.observability.metrics import Metrics
from shepherd.observability.tracing import SpanKind, Tracing
from shepherd.policies.base import RoutingRequest
from shepherd.request_keys import FIRST_CHUNK, MODEL, REQUEST_ID, SPAN, USAGE, WORKER, peek
from shepherd.routers.common.attempt import Attempt, give_verdict
from shepherd.routers.common.retry import Backoff, RetryableFailure
from shepherd.workers.overload import OverloadShed
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.router")

# A server error that two workers give for the same request is the request's doing.
POISON_STATUSES = frozenset({500})

C = TypeVar("C")


@dataclass(frozen=True)
class PathLabels:
    """How a routing path appears in metrics (SMG's label values)."""

    router_type: str  # http | grpc | external
    backend_type: str  # regular | pd | external
    connection_mode: str  # http | grpc | external


class Lifecycle(Generic[C]):
    """A routing path's request lifecycle; `C` is what its `select` picks (a worker, a pair)."""

    @classmethod
    def for_path(cls, labels: PathLabels, config: GatewayConfig, metrics: Metrics | None,
                 tracing: Tracing | None) -> Lifecycle[C]:
        return cls(labels, config.retry, config.request_timeout_secs, config.max_payload_size, metrics, tracing)

    def __init__(self, labels: PathLabels, retry: RetryConfig, request_timeout: float, max_response_bytes: int,
                 metrics: Metrics | None, tracing: Tracing | None, backoff: Backoff | None = None) -> None:
        self.labels = labels
        self.retry = retry
        self.request_timeout = request_timeout  # one deadline for all attempts of a request together
        self.max_response_bytes = max_response_bytes  # a worker's answer read whole
        self.metrics = metrics
        self.tracing = tracing
        self.backoff = backoff or Backoff(retry)
        self._path_labels = (labels.router_type, labels.backend_type, labels.connection_mode)

    async def run(
        self,
        request: web.Request,
        endpoint: str,
        model: str | None,
        body: Mapping[str, Any] | None,
        select: Callable[[frozenset[Worker]], C],
        attempt: Callable[[Execution[C], C, bool], Awaitable[web.StreamResponse]],
        routing: RoutingRequest | None = None,
    ) -> web.StreamResponse:
        """Serve one request: `select(tried)` a candidate, `attempt(execution, candidate, final)` it.
        `routing`: the features the policy chose by; its `observer`, when the policy set one, hears each
        attempt's time to first byte."""
        if model is not None:
            request[MODEL] = model
        started = time.perf_counter()
        execution = Execution(self, request, model, routing)
        try:
            response = await execution.run(select, attempt)
        except GatewayError as exc:
            self._count_request(model, endpoint, body, exc.status, started, exc.code)
            raise
        self._count_request(model, endpoint, body, response.status, started, None)
        if self.metrics is not None and response.status < 400:
            self._count_generation(request, model, endpoint, started)
        return response

    def _count_generation(self, request: web.Request, model: str | None, endpoint: str, started: float) -> None:
        """SMG's latency and token families, on every path (SMG records them for gRPC only)."""
        metrics = self.metrics
        assert metrics is not None
        now = time.perf_counter()
        labels = (self.labels.router_type, self.labels.backend_type, metrics.model_label(model), endpoint)
        duration, ttft = metrics.generation_bundle(*labels)
        duration.observe(now - started)
        first = peek(request, FIRST_CHUNK)  # set by streamed answers; a whole answer's first byte is its end
        ttft.observe((first if first is not None else now) - started)
        usage = peek(request, USAGE)
        if not usage:
            return
        prompt, completion = int(usage[0] or 0), int(usage[1] or 0)
        input_tokens, output_tokens = metrics.token_bundle(*labels)
        input_tokens.inc(prompt)
        output_tokens.inc(completion)
        if first is not None and completion > 1:  # time per output token after the first
            metrics.tpot(*labels).observe((now - first) / (completion - 1))

    def count_refusal(self, endpoint: str, model: str | None, body: Mapping[str, Any] | None, status: int,
                      error_code: str) -> None:
        """A request the path refused before its lifecycle began (a model no provider lists)."""
        self._count_request(model, endpoint, body, status, time.perf_counter(), error_code)

    def _count_request(self, model: str | None, endpoint: str, body: Mapping[str, Any] | None, status: int,
                       started: float, error_code: str | None) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        path = self._path_labels
        model_label = metrics.model_label(model)
        streaming = "true" if body and body.get("stream") else "false"
        if status < 400:
            requests, duration = metrics.routed_bundle(path, model_label, endpoint, streaming)
            requests.value += 1
            duration.observe(time.perf_counter() - started)
        else:
            metrics.router_requests(*path, model_label, endpoint, streaming).inc()
            metrics.router_errors(*path, model_label, endpoint, error_code or f"upstream_{status}").inc()


class Execution(Generic[C]):
    """One client request on its way through the attempts."""

    def __init__(self, lifecycle: Lifecycle[C], request: web.Request, model: str | None,
                 routing: RoutingRequest | None = None) -> None:
        self.lifecycle = lifecycle
        self.routing = routing
        self._attempt_started = 0.0
        self.request = request
        self.model = model
        self.request_id: str = request[REQUEST_ID]
        # time.monotonic rather than the loop's clock: Python 3.11's get_running_loop() makes a getpid
        # syscall per call, and this deadline is only ever turned back into seconds left
        self.deadline = time.monotonic() + lifecycle.request_timeout
        self.tried: set[Worker] = set()
        self.poisoned = False  # two workers gave the same server error: the request is the cause
        self._awaiting_verdict: list[Attempt] = []  # closed attempts that answered 500
        self._span = request.get(SPAN) if lifecycle.tracing is not None else None

    # -- what paths call ----------------------------------------------------------------------

    def attempt(self, worker: Worker, busy_statuses: frozenset[int] = frozenset()) -> Attempt:
        """Open an attempt on `worker` (close it, whatever happens)."""
        self.tried.add(worker)
        self.request[WORKER] = worker.url
        self._attempt_started = time.perf_counter()
        return Attempt(worker, self, busy_statuses)

    def first_byte(self) -> None:
        """The answer's first bytes are on their way to the client (time to first token, once)."""
        if peek(self.request, FIRST_CHUNK) is None:
            now = self.request[FIRST_CHUNK] = time.perf_counter()
            self._observe(now - self._attempt_started)

    def _observe(self, seconds: float | None) -> None:
        routing = self.routing
        if routing is not None and routing.observer is not None:
            observer, routing.observer = routing.observer, None
            observer(seconds)

    def remaining(self) -> float:
        """Seconds left until the request's deadline (what the next send may take at most)."""
        return self.deadline - time.monotonic()

    # -- the retry loop -----------------------------------------------------------------------

    async def run(
        self,
        select: Callable[[frozenset[Worker]], C],
        attempt: Callable[[Execution[C], C, bool], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        lifecycle = self.lifecycle
        metrics, labels = lifecycle.metrics, lifecycle.labels
        attempts = lifecycle.retry.attempts
        last: RetryableFailure | None = None
        unselectable: GatewayError | None = None
        endpoint = self.request.path
        try:
            for index in range(attempts):
                final = index + 1 == attempts
                if index:
                    delay = min(lifecycle.backoff.secs(index - 1), max(0.0, self.remaining()))
                    if metrics is not None:
                        metrics.retries(labels.backend_type, endpoint).inc()
                        metrics.retry_backoff(str(index)).observe(delay)
                    await asyncio.sleep(delay)
                    if self.remaining() <= 0:
                        break
                try:
                    candidate = select(frozenset(self.tried))
                except GatewayError as exc:
                    if last is not None:
                        break  # nobody left to try: the last worker's failure is the answer
                    if exc.status != 503 or final or isinstance(exc, OverloadShed):
                        raise
                    unselectable = exc  # none available yet: wait (backoff) for one
                    continue
                try:
                    return await attempt(self, candidate, final)
                except RetryableFailure as failure:
                    last = failure
                    log.info("request %s failed (attempt %d/%d): %s", self.request_id, index + 1, attempts,
                             failure)
                    if self.poisoned:
                        log.info("request %s: two workers gave it the same server error; not retrying",
                                 self.request_id)
                        break
            if metrics is not None and attempts > 1 and not self.poisoned:
                metrics.retries_exhausted(labels.backend_type, endpoint).inc()
            if last is None:  # no attempt was made: no worker became available in time
                assert unselectable is not None
                raise unselectable
            if last.response is not None:
                return last.response
            raise last.error
        finally:
            self._observe(None)  # an attempt that never produced a first byte (no-op once one did)
            for pending in self._awaiting_verdict:  # no other worker contradicted their 500
                give_verdict(pending, poisoned=False)
            self._awaiting_verdict.clear()

    # -- AttemptOwner: verdicts, attempt metrics, spans ----------------------------------------

    def answered(self, attempt: Attempt, status: int) -> None:
        waiting = self._awaiting_verdict
        if not waiting:
            return
        if any(status == w.outcome.status and w.worker is not attempt.worker for w in waiting):
            self.poisoned = True
        for pending in waiting:
            give_verdict(pending, poisoned=self.poisoned)
        waiting.clear()

    def closed(self, attempt: Attempt) -> None:
        outcome = attempt.outcome
        self._count_attempt(attempt)
        if outcome.status in POISON_STATUSES and not outcome.worker_failed and not outcome.client_gone:
            if self.poisoned:
                give_verdict(attempt, poisoned=True)
            else:
                self._awaiting_verdict.append(attempt)  # judged when the next worker answers
            return
        give_verdict(attempt, poisoned=False)

    def _count_attempt(self, attempt: Attempt) -> None:
        metrics = self.lifecycle.metrics
        if metrics is None:
            return
        outcome, worker = attempt.outcome, attempt.worker
        status = "error" if outcome.worker_failed and outcome.status is None else str(outcome.status or 0)
        if outcome.client_gone:
            status = "client_closed"
        responses, requests = metrics.attempt_bundle(self.lifecycle.labels.router_type, worker.url,
                                                     metrics.model_label(self.model), status)
        responses.value += 1
        requests.value += 1
        if outcome.worker_failed or (outcome.status or 0) >= 500:
            kind = "transport" if outcome.status is None else "mid_stream" if outcome.worker_failed else "http_5xx"
            metrics.worker_errors(worker.worker_type.value, worker.connection_mode, kind).inc()

    def client_span(self, attempt: Attempt, method: str, path: str, headers: dict[str, str]) -> Any:
        tracing = self.lifecycle.tracing
        if tracing is None or self._span is None:
            return None
        span = tracing.start_child(self._span, f"{method} {path}", SpanKind.CLIENT)
        span.set_attribute("server.address", attempt.worker.base_url)
        tracing.inject(span, headers)
        return span

    def finish_span(self, span: Any, attempt: Attempt) -> None:
        assert self.lifecycle.tracing is not None
        outcome = attempt.outcome
        self.lifecycle.tracing.finish(span, 599 if outcome.worker_failed else outcome.status)
