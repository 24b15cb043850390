"""Worker overload protection in selection: engines over the thresholds are skipped while another can serve;
when all are over, the least loaded serves, or with --worker-overload-shed the request gets a 503."""

from __future__ import annotations

import pytest

from shepherd.config import ConfigError, GatewayConfig
from shepherd.errors import GatewayError
from shepherd.observability.metrics import Metrics
from shepherd.policies.base import RoutingRequest
from shepherd.policies.registry import PolicyRegistry
from shepherd.routers.common.selection import Selector, overload_guard
from shepherd.workers.overload import OverloadShed
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import LoadSnapshot, Worker

pytestmark = pytest.mark.unit


def _workers(*reports: LoadSnapshot | None) -> tuple[WorkerRegistry, list[Worker]]:
    registry = WorkerRegistry()
    workers = [Worker(f"w{i}", f"http://w{i}", ("m",), snapshot=report) for i, report in enumerate(reports)]
    for worker in workers:
        registry.add(worker)
    return registry, workers


def _selector(config: GatewayConfig, registry: WorkerRegistry) -> tuple[Selector, Metrics]:
    metrics = Metrics()
    policies = PolicyRegistry("round_robin", registry=registry)
    return Selector(registry, policies, metrics, overload=overload_guard(config, metrics)), metrics


def _picks(selector: Selector, workers: list[Worker], times: int = 6) -> set[str]:
    return {selector.pick(workers, ROUTING, frozenset(), "m").id for _ in range(times)}


ROUTING = RoutingRequest("/v1/chat/completions", {}, {})
BUSY = LoadSnapshot(waiting=8)
FULL = LoadSnapshot(token_usage=0.8)
CALM = LoadSnapshot(waiting=7, token_usage=0.79)


def test_overloaded_engines_are_skipped_while_another_can_serve() -> None:
    registry, workers = _workers(BUSY, FULL, CALM, None)  # None: no report yet, never vetoed
    selector, _ = _selector(GatewayConfig(), registry)
    assert _picks(selector, workers) == {"w2", "w3"}
    off, _ = _selector(GatewayConfig(worker_overload_protection=False), registry)
    assert _picks(off, workers) == {"w0", "w1", "w2", "w3"}
    strict, _ = _selector(GatewayConfig(worker_overload_waiting_requests=100, worker_overload_token_usage=0.5),
                          registry)
    assert _picks(strict, workers) == {"w0", "w3"}


def test_all_overloaded_goes_to_the_least_loaded_or_sheds() -> None:
    registry, workers = _workers(LoadSnapshot(waiting=20), LoadSnapshot(waiting=9), LoadSnapshot(token_usage=0.9))
    selector, _ = _selector(GatewayConfig(), registry)
    assert _picks(selector, workers) == {"w2"}  # fewest waiting
    shedding, metrics = _selector(GatewayConfig(worker_overload_shed=True, load_monitor_interval_secs=2.5), registry)
    with pytest.raises(OverloadShed) as shed:
        shedding.pick(workers, ROUTING, frozenset(), "m")
    error: GatewayError = shed.value
    assert error.status == 503 and error.code == "worker_overload_protection_shed"
    assert error.headers == {"Retry-After": "3"}
    assert metrics.overload_shed("selection").value == 1


def test_all_overloaded_leaves_the_choice_to_a_policy_that_balances_load_itself() -> None:
    registry, workers = _workers(LoadSnapshot(waiting=20), LoadSnapshot(waiting=9), LoadSnapshot(token_usage=0.9))
    metrics = Metrics()
    policies = PolicyRegistry("cache_aware", registry=registry)
    selector = Selector(registry, policies, metrics, overload=overload_guard(GatewayConfig(), metrics))
    prompt = RoutingRequest("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 400}]}, {})
    holder = selector.pick(workers, prompt, frozenset(), "m")
    assert holder.id == "w0"  # nothing cached yet, equal loads: the first
    holder.load = 1
    # The veto cannot tell the three apart, so the prefix's holder keeps it (within cache_aware's own
    # balance gates), not the one with the shortest reported queue (w2).
    assert {selector.pick(workers, prompt, frozenset(), "m").id for _ in range(5)} == {"w0"}
    fallback, _ = _selector(GatewayConfig(), registry)  # round_robin weighs no load: the least loaded
    assert _picks(fallback, workers) == {"w2"}


def test_the_veto_counts_what_the_gateway_sent_and_saw_finish_since_the_report() -> None:
    # Both reported with 4 of this gateway's requests in flight on them.
    drained, filling = LoadSnapshot(waiting=9, in_flight_at_report=4), LoadSnapshot(waiting=6, in_flight_at_report=4)
    registry, workers = _workers(drained, filling)
    selector, _ = _selector(GatewayConfig(), registry)
    workers[0].load, workers[1].load = 4, 4  # nothing moved: the report stands
    assert _picks(selector, workers) == {"w1"}
    workers[0].load = 2  # two of its requests finished: two waiting ones run, 7 wait
    workers[1].load = 6  # two more sent to it: 8 wait
    assert _picks(selector, workers) == {"w0"}
    workers[0].load = 0  # the estimate never goes below an empty queue
    assert LoadSnapshot(waiting=1, in_flight_at_report=4).waiting_now(0) == 0
    # A report without the gateway's count then (not known) is taken as it stands.
    assert LoadSnapshot(waiting=9).waiting_now(0) == 9


def test_thresholds_are_checked() -> None:
    for bad in ({"worker_overload_waiting_requests": 0}, {"worker_overload_token_usage": 0.0},
                {"worker_overload_token_usage": 1.5}):
        with pytest.raises(ConfigError):
            GatewayConfig(**bad).validate()  # type: ignore[arg-type]


async def test_a_load_report_keeps_the_gateways_in_flight_count_at_the_time() -> None:
    from typing import Any

    from shepherd.workers.load_monitor import LoadMonitor

    registry, (worker,) = _workers(None)
    worker.connection_mode = "grpc"
    worker.load = 3

    async def source(_: Worker) -> list[dict[str, Any]]:
        return [{"num_waiting_reqs": 9}]

    monitor = LoadMonitor(registry, None, 10.0)  # type: ignore[arg-type]
    monitor.register_source("grpc", source)
    await monitor.poll_once()
    assert worker.snapshot is not None and worker.snapshot.in_flight_at_report == 3
    worker.load = 1
    assert worker.snapshot.waiting_now(worker.load) == 7
