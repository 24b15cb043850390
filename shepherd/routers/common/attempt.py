"""One request sent to one worker, with the bookkeeping every routing path owes the worker.

While an Attempt is open it counts as in flight on the worker (the load that policies and drains
read) and holds a half-open trial slot of its circuit breaker. Closing it releases the load, aborts
an unfinished upstream response, and hands the outcome to its owner (the request's Execution),
which gives the breaker its verdict and counts the attempt's metrics. The same Attempt serves an
HTTP exchange (`send`) and a gRPC stream (the gRPC path calls `answered` / marks failures itself).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from shepherd.transport.base import Transport, TransportResponse
from shepherd.transport.errors import UpstreamError, UpstreamTimeout
from shepherd.workers.worker import Worker


class Outcome:
    """What one attempt told us about the worker."""

    __slots__ = ("status", "worker_failed", "client_gone", "complete")

    def __init__(self) -> None:
        self.status: int | None = None  # the worker's answer (an HTTP status, or a gRPC code's equivalent)
        self.worker_failed = False  # no answer, or the answer broke off
        self.client_gone = False  # the client left first: no verdict on the worker
        self.complete = False  # the whole answer arrived


class AttemptOwner(Protocol):
    """The request an attempt belongs to (an Execution)."""

    def answered(self, attempt: Attempt, status: int) -> None: ...

    def closed(self, attempt: Attempt) -> None: ...

    def client_span(self, attempt: Attempt, method: str, path: str, headers: dict[str, str]) -> Any: ...

    def finish_span(self, span: Any, attempt: Attempt) -> None: ...


class Attempt:
    __slots__ = ("worker", "outcome", "busy_statuses", "response", "task", "_owner", "_span", "_closed")

    def __init__(self, worker: Worker, owner: AttemptOwner | None = None,
                 busy_statuses: frozenset[int] = frozenset()) -> None:
        self.worker = worker
        self.outcome = Outcome()
        self.busy_statuses = busy_statuses  # statuses that mean "busy" like a 429 (Anthropic's 529)
        self.response: TransportResponse | None = None
        self.task: asyncio.Task[TransportResponse] | None = None  # a send started in the background
        self._owner = owner
        self._span: Any = None
        self._closed = False
        worker.load += 1
        worker.processed += 1
        if worker.liveness is not None and worker.load == 1:
            worker.liveness.busy(worker)
        if worker.breaker is not None:
            worker.breaker.on_dispatch()

    def answered(self, status: int) -> None:
        """The worker answered (its response head, or a gRPC stream's first message or status)."""
        self.outcome.status = status
        now = time.monotonic()
        if status < 500:
            self.worker.last_success_at = now
        if self.worker.liveness is not None:
            self.worker.liveness.contact(now)
        if self._owner is not None:
            self._owner.answered(self, status)

    def progressed(self) -> None:
        """The worker sent a token, a chunk or its whole answer (lifts a wedge; see liveness.py)."""
        if self.worker.liveness is not None:
            self.worker.liveness.progress(self.worker)

    def failed(self) -> None:
        """The worker gave no answer, or broke off in the middle of one."""
        self.outcome.worker_failed = True

    def unreachable(self) -> None:
        """The worker could not be reached (connect refused, reset): a failure, and maybe a stall."""
        self.failed()
        if self.worker.liveness is not None:
            self.worker.liveness.transport_failed(self.worker)

    def client_left(self) -> None:
        """The client went away: no verdict on the worker, unless its whole answer had already arrived."""
        if not self.outcome.complete:
            self.outcome.client_gone = True

    async def send(self, transport: Transport, method: str, path: str,
                   headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes | None,
                   total_timeout: float) -> TransportResponse:
        """The worker's response head; UpstreamError (or UpstreamTimeout) when it gave none."""
        if self._owner is not None and isinstance(headers, dict):
            self._span = self._owner.client_span(self, method, path, headers)
        try:
            response = await transport.request(method, self.worker.base_url, path, headers, body, total_timeout)
        except UpstreamTimeout:
            self.failed()
            raise
        except UpstreamError:
            self.unreachable()
            raise
        self.response = response
        self.answered(response.status)
        return response

    def start(self, transport: Transport, method: str, path: str, headers: dict[str, str], body: bytes | None,
              total_timeout: float) -> None:
        """Send in the background (so two legs of a PD request go out at once); await `task` for the head."""
        self.task = asyncio.ensure_future(self.send(transport, method, path, headers, body, total_timeout))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.task is not None and not self.task.done():
            self.task.cancel()  # a send still in progress: its connection is aborted
        if self.response is not None:
            self.response.close()  # frees a finished connection; aborts the worker's request otherwise
        self.worker.load -= 1
        if self._owner is not None:
            if self._span is not None:
                self._owner.finish_span(self._span, self)
            self._owner.closed(self)
        elif self.worker.breaker is not None:
            give_verdict(self, poisoned=False)


def give_verdict(attempt: Attempt, *, poisoned: bool) -> None:
    """Tell the worker's breaker what this attempt said about the worker.

    `poisoned`: another worker answered the same request with the same server error, so the request,
    not this worker, caused it: no verdict either way."""
    breaker = attempt.worker.breaker
    if breaker is None:
        return
    outcome = attempt.outcome
    if outcome.client_gone or poisoned:
        breaker.release()
    elif outcome.worker_failed:
        breaker.record(None)
    elif outcome.status is None:
        breaker.release()
    else:
        breaker.record(429 if outcome.status in attempt.busy_statuses else outcome.status)
