"""Selection skips re-walking the fleet's availability and the registry's filters on every request,
and still sees every change: a status write, a breaker opening, a half-open breaker's trial slots
filling, a registry mutation."""

from __future__ import annotations

import pytest

from shepherd.config import BreakerConfig
from shepherd.errors import GatewayError
from shepherd.policies.base import Policy, RoutingRequest
from shepherd.policies.registry import PolicyRegistry
from shepherd.routers.common.selection import Selector
from shepherd.workers.circuit_breaker import BreakerState, CircuitBreaker
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker, WorkerStatus

ROUTING = RoutingRequest("/v1/chat/completions", {}, {})


class Offered(Policy):
    """Remembers what it was offered; picks the first."""

    name = "offered"

    def __init__(self) -> None:
        self.offered: list[tuple[Worker, ...]] = []

    def select(self, workers, request):  # type: ignore[no-untyped-def]
        self.offered.append(tuple(workers))
        return workers[0]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _setup(count: int = 3) -> tuple[WorkerRegistry, Selector, Offered, list[Worker], Clock]:
    registry = WorkerRegistry()
    clock = Clock()
    workers = [Worker(f"w{i}", f"http://w{i}", ("m",), breaker=CircuitBreaker(
        BreakerConfig(failure_threshold=1, success_threshold=1, timeout_secs=5), clock)) for i in range(count)]
    for worker in workers:
        registry.add(worker)
    return registry, Selector(registry, PolicyRegistry("round_robin", registry=registry), None), Offered(), \
        workers, clock


def _offered(selector: Selector, policy: Offered, exclude: frozenset[Worker] = frozenset()) -> set[str]:
    selector.pick(selector.candidates("m", "http"), ROUTING, exclude, "m", policy)
    return {w.id for w in policy.offered[-1]}


def test_registry_views_are_the_same_tuple_until_a_mutation() -> None:
    registry, selector, _, workers, _ = _setup()
    first = selector.candidates("m", "http")
    assert first is selector.candidates("m", "http") and first == tuple(workers)
    assert registry.for_model("m", connection_mode="grpc") == ()
    registry.add(Worker("g", "http://g", ("m",), connection_mode="grpc"))
    assert selector.candidates("m", "http") == first and selector.candidates("m", "grpc")[0].id == "g"
    registry.remove("w1")
    assert [w.id for w in selector.candidates("m", "http")] == ["w0", "w2"]


def test_a_status_write_is_seen_by_the_next_pick() -> None:
    _, selector, policy, workers, _ = _setup()
    assert _offered(selector, policy) == {"w0", "w1", "w2"}
    assert _offered(selector, policy) == {"w0", "w1", "w2"}  # from the cache
    workers[1].status = WorkerStatus.NOT_READY
    assert _offered(selector, policy) == {"w0", "w2"}
    workers[1].status = WorkerStatus.READY
    assert _offered(selector, policy) == {"w0", "w1", "w2"}


def test_breaker_states_are_seen_by_the_next_pick() -> None:
    _, selector, policy, workers, clock = _setup()
    assert _offered(selector, policy) == {"w0", "w1", "w2"}
    breaker = workers[2].breaker
    assert breaker is not None
    breaker.record(503)  # one failure opens it (failure_threshold=1)
    assert breaker.state is BreakerState.OPEN
    assert _offered(selector, policy) == {"w0", "w1"}
    clock.now = 10  # past the open timeout: half-open, one trial slot
    assert _offered(selector, policy) == {"w0", "w1", "w2"}
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.on_dispatch()  # the trial slot is taken: no epoch moves, yet it must not be offered
    assert _offered(selector, policy) == {"w0", "w1"}
    breaker.record(200)  # the trial succeeded: closed
    assert _offered(selector, policy) == {"w0", "w1", "w2"}


def test_exclusions_and_the_repeat_rule_are_unchanged() -> None:
    _, selector, policy, workers, _ = _setup()
    assert _offered(selector, policy, frozenset(workers[:1])) == {"w1", "w2"}
    assert _offered(selector, policy, frozenset(workers)) == {"w0", "w1", "w2"}  # all tried: a repeat
    workers[0].status = WorkerStatus.NOT_READY
    assert _offered(selector, policy, frozenset(workers[1:])) == {"w1", "w2"}  # a repeat, of the available
    registry = selector.registry
    once = Selector(registry, selector.policies, None, repeat_when_all_tried=False)
    with pytest.raises(GatewayError) as refused:
        once.pick(once.candidates("m", "http"), ROUTING, frozenset(workers[1:]), "m", policy)
    assert refused.value.status == 503
