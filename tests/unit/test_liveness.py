"""Stall and wedge detection (workers/liveness.py): who is excluded, when, what lifts it, and that
every change moves the availability epoch selection's cache depends on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shepherd.cli import build_parser, config_from_args
from shepherd.config import ConfigError, GatewayConfig
from shepherd.errors import GatewayError
from shepherd.policies.base import Policy, RoutingRequest
from shepherd.policies.registry import PolicyRegistry
from shepherd.routers.common.attempt import Attempt
from shepherd.routers.common.selection import Selector
from shepherd.transport.errors import UpstreamError, UpstreamTimeout
from shepherd.workers import availability
from shepherd.workers.liveness import MAX_WEDGE_SECS, PREFILL_TOKENS_PER_SEC, Liveness, LivenessSweeper
from shepherd.workers.load_monitor import LoadMonitor
from shepherd.workers.manager import WorkerManager
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import LoadSnapshot, Worker

ROUTING = RoutingRequest("/v1/chat/completions", {}, {})


class First(Policy):
    name = "first"

    def select(self, workers, request):  # type: ignore[no-untyped-def]
        return workers[0]


def _config(*flags: str):  # type: ignore[no-untyped-def]
    return config_from_args(build_parser().parse_args(["launch", *flags]))


def test_the_flags_default_as_smg_and_reject_negatives() -> None:
    defaults = _config()
    assert (defaults.worker_stall_secs, defaults.worker_wedge_secs, defaults.worker_stale_secs) == (2.0, 3.0, 15.0)
    assert _config("--worker-stale-secs", "0").worker_stale_secs == 0.0
    with pytest.raises(ConfigError, match="--worker-stale-secs"):
        _config("--worker-stale-secs", "-1").validate()
    off = _config("--worker-stall-secs", "0", "--worker-wedge-secs", "0.5")
    assert (off.worker_stall_secs, off.worker_wedge_secs) == (0.0, 0.5)
    with pytest.raises(ConfigError, match="--worker-stall-secs"):
        _config("--worker-wedge-secs", "-1").validate()


def _worker(name: str = "w0", stall: float = 2.0, wedge: float = 3.0, counted: list[str] | None = None) -> Worker:
    return Worker(name, f"http://{name}", ("m",),
                  liveness=Liveness(stall, wedge, counted.append if counted is not None else None, now=0.0))


def _fleet(count: int = 2) -> tuple[Selector, list[Worker]]:
    registry = WorkerRegistry()
    workers = [_worker(f"w{i}") for i in range(count)]
    for worker in workers:
        registry.add(worker)
    return Selector(registry, PolicyRegistry("round_robin", registry=registry), None), workers


def _offered(selector: Selector) -> set[str]:
    offered: list[tuple[Worker, ...]] = []

    class Recording(First):
        def select(self, workers, request):  # type: ignore[no-untyped-def]
            offered.append(tuple(workers))
            return workers[0]

    selector.pick(selector.candidates("m", "http"), ROUTING, frozenset(), "m", Recording())
    return {w.id for w in offered[-1]}


def _live(worker: Worker) -> Liveness:
    assert worker.liveness is not None
    return worker.liveness


# -- stall --------------------------------------------------------------------------------------------

def test_a_transport_failure_stalls_only_a_worker_silent_for_stall_secs() -> None:
    counted: list[str] = []
    worker = _worker(counted=counted)
    live = _live(worker)
    live.transport_failed(worker, now=1.9)  # heard from (registered) 1.9 s ago: not yet silent
    assert worker.is_available and counted == []
    live.contact(now=5.0)
    live.transport_failed(worker, now=6.0)
    assert worker.is_available
    before = availability.epoch()
    live.transport_failed(worker, now=7.0)  # 2 s without contact, then a failure: stalled
    assert live.stalled and not worker.is_available
    assert availability.epoch() != before
    assert counted == ["stall"]
    live.transport_failed(worker, now=9.0)  # already out: not counted again
    assert counted == ["stall"]


def test_silence_alone_does_not_stall() -> None:
    worker = _worker()
    _live(worker).judge(worker, now=1000.0)
    assert worker.is_available


def test_the_first_contact_readmits_a_stalled_worker_and_moves_the_epoch() -> None:
    worker = _worker()
    live = _live(worker)
    live.transport_failed(worker, now=10.0)
    before = availability.epoch()
    live.contact(now=11.0)
    assert worker.is_available and availability.epoch() != before
    unchanged = availability.epoch()
    live.contact(now=12.0)  # nothing changed: the cache stays valid
    assert availability.epoch() == unchanged


def test_stall_secs_zero_disables_the_stall_check() -> None:
    worker = _worker(stall=0.0)
    _live(worker).transport_failed(worker, now=1000.0)
    assert worker.is_available


def test_selection_leaves_a_stalled_worker_out_even_after_caching_the_fleet() -> None:
    selector, (w0, w1) = _fleet()
    assert _offered(selector) == {"w0", "w1"}  # cached as all available
    _live(w0).transport_failed(w0, now=10.0)
    assert _offered(selector) == {"w1"}
    _live(w0).contact(now=11.0)
    assert _offered(selector) == {"w0", "w1"}


def test_every_candidate_excluded_is_a_503_with_retry_after() -> None:
    selector, workers = _fleet()
    for worker in workers:
        _live(worker).transport_failed(worker, now=10.0)
    with pytest.raises(GatewayError) as caught:
        selector.pick(selector.candidates("m", "http"), ROUTING, frozenset(), "m", First())
    assert caught.value.status == 503 and caught.value.code == "no_available_workers"
    assert caught.value.headers == {"Retry-After": "1"}


class _Refusing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def request(self, *args: Any) -> Any:
        raise self.error


async def test_an_attempt_that_cannot_connect_stalls_a_silent_worker_but_a_timeout_does_not() -> None:
    worker = _worker()
    _live(worker).last_contact = -100.0  # silent for long
    attempt = Attempt(worker)
    with pytest.raises(UpstreamTimeout):
        await attempt.send(_Refusing(UpstreamTimeout("slow")), "POST", "/v1/x", {}, b"", 1.0)  # type: ignore[arg-type]
    attempt.close()
    assert worker.is_available  # a slow worker is not a stalled one
    attempt = Attempt(worker)
    with pytest.raises(UpstreamError):
        await attempt.send(_Refusing(UpstreamError("refused")), "POST", "/v1/x", {}, b"", 1.0)  # type: ignore[arg-type]
    attempt.close()
    assert _live(worker).stalled and attempt.outcome.worker_failed


def test_an_answer_is_contact() -> None:
    worker = _worker()
    _live(worker).transport_failed(worker, now=10.0)
    Attempt(worker).answered(503)  # any HTTP status: the worker is reachable
    assert worker.is_available


async def test_a_load_poll_is_contact_and_reported_generation_is_progress() -> None:
    registry = WorkerRegistry()
    worker = Worker("g0", "grpc://g0", ("m",), connection_mode="grpc", liveness=Liveness(2.0, 3.0, now=0.0))
    registry.add(worker)
    rows: list[dict[str, Any]] = [{"num_running_reqs": 4, "gen_throughput": 0.0}]

    async def source(_: Worker) -> list[dict[str, Any]]:
        return rows

    monitor = LoadMonitor(registry, None, 10.0)  # type: ignore[arg-type]
    monitor.register_source("grpc", source)
    live = _live(worker)
    live.transport_failed(worker, now=10.0)
    live.wedged = True
    await monitor.poll_once()
    assert not live.stalled and live.wedged  # answered, but generates nothing
    rows[0]["gen_throughput"] = 50.0
    await monitor.poll_once()
    assert worker.is_available


# -- wedge --------------------------------------------------------------------------------------------

def _busy(worker: Worker, load: int, now: float = 0.0) -> None:
    worker.load = 1
    _live(worker).busy(worker, now)  # what an Attempt does as the worker takes its first request
    worker.load = load


def test_one_request_without_progress_is_not_a_wedge() -> None:
    worker = _worker()
    _busy(worker, 1)
    _live(worker).judge(worker, now=100.0)
    assert worker.is_available


def test_a_growing_pile_without_progress_wedges_after_wedge_secs() -> None:
    counted: list[str] = []
    worker = _worker(counted=counted)
    _busy(worker, 2)
    live = _live(worker)
    live.judge(worker, now=2.9)
    assert worker.is_available
    before = availability.epoch()
    live.judge(worker, now=3.0)
    assert live.wedged and not worker.is_available and availability.epoch() != before
    assert counted == ["wedge"]


def test_four_deep_wedges_without_growth() -> None:
    worker = _worker()
    _busy(worker, 4)
    live = _live(worker)
    live.progress(worker, now=10.0)  # 4 in flight at the last progress: no growth since
    live.judge(worker, now=12.9)
    assert worker.is_available
    live.judge(worker, now=13.0)
    assert live.wedged


def test_a_growing_engine_queue_counts_as_growth() -> None:
    worker = _worker()
    _busy(worker, 1)
    worker.snapshot = LoadSnapshot(waiting=3)
    _live(worker).judge(worker, now=5.0)
    assert _live(worker).wedged


def test_progress_readmits_a_wedged_worker_and_moves_the_epoch() -> None:
    worker = _worker()
    _busy(worker, 5)
    live = _live(worker)
    live.judge(worker, now=5.0)
    before = availability.epoch()
    live.progress(worker, now=6.0)
    assert worker.is_available and availability.epoch() != before
    live.judge(worker, now=8.9)  # the clock started over at the progress
    assert worker.is_available


def test_a_drained_pile_readmits_a_wedged_worker() -> None:
    worker = _worker()
    _busy(worker, 5)
    live = _live(worker)
    live.judge(worker, now=5.0)
    worker.load = 0
    live.judge(worker, now=6.0)
    assert worker.is_available


def test_idle_time_is_not_silence() -> None:
    worker = _worker()
    live = _live(worker)
    live.judge(worker, now=500.0)  # idle since registration
    _busy(worker, 4, now=500.0)
    live.judge(worker, now=502.0)
    assert worker.is_available


def test_a_worker_reported_generating_is_not_wedged() -> None:
    worker = _worker()
    _busy(worker, 8)
    worker.snapshot = LoadSnapshot(running=8, gen_throughput=120.0)
    _live(worker).judge(worker, now=100.0)
    assert worker.is_available
    worker.snapshot = LoadSnapshot(running=8)  # the next report: nothing generated
    _live(worker).judge(worker, now=101.0)
    assert _live(worker).wedged


def test_queued_prefill_stretches_the_bound_up_to_the_cap() -> None:
    worker = _worker()
    _busy(worker, 4)
    live = _live(worker)
    worker.snapshot = LoadSnapshot(waiting_uncached_tokens=int(10 * PREFILL_TOKENS_PER_SEC))
    assert live.bound(worker) == pytest.approx(10.0)
    live.judge(worker, now=9.0)
    assert worker.is_available
    live.judge(worker, now=10.0)
    assert live.wedged
    worker.snapshot = LoadSnapshot(waiting_uncached_tokens=int(1000 * PREFILL_TOKENS_PER_SEC))
    assert live.bound(worker) == MAX_WEDGE_SECS


def test_wedge_secs_zero_disables_the_wedge_check() -> None:
    worker = _worker(wedge=0.0)
    _busy(worker, 10)
    _live(worker).judge(worker, now=1000.0)
    assert worker.is_available


def test_selection_leaves_a_wedged_worker_out_until_it_progresses() -> None:
    selector, (w0, w1) = _fleet()
    assert _offered(selector) == {"w0", "w1"}
    _busy(w0, 4)
    _live(w0).judge(w0, now=5.0)
    assert _offered(selector) == {"w1"}
    _live(w0).progress(w0, now=6.0)
    assert _offered(selector) == {"w0", "w1"}


async def test_the_sweeper_judges_every_tracked_worker() -> None:
    tracked, untracked = _worker("w0"), Worker("w1", "http://w1", ("m",))
    _busy(tracked, 4, now=-100.0)  # long silent: the sweeper's clock is the real one
    untracked.load = 4
    await LivenessSweeper(lambda: [tracked, untracked], 3.0).sweep_once()
    assert _live(tracked).wedged and untracked.is_available
    assert not LivenessSweeper(list, 0.0).enabled


def test_the_manager_tracks_local_engines_only_and_counts_their_exclusions() -> None:
    counted: list[str] = []
    manager = WorkerManager(GatewayConfig(), WorkerRegistry(), None)  # type: ignore[arg-type]
    manager.on_exclusion = counted.append
    assert manager._liveness("openai") is None  # nothing would ever lift a provider's stall
    live = manager._liveness(None)
    assert live is not None and (live.stall_secs, live.wedge_secs) == (2.0, 3.0)
    worker = Worker("w0", "http://w0", ("m",), liveness=live)
    live.transport_failed(worker, now=live.last_contact + 5)
    assert counted == ["stall"]
    off = WorkerManager(GatewayConfig(worker_stall_secs=0, worker_wedge_secs=0, worker_stale_secs=0),  # type: ignore[arg-type]
                        WorkerRegistry(), None)
    assert off._liveness(None) is None


def _pushing(stale: float = 15.0, counted: list[str] | None = None) -> Worker:
    worker = Worker("g0", "grpc://g0", ("m",), connection_mode="grpc",
                    liveness=Liveness(0.0, 0.0, counted.append if counted is not None else None, now=0.0,
                                      stale_secs=stale))
    return worker


def test_a_worker_whose_load_reports_stop_goes_stale_until_heard_from() -> None:
    counted: list[str] = []
    worker = _pushing(counted=counted)
    live = _live(worker)
    live.load_pushed(now=1.0)  # its KV-event stream carried a load record
    live.judge(worker, now=15.9)
    assert worker.is_available
    before = availability.epoch()
    live.judge(worker, now=16.0)  # 15 s of silence: no record, poll answer, probe or token
    assert not worker.is_available and live.stale and counted == ["stale"] and availability.epoch() != before
    assert worker.info()["stale"] is True
    live.judge(worker, now=40.0)
    assert counted == ["stale"]  # judged once per episode
    live.contact(now=41.0)  # any contact (a poll answer, a probe) re-admits it
    assert worker.is_available and not live.stale


def test_a_worker_that_never_pushed_a_load_record_is_not_judged_stale() -> None:
    worker = _pushing()
    live = _live(worker)
    live.contact(now=1.0)  # polls and probes only
    live.judge(worker, now=1000.0)
    assert worker.is_available and not live.stale
    off = _pushing(stale=0.0)
    _live(off).load_pushed(now=1.0)
    _live(off).judge(off, now=1000.0)
    assert off.is_available  # 0: off


async def test_the_sweeper_runs_for_staleness_alone() -> None:
    sweeper = LivenessSweeper(lambda: [], 0.0, 15.0)
    assert sweeper.enabled
    worker = _pushing()
    _live(worker).load_pushed(now=-100.0)  # the sweeper's clock is the real one
    await LivenessSweeper(lambda: [worker], 0.0, 15.0).sweep_once()
    assert _live(worker).stale


class _Call:
    """A SubscribeKvEvents call: the given batches, then the stream stays open."""

    def __init__(self, batches: list[Any]) -> None:
        self._batches = batches

    def __aiter__(self) -> _Call:
        return self

    async def __anext__(self) -> Any:
        if self._batches:
            return self._batches.pop(0)
        await asyncio.Event().wait()  # open, quiet

    def cancel(self) -> None:
        pass


async def test_a_kv_event_batch_with_a_load_record_makes_the_worker_judged_by_staleness() -> None:
    from smg_grpc_proto.generated import common_pb2

    from shepherd.kv.index import KvIndex
    from shepherd.kv.subscriber import KvEventSubscriptions
    from shepherd.workers.registry import RegistryEvent

    quiet, pushing = _pushing(), Worker("g1", "grpc://g1", ("m",), connection_mode="grpc",
                                        liveness=Liveness(0.0, 0.0, now=0.0, stale_secs=15.0))
    batches = {"grpc://g0": [common_pb2.KvEventBatch(sequence_number=0)],
               "grpc://g1": [common_pb2.KvEventBatch(sequence_number=0,
                                                     load=common_pb2.EngineLoad(running_requests=1))]}
    stubs = {url: type("Stub", (), {"SubscribeKvEvents": lambda self, request, calls=calls: _Call(calls)})()
             for url, calls in batches.items()}
    subscriptions = KvEventSubscriptions(KvIndex(16), lambda url: type("Client", (), {"stub": stubs[url]})())
    for worker in (quiet, pushing):
        subscriptions.on_registry_event(RegistryEvent.ADDED, worker)
    for _ in range(20):
        await asyncio.sleep(0)
    await subscriptions.stop()
    assert not _live(quiet).pushes_load and _live(pushing).pushes_load
