"""Control-plane loops: a background task with start/stop, and one that runs a round every interval.

A round that raises is logged and the loop goes on: one broken worker or policy must never stop
health checks, load polling or housekeeping for all the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable


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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

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
        if not self._first_round_now:
            await asyncio.sleep(self.interval_secs)
        while True:
            started = time.monotonic()
            try:
                await self._round()
            except Exception:
                self._log.exception("%s round failed", self.name)
            # Rounds start every interval, however long one took (but never overlap).
            await asyncio.sleep(max(0.0, self.interval_secs - (time.monotonic() - started)))
