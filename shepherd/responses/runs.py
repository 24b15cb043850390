"""Responses being produced, with their events, for everyone who follows them.

A Run's events go into a log; any number of readers follow it from a sequence number (the client
that created a streamed background response, `GET /v1/responses/{id}?stream=true`), each waking on
every new event, and each ending as soon as the run's log is closed, however the run ended:
completed, failed, or cancelled. The log's closing is in the run's `finally`, so no reader can wait
on a run that is gone.

BackgroundRuns holds the background runs of this gateway, at most `limit` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from shepherd.errors import GatewayError

CANCEL_SETTLE_SECS = 5.0


class Run:
    def __init__(self, response_id: str) -> None:
        self.id = response_id
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self.cancel_requested = False
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def append(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self, after: int = -1) -> AsyncIterator[dict[str, Any]]:
        """The events with a sequence number above `after`, as they come, until the run ends."""
        index = 0
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                if event["sequence_number"] > after:
                    yield event
            if self.closed:
                return
            await self._changed.wait()


class BackgroundRuns:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._runs: dict[str, Run] = {}

    def get(self, response_id: str) -> Run | None:
        return self._runs.get(response_id)

    def admit(self, response_id: str) -> Run:
        if len(self._runs) >= self.limit:
            raise GatewayError(429, "background_responses_limit_reached",
                               f"This gateway already runs {self.limit} background responses; retry later")
        run = self._runs[response_id] = Run(response_id)
        return run

    def pop(self, response_id: str) -> None:
        self._runs.pop(response_id, None)

    def start(self, run: Run, work: Callable[[Run], Awaitable[None]]) -> None:
        async def guarded() -> None:
            try:
                await work(run)
            finally:
                run.close()
                self._runs.pop(run.id, None)

        run.task = asyncio.ensure_future(guarded())

    async def cancel(self, run: Run) -> None:
        """Cancel the run and wait (a bounded time) for it to settle its stored record."""
        run.cancel_requested = True
        task = run.task
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(task), CANCEL_SETTLE_SECS)

    async def close(self) -> None:
        """Shutdown: every run is cancelled (each records itself as cancelled)."""
        await asyncio.gather(*(self.cancel(run) for run in list(self._runs.values())), return_exceptions=True)
