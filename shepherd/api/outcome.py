"""What the status page and the traffic recorder are told of a finished inference request: one
place for every inference route (the proxied APIs and the Responses API), told once per request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from shepherd.api.admit import Ticket
from shepherd.context import AppContext
from shepherd.errors import GatewayError
from shepherd.request_keys import FIRST_CHUNK, USAGE, WORKER, peek


class Outcome:
    """Used as the `with` block around the request's work: tells the outcome when the block ends
    (a class rather than a contextlib generator: it is entered on every inference request)."""

    def __init__(self, context: AppContext, request: web.Request, api: str, body: Mapping[str, Any],
                 ticket: Ticket | None = None) -> None:
        self.context, self.request, self.api = context, request, api
        self.body = body  # what the prompt is read from (the Responses API gives the model's whole prompt)
        self.status = 500
        self.deferred = False  # handed to work that outlives the request (a background response): it tells
        self._ticket = ticket
        self._arrived, self._started = time.time(), time.perf_counter()
        self._told = False

    def __enter__(self) -> Outcome:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, trace: Any) -> None:
        if isinstance(exc, GatewayError):
            self.status = exc.status
        elif isinstance(exc, asyncio.CancelledError):  # the client went away first, or the scheduler preempted it
            self.status = 503 if self._ticket is not None and self._ticket.preempted else 499
        if not self.deferred:
            self.tell()

    def tell(self, status: int | None = None) -> None:
        if self._told:
            return
        self._told = True
        status = self.status if status is None else status
        request, context = self.request, self.context
        duration = time.perf_counter() - self._started
        first_chunk = peek(request, FIRST_CHUNK)
        ttft = first_chunk - self._started if first_chunk is not None else None
        usage = peek(request, USAGE)
        worker = peek(request, WORKER)
        model = self.body.get("model")
        context.live_stats.observe(worker, model if isinstance(model, str) else None, status,
                                   ttft if ttft is not None else duration,
                                   usage[0] if usage else 0, usage[2] if usage and len(usage) > 2 else 0)
        if context.recorder is not None:
            context.recorder.record(arrived=self._arrived, api=self.api, body=self.body, headers=request.headers,
                                    status=status, worker=worker, usage=usage, ttft=ttft, duration=duration)


def observed(context: AppContext, request: web.Request, api: str, body: Mapping[str, Any],
             ticket: Ticket | None) -> Outcome:
    """`with observed(...) as outcome:` tells the request's outcome when the block ends (set
    `outcome.status` from the answer)."""
    return Outcome(context, request, api, body, ticket)
