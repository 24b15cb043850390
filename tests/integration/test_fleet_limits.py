"""Tenant limits and the per-key concurrency limit held for the whole fleet: several admission
controllers (as several instances would have) sharing one real redis-server through the mesh's limiter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from shepherd.config import AdmissionConfig
from shepherd.errors import GatewayError
from shepherd.mesh.rate_limit import FleetLimiter
from shepherd.mesh.redis_store import RedisStore
from shepherd.mesh.status import MeshStatus
from shepherd.middleware.admission import AdmissionController, Ticket
from shepherd.middleware.tenant_limits import parse_tenant_limits
from shepherd.testing.databases import RedisServer

pytestmark = pytest.mark.integration

LIMITS = parse_tenant_limits({
    "tenants": {
        "auth:busy": {"max_concurrent_requests": 2},
        "auth:slow": {"requests_per_minute": 3},
        "auth:tokens": {"tokens_per_minute": 100},
        "auth:models": {"models": {"big": {"max_concurrent_requests": 1}}},
    },
})
CONFIG = AdmissionConfig(max_concurrent_requests=0, tenant_rate_limit_enabled=True,
                         tenant_rate_limit_config="limits.yaml", per_key_max_concurrent_requests=2)


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


class Instance:
    """One gateway instance's admission controller, limiter and store."""

    def __init__(self, redis_url: str, fleet: str, lease_secs: float = 30.0) -> None:
        self.status = MeshStatus("redis")
        self.store = RedisStore(redis_url, fleet, 0.5, self.status)
        self.limiter = FleetLimiter(self.store, self.status, f"instance-{id(self)}", lease_secs)
        self.admission = AdmissionController(CONFIG, tenant_limits=LIMITS, fleet_limits=self.limiter)

    async def close(self) -> None:
        await self.limiter.close()
        await self.store.close()


async def _refusal(instance: Instance, tenant: str | None, model: str | None = None,
                   key: str | None = None) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        await instance.admission.acquire(key, tenant, model)
    assert raised.value.status == 429
    return raised.value


async def _settle(instance: Instance) -> None:
    """Let the releases on their way to Redis arrive."""
    await instance.limiter.close()


def _fleet(redis: RedisServer, request: pytest.FixtureRequest, count: int = 2, **kwargs: float) -> list[Instance]:
    return [Instance(redis.url, request.node.name, **kwargs) for _ in range(count)]


async def test_concurrency_holds_across_instances_and_frees_on_release(redis: RedisServer,
                                                                       request: pytest.FixtureRequest) -> None:
    a, b = _fleet(redis, request)
    first = await a.admission.acquire(None, "auth:busy")
    second = await b.admission.acquire(None, "auth:busy")
    # Each instance alone has one in flight: only the fleet's count can refuse.
    for instance in (a, b):
        error = await _refusal(instance, "auth:busy")
        assert error.code == "tenant_rate_limit_exceeded" and "2 requests in flight" in error.message
    a.admission.release(first)
    await _settle(a)
    third = await b.admission.acquire(None, "auth:busy")
    for ticket, instance in ((second, b), (third, b)):
        instance.admission.release(ticket)
    await asyncio.gather(a.close(), b.close())


async def test_requests_per_minute_hold_across_instances(redis: RedisServer, request: pytest.FixtureRequest) -> None:
    fleet = _fleet(redis, request, 3)
    tickets = [await instance.admission.acquire(None, "auth:slow") for instance in fleet]  # one each: 3 in all
    for instance in fleet:
        error = await _refusal(instance, "auth:slow")
        assert "requests-per-minute" in error.message
        assert 1 <= int(error.headers["Retry-After"]) <= 21  # a token every 20 s
    for instance, ticket in zip(fleet, tickets, strict=True):
        instance.admission.release(ticket)
    await asyncio.gather(*(instance.close() for instance in fleet))


async def test_tokens_used_on_one_instance_are_debited_for_all(redis: RedisServer,
                                                               request: pytest.FixtureRequest) -> None:
    a, b = _fleet(redis, request)
    ticket = await a.admission.acquire(None, "auth:tokens")
    a.admission.release(ticket, tokens=150)  # over the minute's 100: the fleet's bucket is in debt
    await _settle(a)
    error = await _refusal(b, "auth:tokens")
    assert "tokens-per-minute" in error.message
    await asyncio.gather(a.close(), b.close())


async def test_a_model_rule_and_the_per_key_limit_are_the_fleets(redis: RedisServer,
                                                                 request: pytest.FixtureRequest) -> None:
    a, b = _fleet(redis, request)
    big = await a.admission.acquire(None, "auth:models", "big")
    error = await _refusal(b, "auth:models", "big")
    assert "on model big" in error.message
    other = await b.admission.acquire(None, "auth:models", "small")  # another model: not limited
    keyed = [await a.admission.acquire("sk-shared", None), await b.admission.acquire("sk-shared", None)]
    error = await _refusal(a, None, key="sk-shared")
    assert error.code == "key_concurrency_limit_exceeded"
    for ticket, instance in ((big, a), (other, b), (keyed[0], a), (keyed[1], b)):
        instance.admission.release(ticket)
    await asyncio.gather(a.close(), b.close())


async def test_a_dead_instances_leases_expire_and_a_live_ones_are_renewed(redis: RedisServer,
                                                                          request: pytest.FixtureRequest) -> None:
    live, dead = _fleet(redis, request, lease_secs=0.6)
    held: Ticket = await live.admission.acquire(None, "auth:busy")
    await dead.admission.acquire(None, "auth:busy")  # never released: its instance "dies"
    await _refusal(live, "auth:busy")
    await dead.close()
    for _ in range(6):  # past the lease; the live instance renews its own (as each mesh round does)
        await asyncio.sleep(0.2)
        await live.limiter.renew()
    third = await live.admission.acquire(None, "auth:busy")  # the dead one's lease is gone
    await _refusal(live, "auth:busy")  # the live one's is not
    for ticket in (held, third):
        live.admission.release(ticket)
    await live.close()


async def test_redis_down_means_the_local_limits_decide(request: pytest.FixtureRequest) -> None:
    server = RedisServer()
    instance = Instance(server.url, request.node.name)
    try:
        first = await instance.admission.acquire(None, "auth:busy")
        server.stop()
        # The first call to fail finds out (and answers locally); the next do not wait for Redis.
        second = await instance.admission.acquire(None, "auth:busy")
        assert not instance.status.connected
        error = await _refusal(instance, "auth:busy")  # this instance's own count: 2 in flight
        assert "2 requests in flight" in error.message
        for ticket in (first, second):
            instance.admission.release(ticket)  # dropped for the fleet: the leases expire
        assert instance.limiter.leases_held == 0
        await instance.admission.acquire(None, "auth:busy")
    finally:
        await instance.close()
        server.stop()


async def test_a_request_turned_away_for_capacity_hands_its_lease_back(redis: RedisServer,
                                                                       request: pytest.FixtureRequest) -> None:
    full = Instance(redis.url, request.node.name)
    full.admission = AdmissionController(  # one slot, no queue: the second request there is refused
        AdmissionConfig(max_concurrent_requests=1, queue_size=0, tenant_rate_limit_enabled=True,
                        tenant_rate_limit_config="limits.yaml"), tenant_limits=LIMITS, fleet_limits=full.limiter)
    other = Instance(redis.url, request.node.name)
    held = await full.admission.acquire(None, "auth:busy")
    with pytest.raises(GatewayError) as raised:
        await full.admission.acquire(None, "auth:busy")  # admitted by the fleet, then no slot
    assert raised.value.code == "admission_queue_full"
    await _settle(full)
    second = await other.admission.acquire(None, "auth:busy")  # 2 in flight only if the lease went back
    for instance, ticket in ((full, held), (other, second)):
        instance.admission.release(ticket)
    await asyncio.gather(full.close(), other.close())
