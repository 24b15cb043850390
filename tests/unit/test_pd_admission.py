"""Slots with queues in front (middleware/slots.py) and PD admission on them: per-prefill-worker slots with
one bounded queue and a timeout, and the decode engine's running window with --pd-admission-wait-secs."""

from __future__ import annotations

import asyncio

import pytest

from shepherd.config import ConfigError, PdAdmissionConfig
from shepherd.errors import GatewayError
from shepherd.middleware.slots import Slot, SlotQueue
from shepherd.routers.http.pd_admission import PdAdmission
from shepherd.workers.overload import OverloadShed
from shepherd.workers.worker import LoadSnapshot, Worker, WorkerType

pytestmark = pytest.mark.unit


def _worker(name: str, kind: WorkerType = WorkerType.PREFILL, window: int | None = None) -> Worker:
    worker = Worker(id=name, url=f"http://{name}", model_ids=("m",), worker_type=kind)
    if window is not None:
        worker.snapshot = LoadSnapshot(max_running=window)
    return worker


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- SlotQueue ----------------------------------------------------------------------------------------

async def test_a_released_slot_goes_to_the_oldest_waiter_of_the_highest_class() -> None:
    slots = SlotQueue(1, classes=2)
    assert slots.try_take() and not slots.try_take()
    order: list[str] = []

    async def wait(name: str, rank: int) -> None:
        assert await slots.wait(rank, 30)
        order.append(name)

    tasks = [asyncio.create_task(wait(name, rank)) for name, rank in (("low", 0), ("high-1", 1), ("high-2", 1))]
    await _settle()
    assert slots.queued == 3 and slots.waiting(1) == 2
    for _ in range(3):
        slots.release()
        await _settle()
    await asyncio.gather(*tasks)
    assert order == ["high-1", "high-2", "low"] and slots.in_flight == 1 and slots.queued == 0
    slots.release()
    assert slots.in_flight == 0 and slots.try_take()  # nobody waits: the slot is free again


async def test_a_wait_that_runs_out_leaves_the_queue() -> None:
    slots = SlotQueue(1)
    assert slots.try_take()
    assert await slots.wait(0, 0.01) is False
    assert slots.queued == 0
    slots.release()
    assert slots.in_flight == 0


async def test_a_cancelled_waiter_passes_a_slot_it_was_just_given() -> None:
    slots = SlotQueue(1)
    assert slots.try_take()
    leaving = asyncio.create_task(slots.wait(0, 30))
    staying = asyncio.create_task(slots.wait(0, 30))
    await _settle()
    leaving.cancel()
    slots.release()  # handed to `leaving` as it is cancelled: it passes the slot on, or keeps it
    await _settle()
    if not leaving.cancelled() and leaving.result() is True:  # the wait finished first: it holds the slot
        slots.release()
    assert await asyncio.wait_for(staying, 5) is True and slots.in_flight == 1 and slots.queued == 0


async def test_growing_the_limit_admits_waiters_and_preemption_answers_the_newest_lower_one() -> None:
    slots = SlotQueue(1, classes=2)
    assert slots.try_take()
    waiters = [asyncio.create_task(slots.wait(0, 30)) for _ in range(3)]
    await _settle()
    slots.resize(2)
    await _settle()
    assert waiters[0].done() and waiters[0].result() is True and slots.in_flight == 2
    assert slots.preempt_below(1, lambda: GatewayError(503, "scheduler_preempted", "x"))
    with pytest.raises(GatewayError):
        await waiters[2]  # the newest went
    assert not slots.preempt_below(0, lambda: GatewayError(503, "x", "x"))  # nothing below the lowest class
    waiters[1].cancel()
    await _settle()
    assert slots.queued == 0


def test_a_slot_handle_releases_once() -> None:
    slots = SlotQueue(1)
    assert slots.try_take()
    slot = Slot(slots)
    slot.release()
    slot.release()
    assert slots.in_flight == 0
    Slot().release()  # an empty one (no limit applied) is harmless


# -- prefill admission ---------------------------------------------------------------------------------

async def test_prefill_slots_per_worker_with_one_bounded_queue() -> None:
    admission = PdAdmission(PdAdmissionConfig(prefill_max_inflight=1, prefill_queue_size=1))
    a, b = _worker("a"), _worker("b")
    held = await admission.prefill(a, 30)
    assert not admission.prefill_room(a) and admission.prefill_room(b)
    other = await admission.prefill(b, 30)  # slots are per worker
    waiting = asyncio.create_task(admission.prefill(a, 30))
    await _settle()
    assert admission.prefill_waiting == 1
    with pytest.raises(GatewayError) as full:
        await admission.prefill(b, 30)  # the one queue place, over all workers, is taken
    assert full.value.status == 429 and full.value.code == "prefill_queue_full"
    assert full.value.headers["Retry-After"]
    held.release()
    next_slot = await waiting
    assert admission.prefill_waiting == 0 and not admission.prefill_room(a)
    next_slot.release()
    other.release()
    assert admission.prefill_room(a) and admission.prefill_room(b)


async def test_a_prefill_wait_times_out_with_503_within_the_request_deadline() -> None:
    admission = PdAdmission(PdAdmissionConfig(prefill_max_inflight=1, prefill_queue_timeout_secs=60))
    a = _worker("a")
    await admission.prefill(a, 30)
    with pytest.raises(GatewayError) as late:
        await admission.prefill(a, 0.01)  # the request's own deadline is nearer than the queue timeout
    assert late.value.status == 503 and late.value.code == "prefill_queue_timeout"
    assert late.value.headers["Retry-After"] and admission.prefill_waiting == 0


async def test_prefill_admission_is_off_by_default_and_queueing_can_be_disabled() -> None:
    off = PdAdmission(PdAdmissionConfig())
    a = _worker("a")
    slots = [await off.prefill(a, 1) for _ in range(50)]
    assert off.prefill_room(a) and all(isinstance(s, Slot) for s in slots)
    no_queue = PdAdmission(PdAdmissionConfig(prefill_max_inflight=1, prefill_queue_size=0))
    await no_queue.prefill(a, 1)
    with pytest.raises(GatewayError, match="waiting is disabled"):
        await no_queue.prefill(a, 1)


def test_the_config_defaults_and_bounds() -> None:
    config = PdAdmissionConfig()
    assert (config.decode_wait_secs, config.prefill_enabled, config.queue_size, config.queue_timeout_secs) == (
        30.0, False, 100, 60.0)
    for bad in (PdAdmissionConfig(decode_wait_secs=-1), PdAdmissionConfig(prefill_queue_size=-1),
                PdAdmissionConfig(prefill_queue_timeout_secs=0)):
        with pytest.raises(ConfigError):
            bad.validate()


# -- decode running window -------------------------------------------------------------------------------

async def test_the_decode_window_waits_then_sheds() -> None:
    shed: list[int] = []
    admission = PdAdmission(PdAdmissionConfig(decode_wait_secs=30), lambda: shed.append(1))
    decode = _worker("d", WorkerType.DECODE, window=1)
    first = await admission.decode(decode, 30)
    waiting = asyncio.create_task(admission.decode(decode, 30))
    await _settle()
    assert not waiting.done()
    first.release()
    second = await waiting
    with pytest.raises(OverloadShed) as refused:
        await admission.decode(decode, 0.01)  # nothing frees up within the request's time left
    assert refused.value.status == 503 and refused.value.code == "worker_overload_protection_shed"
    assert refused.value.headers["Retry-After"] and shed == [1]
    decode.snapshot = LoadSnapshot(max_running=2)  # the engine's window grew: the next one fits
    third = await admission.decode(decode, 30)
    second.release()
    third.release()


async def test_a_zero_wait_sheds_at_once_and_an_engine_without_a_window_is_never_gated() -> None:
    admission = PdAdmission(PdAdmissionConfig(decode_wait_secs=0))
    decode = _worker("d", WorkerType.DECODE, window=1)
    await admission.decode(decode, 30)
    with pytest.raises(OverloadShed):
        await admission.decode(decode, 30)
    unreported = _worker("u", WorkerType.DECODE)
    for _ in range(10):
        await admission.decode(unreported, 30)
    unreported.snapshot = LoadSnapshot()  # a report without max_running_requests
    await admission.decode(unreported, 30)


def test_the_load_report_carries_the_running_window() -> None:
    from shepherd.workers.load_monitor import _parse_loads, _snapshot

    body = b'{"loads": [{"dp_rank": 0, "num_running_reqs": 3, "max_running_requests": 256}, ' \
           b'{"dp_rank": 1, "max_running_requests": 256}]}'
    assert _snapshot(_parse_loads(body), 1, 0.0).max_running == 512  # a worker's window spans its ranks
    assert _snapshot(_parse_loads(b'{"loads": [{"num_running_reqs": 3}]}'), 1, 0.0).max_running == 0
