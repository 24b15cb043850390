"""Worker overload protection: an engine whose own load report (workers/load_monitor.py) shows a long
queue or a nearly full KV cache is left out of routing while another worker can serve.

A worker is overloaded when its last report has `waiting >= --worker-overload-waiting-requests` (8) or
`token_usage >= --worker-overload-token-usage` (0.8); no report (not polled yet, a failed poll) means not
overloaded, so stale numbers never veto a worker. The waiting count is the report's moved by what this
gateway sent to the worker and saw finish since (`LoadSnapshot.waiting_now`), so a veto ends when the
queue drains rather than at the next poll, and engines that reported short queues are vetoed once this
gateway has filled them.

When every worker a request could use is overloaded, the veto cannot prefer one of them. A policy that
weighs loads itself (`Policy.balances_load`: cache_aware, precise_cache, prefix_hash, least_load,
power_of_two) then chooses among them all; for the others the least loaded serves (SMG 1.13 does that
for every policy: on a busy fleet it sent cache_aware's requests wherever the queue was shortest, and
multi-turn chat on engines that evict constantly lost 13 points of hit rate to it, see bench/README).
With `--worker-overload-shed` the request is refused instead: 503
`worker_overload_protection_shed` with Retry-After the load poll interval, not retried on another worker
(they are all overloaded). `--disable-worker-overload-protection` turns the check off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from shepherd.config import GatewayConfig
from shepherd.errors import GatewayError
from shepherd.workers.worker import Worker


class OverloadShed(GatewayError):
    """Every candidate is overloaded and --worker-overload-shed is set: not worth retrying elsewhere."""


class OverloadGuard:
    def __init__(self, waiting_requests: int, token_usage: float, shed: bool, retry_after_secs: float,
                 count_shed: Callable[[], None] | None = None) -> None:
        self._waiting = waiting_requests
        self._usage = token_usage
        self._shed = shed
        self._retry_after = str(max(1, math.ceil(retry_after_secs)))
        self._count_shed = count_shed

    @classmethod
    def from_config(cls, config: GatewayConfig, count_shed: Callable[[], None] | None = None) -> OverloadGuard | None:
        if not config.worker_overload_protection:
            return None
        return cls(config.worker_overload_waiting_requests, config.worker_overload_token_usage,
                   config.worker_overload_shed, config.load_monitor_interval_secs, count_shed)

    def overloaded(self, worker: Worker) -> bool:
        report = worker.snapshot
        return report is not None and (report.waiting_now(worker.load) >= self._waiting
                                       or report.token_usage >= self._usage)

    def screen(self, available: Sequence[Worker], what: str, policy_balances: bool = False) -> Sequence[Worker]:
        """The workers routing may choose from: those not overloaded; when none is, the least loaded one,
        or all of them for a policy that balances load itself (or an OverloadShed)."""
        fit = [worker for worker in available if not self.overloaded(worker)]
        if fit or not available:
            return fit
        if self._shed:
            if self._count_shed is not None:
                self._count_shed()
            raise OverloadShed(503, "worker_overload_protection_shed", f"Every one of the {what} is overloaded "
                               "(its queue or KV cache is over the gateway's thresholds)",
                               headers={"Retry-After": self._retry_after})
        if policy_balances:
            return available
        return [min(available, key=_load)]


def _load(worker: Worker) -> tuple[int, float, int]:
    report = worker.snapshot
    assert report is not None  # every worker here is overloaded, which takes a report
    return report.waiting_now(worker.load), report.token_usage, worker.load
