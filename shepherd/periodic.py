"""Control-plane loops: a background task with start/stop, and one that runs a round every interval.

A round that raises is logged and the loop goes on: one broken worker or policy must never stop
health checks, load polling or housekeeping for all the others.

`stop()` always returns, even when code inside the task catches the CancelledError and goes on (a
client library that retries a lost connection may): the task is cancelled again until it ends. A
gateway whose shutdown waited on such a loop hung for good, serving nothing but still probing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

_RECANCEL_SECS = 1.0


class BackgroundTask:
    """One task running `_run()` on the event loop between `start()` and `stop()` (idempotent both)."""

    _task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task = self._task
        if task is None:
            return
        task.cancel()
        while not task.done():
            await asyncio.wait({task}, timeout=_RECANCEL_SECS)
            if not task.done():
                task.cancel()  # the cancel was caught inside the task: again
        self._task = None
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        raise NotImplementedError


class Periodic(BackgroundTask):
    def __init__(self, name: str, interval_secs: float, round_: Callable[[], Awaitable[None]],
                 log: logging.Logger, *, first_round_now: bool = True) -> None:
        self.name = name
        self.interval_secs = interval_secs
        self._round = round_
        self._log = log
        self._first_round_now = first_round_now  # False: wait one interval before the first round

    async def _run(self) -> None:
        task = asyncio.current_task()
        if not self._first_round_now:
            await asyncio.sleep(self.interval_secs)
        while True:
            started = time.monotonic()
            try:
                await self._round()
            except Exception:
                self._log.exception("%s round failed", self.name)
            if task is not None and task.cancelling():  # a round caught the stop's cancel: stop here
                raise asyncio.CancelledError
            # Rounds start every interval, however long one took (but never overlap).
            await asyncio.sleep(max(0.0, self.interval_secs - (time.monotonic() - started)))
