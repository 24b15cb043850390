from __future__ import annotations

import asyncio

import pytest

from shepherd.config import AdmissionConfig, BreakerConfig
from shepherd.errors import GatewayError
from shepherd.middleware.admission import AdmissionController
from shepherd.workers.circuit_breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(**config: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerConfig(**config), clock), clock  # type: ignore[arg-type]


def test_breaker_opens_after_consecutive_failures_and_ignores_4xx_and_429() -> None:
    cb, _ = breaker(failure_threshold=3)
    for status in (500, 502, 400, 503, 429, 504):
        cb.on_dispatch()
        cb.record(status)
    assert cb.state is BreakerState.CLOSED  # the 400 reset the run; 429 counted neither way
    cb.record(None)
    assert cb.state is BreakerState.OPEN and not cb.allows()


def test_failures_outside_the_window_do_not_add_up() -> None:
    cb, clock = breaker(failure_threshold=2, window_secs=10)
    cb.record(500)
    clock.now = 11
    cb.record(500)
    assert cb.state is BreakerState.CLOSED
    cb.record(500)
    assert cb.state is BreakerState.OPEN


def test_half_open_admits_limited_trials_then_closes() -> None:
    cb, clock = breaker(failure_threshold=1, success_threshold=2, timeout_secs=5)
    cb.record(500)
    assert not cb.allows()
    clock.now = 5
    assert cb.allows() and cb.state is BreakerState.HALF_OPEN
    cb.on_dispatch()
    cb.on_dispatch()
    assert not cb.allows()  # both trial slots are taken: the rest of the traffic goes elsewhere
    cb.record(200)
    assert cb.allows() and cb.state is BreakerState.HALF_OPEN
    cb.on_dispatch()
    cb.record(200)
    cb.record(200)
    assert cb.state is BreakerState.CLOSED


def test_half_open_failure_reopens_and_client_aborts_free_the_slot() -> None:
    cb, clock = breaker(failure_threshold=1, success_threshold=1, timeout_secs=1)
    cb.record(503)
    clock.now = 1
    assert cb.allows()
    cb.on_dispatch()
    assert not cb.allows()
    cb.release()  # the client left: no verdict, but the slot is free
    assert cb.allows()
    cb.on_dispatch()
    cb.record(None)
    assert cb.state is BreakerState.OPEN and not cb.allows()


def test_disabled_breaker_never_opens() -> None:
    cb, _ = breaker(failure_threshold=1, disabled=True)
    for _ in range(5):
        cb.record(500)
    assert cb.allows()


async def test_concurrency_limit_queues_in_order_and_rejects_overflow() -> None:
    admission = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_size=2, queue_timeout_secs=5))
    first = await admission.acquire(None)
    order: list[int] = []

    async def wait(i: int) -> None:
        ticket = await admission.acquire(None)
        order.append(i)
        admission.release(ticket)

    waiters = [asyncio.ensure_future(wait(i)) for i in range(2)]
    await asyncio.sleep(0.01)
    assert admission.queue_depth == 2
    with pytest.raises(GatewayError) as full:
        await admission.acquire(None)
    assert full.value.status == 429 and full.value.headers["Retry-After"]
    admission.release(first)
    await asyncio.gather(*waiters)
    assert order == [0, 1] and admission.in_flight == 0


async def test_queue_timeout_is_503() -> None:
    admission = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_size=5, queue_timeout_secs=0.05))
    held = await admission.acquire(None)
    with pytest.raises(GatewayError) as timeout:
        await admission.acquire(None)
    assert timeout.value.status == 503 and timeout.value.code == "admission_queue_timeout"
    admission.release(held)
    admission.release(await admission.acquire(None))
    assert admission.in_flight == 0


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    admission = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_size=5, queue_timeout_secs=5))
    held = await admission.acquire(None)
    waiter = asyncio.ensure_future(admission.acquire(None))
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    admission.release(held)
    admission.release(await admission.acquire(None))
    assert admission.in_flight == 0


async def test_rate_limits_global_and_per_key() -> None:
    admission = AdmissionController(AdmissionConfig(rate_limit_tokens_per_second=2))
    for _ in range(2):
        admission.release(await admission.acquire(None))
    with pytest.raises(GatewayError) as limited:
        await admission.acquire(None)
    assert limited.value.status == 429 and int(limited.value.headers["Retry-After"]) >= 1

    per_key = AdmissionController(AdmissionConfig(per_key_max_concurrent_requests=1))
    alice = await per_key.acquire("Bearer alice")
    with pytest.raises(GatewayError) as busy:
        await per_key.acquire("Bearer alice")
    assert busy.value.status == 429
    bob = await per_key.acquire("Bearer bob")  # another key is not affected
    per_key.release(alice)
    per_key.release(bob)
    per_key.release(await per_key.acquire("Bearer alice"))
