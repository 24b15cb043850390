"""Units behind the reliability and security fixes: breaker readmission, bounded metric labels and
off-loop scrapes, log escaping, the admin API's default, the body budget."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shepherd.config import AuthConfig, AuthConfigError, BreakerConfig, ControlPlaneKey, HealthConfig
from shepherd.errors import GatewayError
from shepherd.middleware.auth import Authenticator
from shepherd.middleware.body_budget import BodyBudget
from shepherd.observability.logging import TextFormatter, escape_controls
from shepherd.observability.metrics import Metrics
from shepherd.workers.circuit_breaker import BreakerState, CircuitBreaker
from shepherd.workers.health import HealthChecker
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker, WorkerStatus


def _open_breaker() -> CircuitBreaker:
    cb = CircuitBreaker(BreakerConfig(failure_threshold=1, success_threshold=2, timeout_secs=600))
    cb.record(None)
    assert cb.state is BreakerState.OPEN and not cb.allows()
    return cb


def test_a_healthy_probe_half_opens_an_open_breaker() -> None:
    cb = _open_breaker()
    cb.on_healthy_probe()
    assert cb.state is BreakerState.HALF_OPEN and cb.allows()
    cb.on_dispatch()
    cb.record(200)
    cb.on_dispatch()
    cb.record(200)
    assert cb.state is BreakerState.CLOSED
    closed = CircuitBreaker(BreakerConfig())
    closed.on_healthy_probe()
    assert closed.state is BreakerState.CLOSED


async def test_the_health_checker_readmits_a_worker_whose_breaker_is_open() -> None:
    registry = WorkerRegistry()
    worker = Worker(id="w1", url="grpc://w1", model_ids=("m",), connection_mode="grpc", breaker=_open_breaker(),
                    status=WorkerStatus.NOT_READY)
    registry.add(worker)

    async def healthy(worker: Worker, timeout: float) -> tuple[bool, bool]:  # noqa: ASYNC109 (the Probe signature)
        return True, False

    async with aiohttp.ClientSession() as session:
        checker = HealthChecker(HealthConfig(success_threshold=1), registry, session)
        checker.register_probe("grpc", healthy)
        await checker.check_once()
    assert worker.status is WorkerStatus.READY and worker.is_available  # before the fix: the breaker said no


class _ThreadProbe(Collector):
    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.threads.append(threading.current_thread())
        yield GaugeMetricFamily("probe", "which thread rendered this", value=1)


async def test_scrapes_render_off_the_event_loop_and_model_labels_are_bounded() -> None:
    metrics = Metrics()
    probe = _ThreadProbe()
    metrics.registry.register(probe)  # (registering collects once, here, to describe it)
    probe.threads.clear()
    registry = WorkerRegistry()
    registry.add(Worker(id="w1", url="http://w1", model_ids=("served",)))
    metrics._serves = registry.serves  # what attach() wires to the context's registry
    assert [metrics.model_label(m) for m in ("served", "made-up", None)] == ["served", "unknown", "default"]
    codes = [metrics.error_code_label(f"code-{i}") for i in range(300)]
    assert codes[:256] == [f"code-{i}" for i in range(256)] and set(codes[256:]) == {"other"}
    assert metrics.error_code_label("code-3") == "code-3"
    text = await metrics.exposition()
    assert b"probe 1.0" in text
    assert probe.threads and all(thread is not threading.main_thread() for thread in probe.threads)


def test_every_control_character_is_escaped() -> None:
    assert escape_controls("plain text") == "plain text"
    assert escape_controls("/x\r\nINFO forged\x00\t\x1b[31m\x85\u2028") == \
        "/x\\r\\nINFO forged\\x00\\t\\x1b[31m\\x85\\u2028"
    record = logging.makeLogRecord({"msg": "GET %s", "args": ("/a\nb",), "levelname": "INFO", "name": "t"})
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert line == "INFO GET /a\\nb" and record.getMessage() == "GET /a\nb"


async def test_the_admin_api_needs_a_control_plane_credential() -> None:
    admin = ControlPlaneKey.parse("ops:Ops:admin:secret")
    async with aiohttp.ClientSession() as session:
        for config in (AuthConfig(), AuthConfig(api_keys=("serve",))):
            auth = Authenticator(config, session)
            assert auth.enabled
            with pytest.raises(GatewayError) as closed:
                await auth.check("/workers", {"authorization": "Bearer serve"})
            assert closed.value.status == 403 and closed.value.code == "admin_api_closed"
        opened = Authenticator(AuthConfig(allow_unauthenticated_admin=True), session)
        assert not opened.enabled  # nothing left to check
        keyed = Authenticator(AuthConfig(api_keys=("serve",), control_plane_keys=(admin,)), session)
        await keyed.check("/workers", {"authorization": "Bearer secret"})
        with pytest.raises(GatewayError):
            await keyed.check("/workers", {"authorization": "Bearer serve"})
    for contradictory in (AuthConfig(allow_unauthenticated_admin=True, control_plane_keys=(admin,)),
                          AuthConfig(allow_unauthenticated_admin=True, api_keys=("serve",))):
        with pytest.raises(AuthConfigError):
            contradictory.validate()


def test_the_body_budget_refuses_what_does_not_fit() -> None:
    budget = BodyBudget(100)
    assert budget.take(60) and not budget.take(41) and budget.held == 60
    budget.give_back(60)
    assert budget.take(100) and budget.held == 100
