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


def test_thresholds_are_checked() -> None:
    for bad in ({"worker_overload_waiting_requests": 0}, {"worker_overload_token_usage": 0.0},
                {"worker_overload_token_usage": 1.5}):
        with pytest.raises(ConfigError):
            GatewayConfig(**bad).validate()  # type: ignore[arg-type]
