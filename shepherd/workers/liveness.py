"""Stall, wedge and stale detection (SMG's --worker-stall-secs, --worker-wedge-secs, --worker-stale-secs).

Each worker registered by the manager carries a `Liveness`: when the gateway last heard anything
from it (contact: a load poll, a health probe, a KV event, a response head or body bytes) and when
it last made progress (a streamed chunk, a completed answer, a load poll that reports generation).

* Stalled: a transport failure (no HTTP status: connect refused, reset) on a worker not heard from
  for `stall_secs`. Excluded from selection until its next contact of any kind.
* Wedged: a worker with requests in flight that is four deep, or whose in-flight pile or engine
  waiting queue grew since it last made progress, and has made no progress for the wedge bound,
  unless its last load report shows it generating (a non-streamed answer shows no progress until it
  completes, so without this a worker busy with long ones would look wedged between load polls).
  Gets no new requests until it makes progress (or its pile drains: with nothing in flight it could
  never show progress, and its next requests meet the stall check and the breaker). The bound is
  `wedge_secs`, stretched to the time the engine's not-yet-prefilled tokens (`waiting_uncached_tokens`
  of its last load report) need at an assumed PREFILL_TOKENS_PER_SEC, capped at MAX_WEDGE_SECS.
  A worker falls into a wedge only with time, so `LivenessSweeper` judges every worker a few times per bound.
* Stale: a worker whose KV-event stream has pushed load records, not heard from at all for
  `stale_secs` (its stream went quiet and nothing else reached it either: no load poll answer, probe or
  token). Excluded as unreachable until its next contact. A worker that never pushed a load record is
  not judged by it: its silence may just be idleness between polls.

Every change of any state moves the availability epoch (availability.py), which selection's
cache of "all available" fleets depends on. 0 disables each check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from shepherd.periodic import Periodic
from shepherd.workers import availability


class _Load(Protocol):
    """What is read of the engine's load report (worker.LoadSnapshot)."""

    @property
    def gen_throughput(self) -> float: ...
    @property
    def waiting(self) -> int: ...
    @property
    def waiting_uncached_tokens(self) -> int: ...


class Worker(Protocol):
    """What is read of a worker (worker.Worker, which holds its Liveness: a protocol, not an import)."""

    @property
    def url(self) -> str: ...
    @property
    def load(self) -> int: ...
    @property
    def snapshot(self) -> _Load | None: ...
    @property
    def liveness(self) -> Liveness | None: ...

log = logging.getLogger("shepherd.liveness")

PREFILL_TOKENS_PER_SEC = 10_000.0  # a modest single-engine prefill rate: the stretch errs long, not short
MAX_WEDGE_SECS = 120.0
DEEP = 4  # in flight at once with no progress: wedged without needing growth


class Liveness:
    """One worker's contact and progress times, and whether it is stalled or wedged."""

    __slots__ = ("stall_secs", "wedge_secs", "stale_secs", "last_contact", "last_progress", "stalled", "wedged",
                 "stale", "pushes_load", "_load_then", "_waiting_then", "_count", "on_stall")

    def __init__(self, stall_secs: float, wedge_secs: float, count: Callable[[str], None] | None = None,
                 now: float | None = None, stale_secs: float = 0.0) -> None:
        now = time.monotonic() if now is None else now
        self.stall_secs = stall_secs
        self.wedge_secs = wedge_secs
        self.stale_secs = stale_secs
        self.last_contact = now  # registration: the manager just spoke to it
        self.last_progress = now  # or the moment it last went from idle to busy
        self.stalled = False
        self.wedged = False
        self.stale = False
        self.pushes_load = False  # its KV-event stream has carried a load record: judged stale by silence
        self._load_then = 0  # in flight, and engine waiting queue, at last_progress: "growing" is above these
        self._waiting_then = 0
        self._count = count  # exclusions, by reason ("stall", "wedge"), for the metric
        self.on_stall: Callable[[Worker], None] | None = None  # a stall is a verdict for the fleet (the mesh)

    @property
    def admits(self) -> bool:
        return not (self.stalled or self.wedged or self.stale)

    def contact(self, now: float | None = None) -> None:
        self.last_contact = time.monotonic() if now is None else now
        if self.stalled or self.stale:
            self.stalled = self.stale = False
            availability.changed()

    def load_pushed(self, now: float | None = None) -> None:
        """The worker's KV-event stream carried a load record: contact, and from now on it is judged stale
        when silent for stale_secs."""
        self.pushes_load = True
        self.contact(now)

    def progress(self, worker: Worker, now: float | None = None) -> None:
        """A token, a chunk or a whole answer: contact, and the wedge clock starts over."""
        now = time.monotonic() if now is None else now
        self.contact(now)
        self._mark(worker, now)
        if self.wedged:
            self.wedged = False
            availability.changed()

    def busy(self, worker: Worker, now: float | None = None) -> None:
        """The worker just took its first request after being idle: idle time is not silence."""
        self._mark(worker, time.monotonic() if now is None else now)

    def transport_failed(self, worker: Worker, now: float | None = None) -> None:
        """A request got no HTTP status from the worker (connect refused, reset)."""
        now = time.monotonic() if now is None else now
        if self.stall_secs > 0 and not self.stalled and now - self.last_contact >= self.stall_secs:
            self.stalled = True
            availability.changed()
            log.warning("worker %s stalled: no contact for %.1fs and a transport failure; out of routing until "
                        "it is heard from", worker.url, now - self.last_contact)
            if self._count is not None:
                self._count("stall")
            if self.on_stall is not None:
                self.on_stall(worker)

    def judge(self, worker: Worker, now: float | None = None) -> None:
        """Whether the worker is stale or wedged now (the sweeper calls this)."""
        now = time.monotonic() if now is None else now
        self._judge_stale(worker, now)
        if self.wedge_secs > 0:
            self._judge_wedge(worker, now)

    def _judge_stale(self, worker: Worker, now: float) -> None:
        if self.stale_secs <= 0 or not self.pushes_load or self.stale or now - self.last_contact < self.stale_secs:
            return
        self.stale = True
        availability.changed()
        log.warning("worker %s stale: its load reports stopped and nothing was heard from it for %.1fs; out of "
                    "routing until it is heard from", worker.url, now - self.last_contact)
        if self._count is not None:
            self._count("stale")

    def _judge_wedge(self, worker: Worker, now: float) -> None:
        load = worker.load
        if load <= 0:
            self._mark(worker, now)  # idle: nothing is owed, so no silence accrues
            if self.wedged:  # its pile drained (failed or cancelled): nothing left to wait behind
                self.wedged = False
                availability.changed()
            return
        if self.wedged:
            return
        snapshot = worker.snapshot
        if snapshot is not None and snapshot.gen_throughput > 0:
            return  # its last load report (a failed poll clears it) shows it generating: busy, not wedged
        waiting = snapshot.waiting if snapshot is not None else 0
        if not (load >= DEEP or load > self._load_then or waiting > self._waiting_then):
            return
        if now - self.last_progress < self.bound(worker):
            return
        self.wedged = True
        availability.changed()
        log.warning("worker %s wedged: %d in flight and no progress for %.1fs; no new requests until it makes "
                    "progress", worker.url, load, now - self.last_progress)
        if self._count is not None:
            self._count("wedge")

    def bound(self, worker: Worker) -> float:
        """wedge_secs, stretched to the prefill its engine still has queued (up to MAX_WEDGE_SECS)."""
        snapshot = worker.snapshot
        queued = snapshot.waiting_uncached_tokens if snapshot is not None else 0
        return max(self.wedge_secs, min(MAX_WEDGE_SECS, queued / PREFILL_TOKENS_PER_SEC))

    def _mark(self, worker: Worker, now: float) -> None:
        self.last_progress = now
        self._load_then = worker.load
        snapshot = worker.snapshot
        self._waiting_then = snapshot.waiting if snapshot is not None else 0


def sweep_interval(wedge_secs: float, stale_secs: float = 0.0) -> float:
    """A few judgements per bound, so a wedge or staleness is seen at most a quarter bound late."""
    bounds = [b for b in (wedge_secs, stale_secs) if b > 0] or [wedge_secs]
    return max(0.05, min(0.5, min(bounds) / 4))


class LivenessSweeper:
    """Judges every worker's wedge and stale state a few times per --worker-wedge-secs / --worker-stale-secs."""

    def __init__(self, workers: Callable[[], Iterable[Worker]], wedge_secs: float, stale_secs: float = 0.0) -> None:
        self._workers = workers
        self._loop = Periodic("liveness sweep", sweep_interval(wedge_secs, stale_secs), self.sweep_once, log)
        self.enabled = wedge_secs > 0 or stale_secs > 0

    def start(self) -> None:
        if self.enabled:
            self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def sweep_once(self) -> None:
        now = time.monotonic()
        for worker in self._workers():
            liveness = worker.liveness
            if liveness is not None:
                liveness.judge(worker, now)
