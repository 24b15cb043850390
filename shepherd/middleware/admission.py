"""Admission control: how many inference requests run at once, how many wait, and how fast they come.

* `--max-concurrent-requests N`: at most N requests in flight; the next `--queue-size` wait in FIFO
  order (middleware/slots.py) for up to `--queue-timeout-secs`. A full queue answers 429 at once, a wait that times out
  503; both with Retry-After. A slot is held until the response (streamed or not) is finished.
* `--rate-limit-tokens-per-second R`: a token bucket (one second of burst) in front of everything;
  an empty bucket answers 429 with the time until the next token as Retry-After.
* With the mesh on Redis, both buckets are the fleet's (mesh/rate_limit.py): every instance and
  process takes from the same bucket; the local one decides only while Redis cannot answer.
* Per API key (the key a client presents, as Bearer token or `x-api-key`, kept only as a hash): the
  same two limits, each key on its own, so one tenant cannot take the whole gateway.
* Per tenant (`--tenant-rate-limit-enabled`): requests and tokens per minute and requests in flight,
  per tenant identity and model, from the YAML of middleware/tenant_limits.py.
* With the mesh on Redis, the tenant limits and the per-key concurrency limit are the fleet's too
  (FleetLimits: one Redis call admits a request against all of them, leases count what is in flight);
  the local state decides only while Redis cannot answer.

Every rate-limit decision and every rejection is reported to the optional counters
(`smg_http_rate_limit_total`, `smg_admission_queue_rejected_total`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from shepherd.config import AdmissionConfig
from shepherd.errors import GatewayError
from shepherd.middleware.priority import CLASSES, PriorityPlan, preempted
from shepherd.middleware.slots import SlotQueue
from shepherd.middleware.tenant_limits import Limits, TenantLimitsConfig, tenant_limited

MAX_TRACKED_KEYS = 10_000  # API keys, and tenants, with state of their own; the idle ones are forgotten first


class TokenBucket:
    """`rate` tokens a second, holding at most `capacity` (default: one second's worth, at least one)."""

    __slots__ = ("rate", "capacity", "tokens", "updated")

    def __init__(self, rate: float, capacity: float | None = None) -> None:
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def wait(self) -> float:
        """0 when a token is there to take, else the seconds until one will be (nothing taken)."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self) -> float:
        """Take a token; return 0, or the seconds until one will be available (nothing taken)."""
        wait = self.wait()
        if wait == 0.0:
            self.tokens -= 1.0
        return wait

    def debit(self, amount: float) -> None:
        """Take `amount` after the fact (tokens a finished request used): the bucket may go into debt."""
        self.wait()
        self.tokens -= amount


def _per_minute(limit: float) -> TokenBucket | None:
    return TokenBucket(limit / 60.0, limit) if limit > 0 else None


@dataclass(frozen=True, slots=True)
class LimitSet:
    """Limits that hold for the whole fleet under one name (a hash: never a tenant's or a key's text)."""

    name: str
    max_concurrent: int = 0  # 0: no limit
    requests_per_minute: float = 0.0
    tokens_per_minute: float = 0.0


class FleetLimits(Protocol):
    """The fleet's view of the limit sets (the mesh, on Redis)."""

    async def admit(self, sets: Sequence[LimitSet]) -> FleetVerdict | None:
        """Admit a request against every set or none; None: the fleet cannot answer, decide locally."""

    def release(self, lease: FleetLease, tokens: int) -> None:
        """The admitted request ended having used `tokens` (hand back its leases, debit its tokens)."""


@dataclass(frozen=True, slots=True)
class FleetLease:
    sets: tuple[LimitSet, ...]
    member: str  # this request's lease in each set that limits concurrency


@dataclass(frozen=True, slots=True)
class FleetVerdict:
    lease: FleetLease | None  # admitted
    refused: int = -1  # else the index of the set that refused,
    reason: str = ""  # "concurrency" | "request" | "token",
    wait: float = 0.0  # and the seconds until it may have room


def _limit_refusal(what: str, limits: Limits, reason: str, wait: float) -> GatewayError:
    if reason == "concurrency":
        return tenant_limited(f"{what} has {limits.max_concurrent_requests} requests in flight", 1.0)
    return tenant_limited(f"{what} is over its {reason}s-per-minute limit", wait)


def _hashed(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class _LimitState:
    """One tenant's (or one tenant-and-model's) buckets and in-flight count."""

    __slots__ = ("limits", "in_flight", "requests", "tokens", "fleet_set")

    def __init__(self, limits: Limits, fleet_name: str) -> None:
        self.limits = limits
        self.in_flight = 0
        self.requests = _per_minute(limits.requests_per_minute)
        self.tokens = _per_minute(limits.tokens_per_minute)
        self.fleet_set = LimitSet(fleet_name, limits.max_concurrent_requests, limits.requests_per_minute,
                                  limits.tokens_per_minute)

    def refusal(self, what: str) -> GatewayError | None:
        """Why a request may not start now (nothing taken), else None."""
        limits = self.limits
        if 0 < limits.max_concurrent_requests <= self.in_flight:
            return _limit_refusal(what, limits, "concurrency", 1.0)
        for bucket, unit in ((self.requests, "request"), (self.tokens, "token")):
            wait = bucket.wait() if bucket is not None else 0.0
            if wait > 0:
                return _limit_refusal(what, limits, unit, wait)
        return None


class _TenantState:
    __slots__ = ("own", "models", "fleet_name")

    def __init__(self, limits: Limits, tenant: str) -> None:
        self.fleet_name = "tenant:" + _hashed(tenant)
        self.own = _LimitState(limits, self.fleet_name)
        self.models: dict[str, _LimitState] = {}  # bounded: one per model rule of the tenant's rule

    def idle(self) -> bool:
        return self.own.in_flight == 0 and all(m.in_flight == 0 for m in self.models.values())


_State = TypeVar("_State")


def _tracked(table: OrderedDict[str, _State], name: str, make: Callable[[], _State],
             idle: Callable[[_State], bool]) -> _State:
    """`table[name]`, made when missing; past MAX_TRACKED_KEYS entries the least recently seen idle one goes."""
    state = table.get(name)
    if state is not None:
        table.move_to_end(name)
        return state
    state = table[name] = make()
    if len(table) > MAX_TRACKED_KEYS:
        for old, old_state in table.items():
            if idle(old_state):
                del table[old]
                break
    return state


class _KeyState:
    __slots__ = ("in_flight", "bucket", "name", "fleet_set")

    def __init__(self, rate: float, name: str, max_concurrent: int) -> None:
        self.name = name  # the fleet bucket's name: the key's hash, never the key
        self.in_flight = 0
        self.bucket = TokenBucket(rate) if rate > 0 else None
        self.fleet_set = LimitSet("key:" + name, max_concurrent) if max_concurrent > 0 else None


class Ticket:
    """Proof of admission; hand it back with `release()` exactly once."""

    __slots__ = ("key", "holds_slot", "limits", "rank", "tenant", "task", "preempted", "lease")

    def __init__(self, key: _KeyState | None, holds_slot: bool, limits: tuple[_LimitState, ...] = (), rank: int = 0,
                 tenant: str | None = None, lease: FleetLease | None = None) -> None:
        self.key = key
        self.lease = lease  # what the fleet holds for this request (the mesh's limits), if it was asked
        self.holds_slot = holds_slot
        self.limits = limits  # the tenant's limit states it counts against
        self.rank = rank
        self.tenant = tenant
        self.task: asyncio.Task[object] | None = None  # the handler, while it may still be preempted
        self.preempted = False  # cancelled for a higher class: the handler answers 503 scheduler_preempted


Counter = Callable[[str], None]
# A fleet-wide bucket (the mesh, on Redis): (bucket name, rate) -> seconds until a token (0: taken),
# or None when the fleet cannot answer and the local bucket decides.
FleetTokens = Callable[[str, float], Awaitable[float | None]]


class AdmissionController:
    def __init__(self, config: AdmissionConfig, count_rate_limit: Counter | None = None,
                 count_rejected: Counter | None = None, fleet: FleetTokens | None = None,
                 tenant_limits: TenantLimitsConfig | None = None, plan: PriorityPlan | None = None,
                 count_scheduled: Callable[[str, str | None, str], None] | None = None,
                 fleet_limits: FleetLimits | None = None) -> None:
        self._config = config
        self._fleet_limits = fleet_limits
        self._tenant_limits = tenant_limits
        self._tenants: OrderedDict[str, _TenantState] = OrderedDict()
        self._fleet = fleet
        self._count_rate_limit = count_rate_limit  # "allowed" | "rejected", per token-bucket decision
        self._count_rejected = count_rejected  # the reason of every request turned away
        self._limit = config.max_concurrent_requests
        self._count_scheduled = count_scheduled if plan is not None else None  # (class, tenant, outcome)
        self._plan = plan  # the priority classes (--priority-scheduler-enabled), else one FIFO queue
        self._slots = SlotQueue(self._limit, len(CLASSES) if plan else 1)
        # Per class, admitted requests whose answer has not begun (oldest first): a higher class that has to
        # wait preempts the newest of the lowest class.
        self._unstarted: list[dict[Ticket, None]] = [{} for _ in CLASSES] if plan else []
        self._bucket = TokenBucket(config.rate_limit_tokens_per_second) if config.rate_limit_tokens_per_second else None
        self._per_key = config.per_key_max_concurrent_requests > 0 or config.per_key_rate_limit_tokens_per_second > 0
        self._keys: OrderedDict[str, _KeyState] = OrderedDict()
        self.rejected = {"full": 0, "timeout": 0, "rate": 0, "key": 0, "tenant": 0, "preempted": 0}

    @property
    def queue_depth(self) -> int:
        return self._slots.queued

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    async def acquire(self, api_key: str | None, tenant: str | None = None, model: str | None = None,
                      priority: str | None = None) -> Ticket:
        """Admit a request presented with `api_key` (None: no key) on behalf of `tenant` for `model`, in
        the priority class `priority` asks for (the x-smg-priority header), or raise a 400/429/503 GatewayError."""
        config = self._config
        rank = self._plan.class_of(tenant, priority) if self._plan is not None else 0
        if self._bucket is not None:
            await self._check_rate("global", self._bucket, "rate_limit_exceeded",
                                   "The gateway's request rate limit was reached")
        limits = self._tenant_states(tenant, model) if tenant is not None and self._tenant_limits else ()
        key = self._key_state(api_key) if self._per_key else None
        if key is not None and key.bucket is not None:
            await self._check_rate("key:" + key.name, key.bucket, "key_rate_limit_exceeded",
                                   "This API key's request rate limit was reached")
        fleet_sets = tuple(state.fleet_set for state in limits)
        if key is not None and key.fleet_set is not None:
            fleet_sets += (key.fleet_set,)
        verdict = (await self._fleet_limits.admit(fleet_sets)
                   if self._fleet_limits is not None and fleet_sets else None)
        if verdict is not None and verdict.lease is None:
            self._reject("key" if verdict.refused == len(limits) else "tenant")
            raise self._refusal(tenant, model, limits, verdict.refused, verdict.reason, verdict.wait)
        if verdict is None:  # no fleet (or it cannot answer): this process's own state decides
            for index, state in enumerate(limits):
                refusal = state.refusal(self._limit_name(tenant, model, index))
                if refusal is not None:
                    self._reject("tenant")
                    raise refusal
            if key is not None and 0 < config.per_key_max_concurrent_requests <= key.in_flight:
                self._reject("key")
                raise self._refusal(tenant, model, limits, len(limits), "concurrency", 1.0)
        if key is not None:
            key.in_flight += 1
        for state in limits:
            state.in_flight += 1
            if state.requests is not None:
                state.requests.take()
        try:
            await self._take_slot(rank)
            if self._count_scheduled is not None:
                self._count_scheduled(CLASSES[rank], tenant, "admitted")
        except BaseException as exc:
            if self._count_scheduled is not None and isinstance(exc, GatewayError):
                self._count_scheduled(CLASSES[rank], tenant, exc.code.removeprefix("scheduler_"))
            if key is not None:
                key.in_flight -= 1
            for state in limits:
                state.in_flight -= 1
            if verdict is not None and verdict.lease is not None:
                assert self._fleet_limits is not None
                self._fleet_limits.release(verdict.lease, 0)
            raise
        ticket = Ticket(key, self._limit > 0, limits, rank, tenant, verdict.lease if verdict is not None else None)
        if self._unstarted and ticket.holds_slot:
            ticket.task = asyncio.current_task()
            self._unstarted[rank][ticket] = None
        return ticket

    def started(self, ticket: Ticket) -> None:
        """The request's answer has begun (its first byte is going out): it can no longer be preempted."""
        if ticket.task is not None:
            self._unstarted[ticket.rank].pop(ticket, None)
            ticket.task = None

    def release(self, ticket: Ticket, tokens: int = 0) -> None:
        """Hand back a ticket; `tokens`: what the request used (prompt + completion), for the tenant limits."""
        if ticket.key is not None:
            ticket.key.in_flight -= 1
        for state in ticket.limits:
            state.in_flight -= 1
            if tokens and state.tokens is not None:
                state.tokens.debit(tokens)
        ticket.limits = ()
        if ticket.lease is not None:
            assert self._fleet_limits is not None
            self._fleet_limits.release(ticket.lease, tokens)
            ticket.lease = None
        self.started(ticket)
        if ticket.holds_slot:
            self._slots.release()  # straight to the oldest waiter of the highest class, if any

    async def _take_slot(self, rank: int) -> None:
        slots = self._slots
        if self._limit <= 0 or slots.try_take():
            return
        config, plan = self._config, self._plan
        room = plan.classes[rank].queue_size if plan is not None else None
        if (room is not None and slots.waiting(rank) >= room) or (slots.queued >= config.queue_size
                                                                  and not self._preempt_below(rank)):
            self._reject("full")
            reason = "queuing is disabled" if config.queue_size == 0 else f"{config.queue_size} requests already wait"
            raise GatewayError(429, "scheduler_queue_full" if plan else "admission_queue_full",
                               f"The gateway is at capacity and {reason}", headers={"Retry-After": "2"})
        timeout = (plan.classes[rank].queue_timeout_secs if plan is not None else None) or config.queue_timeout_secs
        self._preempt_unstarted_below(rank)
        if not await slots.wait(rank, timeout):
            self._reject("timeout")
            raise GatewayError(503, "scheduler_queue_timeout" if plan else "admission_queue_timeout",
                               f"No capacity became free within {timeout:g}s", headers={"Retry-After": "2"})

    def _preempt_below(self, rank: int) -> bool:
        """Make room in a full queue for a request of class `rank`: the newest waiter of the lowest class
        below it is answered 503 scheduler_preempted. False when there is none (or no scheduler)."""
        if self._plan is None or not self._slots.preempt_below(rank, preempted):
            return False
        self._reject("preempted")
        return True

    def _preempt_unstarted_below(self, rank: int) -> None:
        """A request of class `rank` is about to wait: the newest admitted request of the lowest class below it
        that has not begun its answer is cancelled (its upstream request aborted, as for a client that left)
        and answers 503 scheduler_preempted; the slot it frees goes to the highest waiter."""
        for unstarted in self._unstarted[:rank]:
            if unstarted:
                ticket = next(reversed(unstarted))
                task = ticket.task
                self.started(ticket)  # out of the running for another preemption
                ticket.preempted = True
                self._reject("preempted")
                if self._count_scheduled is not None:
                    self._count_scheduled(CLASSES[ticket.rank], ticket.tenant, "preempted")
                if task is not None:
                    task.cancel()
                return

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        if self._count_rejected is not None:
            self._count_rejected(reason)

    async def _check_rate(self, name: str, bucket: TokenBucket, code: str, message: str) -> None:
        wait = await self._fleet(name, bucket.rate) if self._fleet is not None else None
        if wait is None:
            wait = bucket.take()
        if self._count_rate_limit is not None:
            self._count_rate_limit("rejected" if wait > 0 else "allowed")
        if wait > 0:
            self._reject("rate")
            raise GatewayError(429, code, message, headers={"Retry-After": str(max(1, math.ceil(wait)))})

    @staticmethod
    def _limit_name(tenant: str | None, model: str | None, index: int) -> str:
        return f"Tenant {tenant}" if index == 0 else f"Tenant {tenant} on model {model}"

    def _refusal(self, tenant: str | None, model: str | None, limits: tuple[_LimitState, ...], index: int,
                 reason: str, wait: float) -> GatewayError:
        """The answer to a request that set `index` of its limits (tenant, tenant on model, then key) refused."""
        if index < len(limits):
            return _limit_refusal(self._limit_name(tenant, model, index), limits[index].limits, reason, wait)
        return GatewayError(429, "key_concurrency_limit_exceeded", "This API key has too many requests in flight",
                            headers={"Retry-After": "1"})

    def _key_state(self, api_key: str | None) -> _KeyState | None:
        if not api_key:
            return None
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        config = self._config
        return _tracked(self._keys, digest, lambda: _KeyState(config.per_key_rate_limit_tokens_per_second, digest,
                                                              config.per_key_max_concurrent_requests),
                        lambda state: state.in_flight == 0)

    def _tenant_states(self, tenant: str, model: str | None) -> tuple[_LimitState, ...]:
        """The limit states a request of `tenant` for `model` counts against: the tenant's, and its model rule's."""
        assert self._tenant_limits is not None
        rule = self._tenant_limits.rule(tenant)
        if rule is None:
            return ()
        state = _tracked(self._tenants, tenant, lambda: _TenantState(rule.limits, tenant), _TenantState.idle)
        matched = rule.model_rule(model)
        if matched is None:
            return (state.own,)
        pattern, limits = matched
        model_state = state.models.get(pattern)
        if model_state is None:
            model_state = state.models[pattern] = _LimitState(limits, f"{state.fleet_name}:{_hashed(pattern)}")
        return state.own, model_state
