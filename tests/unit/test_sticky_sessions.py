"""--routing-key-override: sticky sessions on any policy, and the bounded pin table behind them."""

from __future__ import annotations

import pytest

from shepherd.cli import build_parser, config_from_args
from shepherd.config import PolicyOptions
from shepherd.policies.base import RoutingRequest
from shepherd.policies.manual import ManualPolicy
from shepherd.policies.registry import PolicyRegistry
from shepherd.policies.sticky import PinTable
from shepherd.routers.common.selection import Selector
from shepherd.workers.registry import RegistryEvent, WorkerRegistry
from shepherd.workers.worker import Worker, WorkerStatus

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fleet(count: int = 3, override: bool = True) -> tuple[Selector, PolicyRegistry, list[Worker]]:
    registry = WorkerRegistry()
    workers = [Worker(f"w{i}", f"http://w{i}", ("m",)) for i in range(count)]
    for worker in workers:
        registry.add(worker)
    policies = PolicyRegistry("round_robin", PolicyOptions(routing_key_override=override), registry)
    registry.subscribe(policies.on_registry_event)
    return Selector(registry, policies, None), policies, workers


def _keyed(key: str | None) -> RoutingRequest:
    return RoutingRequest("/v1/chat/completions", {"model": "m"}, {"x-smg-routing-key": key} if key else {})


def _pick(selector: Selector, workers: list[Worker], key: str | None,
          exclude: frozenset[Worker] = frozenset()) -> Worker:
    return selector.pick(workers, _keyed(key), exclude, "m")


def test_a_key_stays_on_its_worker_whatever_round_robin_would_pick() -> None:
    selector, _, workers = _fleet()
    first = _pick(selector, workers, "alice")
    assert {_pick(selector, workers, "alice").url for _ in range(6)} == {first.url}
    # Requests without a key still rotate.
    assert len({_pick(selector, workers, None).url for _ in range(6)}) == 3


def test_without_the_flag_round_robin_ignores_the_key() -> None:
    selector, policies, workers = _fleet(override=False)
    assert policies.sticky is None
    assert len({_pick(selector, workers, "alice").url for _ in range(6)}) == 3


def test_keys_are_per_model() -> None:
    selector, policies, workers = _fleet()
    chosen = _pick(selector, workers, "alice")
    assert policies.sticky is not None
    assert policies.sticky.pinned("m", "alice", workers) is chosen
    assert policies.sticky.pinned("other", "alice", workers) is None


def test_an_unavailable_pinned_worker_is_replaced_and_the_key_repinned() -> None:
    selector, _, workers = _fleet()
    first = _pick(selector, workers, "alice")
    first.status = WorkerStatus.NOT_READY  # health check failed: no longer a candidate
    second = _pick(selector, workers, "alice")
    assert second is not first
    first.status = WorkerStatus.READY  # it comes back, but the key now lives on the new worker
    assert {_pick(selector, workers, "alice").url for _ in range(4)} == {second.url}


def test_a_retry_excluding_the_pinned_worker_moves_the_key() -> None:
    selector, _, workers = _fleet()
    first = _pick(selector, workers, "alice")
    retried = _pick(selector, workers, "alice", frozenset({first}))
    assert retried is not first
    assert _pick(selector, workers, "alice") is retried


def test_removing_a_worker_drops_its_pins() -> None:
    selector, policies, workers = _fleet()
    first = _pick(selector, workers, "alice")
    assert policies.sticky is not None and len(policies.sticky) == 1
    policies.on_registry_event(RegistryEvent.REMOVED, first)
    assert len(policies.sticky) == 0
    rest = [w for w in workers if w is not first]
    assert _pick(selector, rest, "alice") in rest


def test_the_pin_table_is_bounded_by_size_least_recently_used_first() -> None:
    table: PinTable[str, str] = PinTable(2, 100.0)
    table.put("a", "1")
    table.put("b", "2")
    assert table.get("a") == "1"  # a is now the most recently used
    table.put("c", "3")
    assert (table.peek("a"), table.peek("b"), table.peek("c")) == ("1", None, "3")
    assert len(table) == 2


def test_the_pin_table_forgets_idle_keys() -> None:
    clock = Clock()
    table: PinTable[str, str] = PinTable(10, 60.0, clock)
    table.put("old", "1")
    clock.now = 50.0
    table.put("fresh", "2")
    clock.now = 70.0
    table.expire()
    assert (table.peek("old"), table.peek("fresh")) == (None, "2")


def test_sticky_sessions_expire_with_policy_maintenance() -> None:
    registry = WorkerRegistry()
    worker = Worker("w0", "http://w0", ("m",))
    registry.add(worker)
    policies = PolicyRegistry("round_robin", PolicyOptions(routing_key_override=True, max_idle_secs=1e-9), registry)
    Selector(registry, policies, None).pick([worker], _keyed("alice"), frozenset(), "m")
    assert policies.sticky is not None and len(policies.sticky) == 1
    policies.maintain()
    assert len(policies.sticky) == 0


def test_manual_keeps_its_pins_in_the_bounded_table() -> None:
    policy = ManualPolicy(PolicyOptions(max_sticky_keys=2))
    workers = [Worker(f"w{i}", f"http://w{i}", ("m",)) for i in range(2)]
    for key in ("a", "b", "c"):
        policy.select(workers, _keyed(key))
    assert len(policy) == 2 and policy.pinned("a") == []


def test_the_flag_and_its_smg_alias_reach_the_policy_options() -> None:
    parser = build_parser()
    for flag in ("--routing-key-override", "--sticky-sessions"):
        args = parser.parse_args(["launch", "--worker-urls", "http://w0", flag])
        assert config_from_args(args).policy_options.routing_key_override is True
    args = parser.parse_args(["launch", "--worker-urls", "http://w0"])
    assert config_from_args(args).policy_options.routing_key_override is False


def test_a_lineage_sticks_without_a_key_and_a_valid_key_comes_first() -> None:
    selector, _, workers = _fleet()

    def pick(key: str | None, lineage: str | None) -> Worker:
        routing = RoutingRequest("/v1/chat/completions", {"model": "m"},
                                 {"x-smg-routing-key": key} if key else {}, lineage=lineage)
        return selector.pick(workers, routing, frozenset(), "m")

    by_lineage = pick(None, "resp_root")
    assert {pick(None, "resp_root").url for _ in range(4)} == {by_lineage.url}
    by_key = pick("alice", "resp_root")  # the header's key is pinned, not the lineage
    assert {pick("alice", None).url for _ in range(4)} == {by_key.url}
