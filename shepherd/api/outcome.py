"""What the status page and the traffic recorder are told of a finished inference request: one
place for every inference route (the proxied APIs and the Responses API), told once per request."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp import web

from shepherd.api.admit import Ticket
from shepherd.context import AppContext
from shepherd.errors import GatewayError
from shepherd.request_keys import FIRST_CHUNK, USAGE, WORKER


class Outcome:
    def __init__(self, context: AppContext, request: web.Request, api: str, body: Mapping[str, Any]) -> None:
        self.context, self.request, self.api = context, request, api
        self.body = body  # what the prompt is read from (the Responses API gives the model's whole prompt)
        self.status = 500
        self.deferred = False  # handed to work that outlives the request (a background response): it tells
        self._arrived, self._started = time.time(), time.perf_counter()
        self._told = False

    def tell(self, status: int | None = None) -> None:
        if self._told:
            return
        self._told = True
        status = self.status if status is None else status
        request, context = self.request, self.context
        duration = time.perf_counter() - self._started
        first_chunk = request.get(FIRST_CHUNK)
        ttft = first_chunk - self._started if first_chunk is not None else None
        usage = request.get(USAGE)
        worker = request.get(WORKER)
        model = self.body.get("model")
        context.live_stats.observe(worker, model if isinstance(model, str) else None, status,
                                   ttft if ttft is not None else duration,
                                   usage[0] if usage else 0, usage[2] if usage and len(usage) > 2 else 0)
        if context.recorder is not None:
            context.recorder.record(arrived=self._arrived, api=self.api, body=self.body, headers=request.headers,
                                    status=status, worker=worker, usage=usage, ttft=ttft, duration=duration)


@contextlib.contextmanager
def observed(context: AppContext, request: web.Request, api: str, body: Mapping[str, Any],
             ticket: Ticket | None) -> Iterator[Outcome]:
    """Tell the request's outcome when the block ends (set `outcome.status` from the answer)."""
    outcome = Outcome(context, request, api, body)
    try:
        yield outcome
    except GatewayError as exc:
        outcome.status = exc.status
        raise
    except asyncio.CancelledError:  # the client went away first, or the scheduler preempted it
        outcome.status = 503 if ticket is not None and ticket.preempted else 499
        raise
    finally:
        if not outcome.deferred:
            outcome.tell()
