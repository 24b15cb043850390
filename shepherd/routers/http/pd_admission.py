"""PD admission: how many requests a prefill worker prefills at once, and the decode engine's running window.

* Prefill (`--prefill-max-inflight-requests-per-worker N`, off by default): a prefill worker runs at most N
  requests in their prefill phase (from dispatch until the prefill's answer is read). Selection prefers a
  prefill worker with a free slot; when the chosen one has none, the request waits for one, with at most
  `--prefill-queue-size` (100) waiting over all prefill workers (past it: 429 `prefill_queue_full`) and
  for at most `--prefill-queue-timeout-secs` (60; then 503 `prefill_queue_timeout`), both with Retry-After.
* Decode (`--pd-admission-wait-secs`, 30): a decode engine that reports its running window
  (`max_running_requests` in its load report) is sent at most that many of this gateway's requests at
  once; a dispatch waits that long for a slot, then is shed with 503 `worker_overload_protection_shed`
  (not retried: the pair was chosen). 0 sheds at once; an engine with no window is never gated.

Slots and queues are middleware/slots.py's, one per worker, dropped with the worker (weak keys).
"""

from __future__ import annotations

from collections.abc import Callable
from weakref import WeakKeyDictionary

from shepherd.config import PdAdmissionConfig
from shepherd.errors import GatewayError
from shepherd.middleware.slots import Slot, SlotQueue
from shepherd.workers.overload import OverloadShed
from shepherd.workers.worker import Worker

RETRY_AFTER = {"Retry-After": "2"}


class PdAdmission:
    def __init__(self, config: PdAdmissionConfig, count_shed: Callable[[], None] | None = None) -> None:
        self._config = config
        self._count_shed = count_shed
        self._prefill: WeakKeyDictionary[Worker, SlotQueue] = WeakKeyDictionary()
        self._decode: WeakKeyDictionary[Worker, SlotQueue] = WeakKeyDictionary()
        self.prefill_waiting = 0  # over every prefill worker: bounded by --prefill-queue-size

    def prefill_room(self, worker: Worker) -> bool:
        """Whether `worker` would admit a prefill now (selection prefers those that would)."""
        if not self._config.prefill_enabled:
            return True
        slots = self._prefill.get(worker)
        return slots is None or (slots.in_flight < slots.limit and not slots.queued)

    async def prefill(self, worker: Worker, remaining: float) -> Slot:
        """A prefill slot on `worker` (release it once the prefill answered; an empty one when the limit is
        off); 429/503 when the queue is full or the wait runs out (`remaining`: the request's time left)."""
        config = self._config
        if not config.prefill_enabled:
            return Slot()
        slots = self._prefill.get(worker)
        if slots is None:
            slots = self._prefill[worker] = SlotQueue(config.prefill_max_inflight)
        if slots.try_take():
            return Slot(slots)
        if self.prefill_waiting >= config.queue_size:
            reason = "waiting is disabled" if config.queue_size == 0 else f"{config.queue_size} requests already wait"
            raise GatewayError(429, "prefill_queue_full", f"Every prefill slot of {worker.url} is taken and {reason}",
                               headers=RETRY_AFTER)
        within = max(0.0, min(config.queue_timeout_secs, remaining))
        self.prefill_waiting += 1
        try:
            admitted = await slots.wait(0, within)
        finally:
            self.prefill_waiting -= 1
        if not admitted:
            raise GatewayError(503, "prefill_queue_timeout", f"No prefill slot of {worker.url} became free "
                               f"within {within:g}s", headers=RETRY_AFTER)
        return Slot(slots)

    async def decode(self, worker: Worker, remaining: float) -> Slot:
        """A slot in `worker`'s running window (release it when the answer is done; an empty one when the
        engine reports no window); an OverloadShed when none frees up within --pd-admission-wait-secs."""
        report = worker.snapshot
        window = report.max_running if report is not None else 0
        if window <= 0:
            return Slot()
        slots = self._decode.get(worker)
        if slots is None:
            slots = self._decode[worker] = SlotQueue(window)
        else:
            slots.resize(window)  # the engine's latest report
        if slots.try_take():
            return Slot(slots)
        wait = min(self._config.decode_wait_secs, max(0.0, remaining))
        if wait > 0 and await slots.wait(0, wait):
            return Slot(slots)
        if self._count_shed is not None:
            self._count_shed()
        raise OverloadShed(503, "worker_overload_protection_shed",
                           f"The decode worker {worker.url} has all {window} requests of its running window in "
                           f"flight and none finished within {wait:g}s",
                           headers=RETRY_AFTER)
