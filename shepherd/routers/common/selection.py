"""Choosing a worker: the model's candidates, narrowed to the available ones, then the policy's pick.

Every path selects through `Selector.pick`, so availability (health, breaker, drain), the "not
tried yet" rule, worker overload protection (workers/overload.py), sticky sessions
(`--routing-key-override`, policies/sticky.py) and the selection metric are the same everywhere. A
decision only reads the registry snapshot, the sticky pins and the policy: it never awaits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from shepherd.config import GatewayConfig, PolicyOptions
from shepherd.errors import GatewayError
from shepherd.observability.metrics import Metrics
from shepherd.policies.base import Policy, RoutingRequest
from shepherd.policies.registry import PolicyRegistry
from shepherd.request_keys import LINEAGE, peek
from shepherd.workers import availability
from shepherd.workers.circuit_breaker import BreakerState
from shepherd.workers.overload import OverloadGuard
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker, WorkerType


def overload_guard(config: GatewayConfig, metrics: Metrics | None) -> OverloadGuard | None:
    """The engines' overload protection as the gateway is configured (None: off)."""
    count = metrics.overload_shed("selection").inc if metrics is not None else None
    return OverloadGuard.from_config(config, count)


def routing_request(request: web.Request, path: str, body: Mapping[str, Any] | None, options: PolicyOptions,
                    *, text: str | None = None, tokens: Sequence[int] | None = None) -> RoutingRequest:
    """What the policy sees of `request`: its body, headers (routing key) and lineage, plus what the path derived."""
    return RoutingRequest(path, body, request.headers, text=text, tokens=tokens,
                          routing_key_headers=options.routing_key_headers, lineage=peek(request, LINEAGE))


class Selector:
    def __init__(self, registry: WorkerRegistry, policies: PolicyRegistry, metrics: Metrics | None,
                 *, repeat_when_all_tried: bool = True, overload: OverloadGuard | None = None) -> None:
        self.registry = registry
        self._overload = overload
        self.policies = policies
        self._metrics = metrics
        # Local engines may be tried again once every one was (a transient failure passes); a provider
        # that just refused is not asked again for the same request.
        self._repeat = repeat_when_all_tried
        # id(candidates) -> (candidates, the availability epoch at which every one was available):
        # until the epoch moves they all still are, and the walk over them is skipped.
        self._all_available: dict[int, tuple[tuple[Worker, ...], int]] = {}

    def candidates(self, model: str | None, connection_mode: str | None = None,
                   worker_type: WorkerType = WorkerType.REGULAR) -> Sequence[Worker]:
        """The workers serving `model` (of one connection mode, when given); 404/503 when there are none."""
        registry = self.registry
        workers = registry.for_model(model, worker_type, connection_mode)
        if not workers:
            if not len(registry):
                raise GatewayError(503, "no_workers", "No workers are registered with the gateway yet")
            raise GatewayError(404, "model_not_found", f"The model `{model}` does not exist", param="model")
        return workers

    def pick(self, candidates: Sequence[Worker], routing: RoutingRequest, exclude: frozenset[Worker],
             model: str | None, policy: Policy | None = None, what: str = "workers") -> Worker:
        """The policy's choice among the available candidates not yet tried (503 when none)."""
        available: Sequence[Worker] = self._available(candidates)
        if exclude:
            untried = [w for w in available if w not in exclude]
            if untried or not self._repeat:  # else every other worker was tried: allow a repeat
                available = untried
        if not available:
            label = model or "default"
            raise GatewayError(503, "no_available_workers", f"No available {what} for model `{label}`",
                               headers={"Retry-After": "1"})
        policy = policy or self.policies.for_model(model)
        if self._overload is not None:
            available = self._overload.screen(available, what, policy.balances_load)
        sticky = self.policies.sticky
        # A valid routing-key header first; else what the request continues (a Responses lineage).
        key = (routing.routing_key or routing.lineage) if sticky is not None else None
        worker = sticky.pinned(model, key, available) if sticky is not None and key is not None else None
        if worker is None:
            worker = policy.select(available, routing)
            if worker is None:
                raise GatewayError(503, "no_available_workers", "The routing policy found no acceptable worker",
                                   headers={"Retry-After": "1"})
            if sticky is not None and key is not None:
                sticky.pin(model, key, worker)
        if self._metrics is not None:
            self._metrics.selections(worker.worker_type.value, worker.connection_mode, model or "default",
                                     policy.name, worker.url).value += 1
        return worker

    def _available(self, candidates: Sequence[Worker]) -> Sequence[Worker]:
        """The available candidates: `candidates` itself while all of them are (the common case,
        known without looking at each while the availability epoch stands still)."""
        epoch = availability.epoch()  # read first: a change during the walk below invalidates it
        if isinstance(candidates, tuple):
            known = self._all_available.get(id(candidates))
            if known is not None and known[0] is candidates and known[1] == epoch:
                return candidates
        available = [w for w in candidates if w.is_available]
        # Cached only when no breaker is half-open: a half-open one stops letting requests through
        # as its trial slots fill, which moves no epoch.
        if len(available) == len(candidates) and isinstance(candidates, tuple) and \
                all(w.breaker is None or w.breaker.state is BreakerState.CLOSED for w in candidates):
            if len(self._all_available) >= 64:  # fleets of old registry states: start over
                self._all_available.clear()
            self._all_available[id(candidates)] = (candidates, epoch)
            return candidates
        return available
