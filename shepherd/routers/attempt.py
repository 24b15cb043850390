"""One request sent to one worker, with the bookkeeping every routing path owes the worker.

While an Attempt is open it counts as in flight on the worker (the load that policies and drains
read) and holds a half-open trial slot of its circuit breaker; closing it releases both, aborts
an unfinished upstream response, and gives the breaker its verdict: a failure when the worker did
not answer or broke off, nothing when the client left first or the answer meant "busy", otherwise
the answer's status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from shepherd.observability.metrics import Metrics
from shepherd.workers.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from shepherd.workers.worker import Worker


class Outcome:
    """What one attempt told us about the worker."""

    __slots__ = ("status", "worker_failed", "client_gone")

    def __init__(self) -> None:
        self.status: int | None = None
        self.worker_failed = False  # no answer, or the answer broke off
        self.client_gone = False  # the client left first: no verdict on the worker


class Attempt:
    __slots__ = ("worker", "outcome", "response", "task", "_busy", "_closed")

    def __init__(self, worker: Worker, busy_statuses: frozenset[int] = frozenset()) -> None:
        self.worker = worker
        self.outcome = Outcome()
        self.response: UpstreamResponse | None = None
        self.task: asyncio.Task[UpstreamResponse] | None = None  # a send started in the background
        self._busy = busy_statuses  # statuses that mean "busy" like a 429 (Anthropic's 529)
        self._closed = False
        worker.load += 1
        worker.processed += 1
        if worker.breaker is not None:
            worker.breaker.on_dispatch()

    async def send(self, pool: UpstreamPool, method: str, path: str, headers: Mapping[str, str] | Iterable[
                   tuple[str, str]], body: bytes | None, total_timeout: float) -> UpstreamResponse:
        """The worker's response head; UpstreamError (or UpstreamTimeout) when it gave none."""
        try:
            response = await pool.request(method, self.worker.base_url, path, headers, body,  # type: ignore[arg-type]
                                          total_timeout)
        except UpstreamError:
            self.outcome.worker_failed = True
            raise
        self.response = response
        self.outcome.status = response.status
        if response.status < 500:
            self.worker.last_success_at = time.monotonic()
        return response

    def start(self, pool: UpstreamPool, method: str, path: str, headers: Mapping[str, str], body: bytes | None,
              total_timeout: float) -> None:
        """Send in the background (so two legs of a PD request go out at once); await `task` for the head."""
        self.task = asyncio.ensure_future(self.send(pool, method, path, headers, body, total_timeout))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.task is not None and not self.task.done():
            self.task.cancel()  # a send still in progress: its connection is aborted
        if self.response is not None:
            self.response.close()  # pools a finished connection; aborts the worker's request otherwise
        worker, outcome = self.worker, self.outcome
        worker.load -= 1
        breaker = worker.breaker
        if breaker is None:
            return
        if outcome.client_gone:
            breaker.release()  # the client left first: no verdict on the worker
        elif outcome.worker_failed:
            breaker.record(None)
        elif outcome.status is None:
            breaker.release()
        else:
            breaker.record(429 if outcome.status in self._busy else outcome.status)


def count_request(metrics: Metrics, path_labels: tuple[str, str, str], model: str | None, endpoint: str,
                  body: Mapping[str, Any] | None, status: int, started: float, error_code: str | None) -> None:
    """Per-request router metrics; `path_labels` is (router_type, backend_type, connection_mode)."""
    model_label = metrics.model_label(model)
    streaming = "true" if body and body.get("stream") else "false"
    metrics.router_requests(*path_labels, model_label, endpoint, streaming).inc()
    if status < 400:
        metrics.router_duration(*path_labels, model_label, endpoint).observe(time.perf_counter() - started)
    else:
        metrics.router_errors(*path_labels, model_label, endpoint, error_code or f"upstream_{status}").inc()


def count_attempt(metrics: Metrics, router_type: str, worker: Worker, model: str | None, outcome: Outcome) -> None:
    """Per-attempt metrics: the worker's answer, and its failures by kind."""
    status = "error" if outcome.worker_failed and outcome.status is None else str(outcome.status or 0)
    if outcome.client_gone:
        status = "client_closed"
    metrics.upstream_responses(router_type, status, "").inc()
    metrics.worker_requests(worker.url, metrics.model_label(model), status).inc()
    if outcome.worker_failed or (outcome.status or 0) >= 500:
        kind = "transport" if outcome.status is None else "mid_stream" if outcome.worker_failed else "http_5xx"
        metrics.worker_errors(worker.worker_type.value, worker.connection_mode, kind).inc()
