"""The priority scheduler: x-smg-priority classes in the admission queue, tenant caps, preemption of queued
lower classes, and the YAML."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shepherd.config import AdmissionConfig
from shepherd.errors import GatewayError
from shepherd.middleware.admission import AdmissionController
from shepherd.middleware.priority import (
    CLASSES,
    PriorityConfigError,
    load_priority_plan,
    parse_priority_plan,
)

pytestmark = pytest.mark.unit

PLAN = parse_priority_plan({"tenants": {"auth:ops": {"max_class": "system"}, "auth:batch": {"max_class": "bulk"}},
                            "classes": {"bulk": {"queue_size": 1}}})


def _controller(queue_size: int = 3) -> tuple[AdmissionController, list[tuple[str, str | None, str]]]:
    seen: list[tuple[str, str | None, str]] = []
    config = AdmissionConfig(max_concurrent_requests=1, queue_size=queue_size, queue_timeout_secs=30,
                             priority_scheduler_enabled=True)
    return AdmissionController(config, plan=PLAN, count_scheduled=lambda *row: seen.append(row)), seen


def test_the_class_is_the_header_capped_at_the_tenant() -> None:
    assert CLASSES[PLAN.class_of("auth:ops", "system")] == "system"
    assert CLASSES[PLAN.class_of("ip:1.2.3.4", "system")] == "default"  # unlisted: --...-default-max-class
    assert CLASSES[PLAN.class_of("auth:batch", "interactive")] == "bulk"
    assert CLASSES[PLAN.class_of("auth:ops", None)] == "default"  # no header: default
    assert CLASSES[PLAN.class_of(None, " Bulk ")] == "bulk"
    with pytest.raises(GatewayError) as bad:
        PLAN.class_of("auth:ops", "urgent")
    assert bad.value.status == 400 and bad.value.code == "invalid_priority"


async def test_a_freed_slot_goes_to_the_highest_class_waiting() -> None:
    admission, seen = _controller()
    running = await admission.acquire(None, "auth:ops", None, "system")
    order: list[str] = []

    async def wait(tenant: str, klass: str) -> None:
        ticket = await admission.acquire(None, tenant, None, klass)
        order.append(klass)
        await asyncio.sleep(0)
        admission.release(ticket)  # hands the slot on to the next waiter

    tasks = [asyncio.create_task(wait(tenant, klass)) for tenant, klass in
             (("auth:batch", "bulk"), ("x", "default"), ("auth:ops", "system"))]
    await asyncio.sleep(0)
    assert admission.queue_depth == 3
    admission.release(running)
    await asyncio.gather(*tasks)
    assert order == ["system", "default", "bulk"]
    assert admission.in_flight == 0 and admission.queue_depth == 0
    assert ("system", "auth:ops", "admitted") in seen and ("bulk", "auth:batch", "admitted") in seen


async def test_a_full_queue_preempts_the_newest_lower_class_waiter() -> None:
    admission, seen = _controller(queue_size=2)
    running = await admission.acquire(None, "x", None, "default")
    admission.started(running)  # its answer has begun: only the queue's waiters can be preempted
    first = asyncio.create_task(admission.acquire(None, "x", None, "default"))
    newest = asyncio.create_task(admission.acquire(None, "x", None, "default"))
    await asyncio.sleep(0)
    with pytest.raises(GatewayError) as full:  # same class: no one to preempt
        await admission.acquire(None, "x", None, "default")
    assert full.value.status == 429 and full.value.code == "scheduler_queue_full"
    urgent = asyncio.create_task(admission.acquire(None, "auth:ops", None, "system"))
    await asyncio.sleep(0)
    with pytest.raises(GatewayError) as preempted:
        await newest
    assert preempted.value.status == 503 and preempted.value.code == "scheduler_preempted"
    assert preempted.value.headers == {"Retry-After": "1", "X-SMG-Preempted": "true"}
    admission.release(running)
    admission.release(await urgent)  # the system request runs before the older default one
    admission.release(await first)
    assert admission.in_flight == 0 and admission.queue_depth == 0
    assert ("default", "x", "preempted") in seen and admission.rejected["preempted"] == 1


async def test_per_class_queue_bound_and_timeout_codes() -> None:
    admission, _ = _controller()
    running = await admission.acquire(None, "x", None, "default")
    admission.started(running)
    bulk = asyncio.create_task(admission.acquire(None, "auth:batch", None, "bulk"))
    await asyncio.sleep(0)
    with pytest.raises(GatewayError) as full:  # bulk may hold one of the queue's places
        await admission.acquire(None, "auth:batch", None, "bulk")
    assert full.value.code == "scheduler_queue_full"
    bulk.cancel()
    await asyncio.gather(bulk, return_exceptions=True)
    assert admission.queue_depth == 0
    quick = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_timeout_secs=0.01,
                                                priority_scheduler_enabled=True), plan=PLAN)
    held = await quick.acquire(None)
    with pytest.raises(GatewayError) as timed_out:
        await quick.acquire(None)
    assert timed_out.value.status == 503 and timed_out.value.code == "scheduler_queue_timeout"
    quick.release(held)
    admission.release(running)
    assert quick.in_flight == 0 and admission.in_flight == 0


async def test_without_the_scheduler_the_header_is_ignored_and_the_queue_is_fifo() -> None:
    fifo = AdmissionController(AdmissionConfig(max_concurrent_requests=1, queue_size=0))
    held = await fifo.acquire(None, None, None, "not-a-class")
    with pytest.raises(GatewayError) as full:
        await fifo.acquire(None, None, None, "system")
    assert full.value.code == "admission_queue_full"
    fifo.release(held)


async def test_a_waiting_higher_class_preempts_an_admitted_lower_request_that_has_not_answered() -> None:
    admission, seen = _controller()
    release = asyncio.Event()
    outcome: dict[str, object] = {}

    async def handler(tenant: str, klass: str, answer_begins: bool = False) -> None:
        ticket = await admission.acquire(None, tenant, None, klass)
        try:
            if answer_begins:
                admission.started(ticket)
            await release.wait()  # the upstream call; a cancel here is what aborts it
            outcome[klass] = "done"
        except asyncio.CancelledError:
            outcome[klass] = "preempted" if ticket.preempted else "cancelled"
            raise
        finally:
            admission.release(ticket)

    low = asyncio.create_task(handler("auth:batch", "bulk"))
    await asyncio.sleep(0)
    urgent = asyncio.create_task(handler("auth:ops", "system"))
    await asyncio.gather(low, return_exceptions=True)
    assert outcome == {"bulk": "preempted"} and low.cancelled()
    await asyncio.sleep(0)
    assert admission.in_flight == 1 and admission.queue_depth == 0  # the freed slot went to the system request
    release.set()
    await urgent
    assert outcome["system"] == "done" and admission.in_flight == 0
    assert ("bulk", "auth:batch", "preempted") in seen and admission.rejected["preempted"] == 1


async def test_a_request_whose_answer_began_or_of_the_same_class_is_not_preempted() -> None:
    admission, _ = _controller()
    streaming = await admission.acquire(None, "auth:batch", None, "bulk")
    admission.started(streaming)  # its first byte went out: a 503 can no longer be its answer
    urgent = asyncio.create_task(admission.acquire(None, "auth:ops", None, "system"))
    await asyncio.sleep(0)
    assert not streaming.preempted and admission.queue_depth == 1
    admission.release(streaming)
    same = await urgent  # the slot came when the streaming request finished
    other = asyncio.create_task(admission.acquire(None, "auth:ops", None, "system"))
    await asyncio.sleep(0)
    assert not same.preempted and admission.queue_depth == 1  # an equal class waits its turn
    admission.release(same)
    admission.release(await other)
    assert admission.in_flight == 0 and admission.rejected["preempted"] == 0


def test_the_yaml_is_checked(tmp_path: Path) -> None:
    for bad in ([], {"tenants": {"a": {"max_class": "gold"}}}, {"tenants": {"a": {"cap": "bulk"}}},
                {"classes": {"gold": {}}}, {"classes": {"bulk": {"queue_size": -1}}},
                {"classes": {"bulk": {"queue_timeout_secs": 0}}}, {"classes": {"bulk": {"size": 1}}}, {"x": 1}):
        with pytest.raises(PriorityConfigError):
            parse_priority_plan(bad)
    assert load_priority_plan(None, "bulk").default_max_class == CLASSES.index("bulk")
    path = tmp_path / "priority.yaml"
    path.write_text("tenants:\n  'auth:ops': {max_class: system}\n")
    assert load_priority_plan(str(path), "default").tenant_max_class == {"auth:ops": CLASSES.index("system")}
    with pytest.raises(PriorityConfigError, match="No such file"):
        load_priority_plan(str(tmp_path / "missing.yaml"), "default")
    with pytest.raises(PriorityConfigError, match="default-max-class"):
        load_priority_plan(None, "gold")
