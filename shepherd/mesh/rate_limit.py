"""Fleet-wide limits on Redis, so that a limit holds for every instance and process together.

* Token buckets (`--rate-limit-tokens-per-second`, the per-key rate): the admission controller asks
  Redis (one Lua call on Redis's clock) instead of its own bucket.
* Limit sets (the tenant limits, the per-key concurrency limit): one Lua call admits a request
  against all the sets it counts against, or none. What is in flight is counted by leases: each admitted
  request holds a member in each set's sorted set until it ends; this instance pushes the expiry of the
  leases it holds out every third of their length (LEASE_SECS), so an instance that dies (or a release
  lost on the way) frees its share within that time. Tokens a request used are debited from the fleet's bucket
  when it ends.

While the store is unreachable (MeshStatus says so), each instance falls back to its own local
state at the configured limits: clients never see an error caused by Redis alone, at the price of a
looser limit (up to one configured limit per instance) until Redis answers again. A release that
cannot reach Redis is dropped: its lease expires.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

from shepherd.mesh.redis_store import RedisStore
from shepherd.mesh.status import MeshStatus
from shepherd.mesh.store import StoreUnavailable
from shepherd.middleware.admission import FleetLease, FleetVerdict, LimitSet

LEASE_SECS = 30.0
MAX_PENDING_RELEASES = 10_000  # releases waiting for Redis; past that they are dropped (their leases expire)


class FleetLimiter:
    def __init__(self, store: RedisStore, status: MeshStatus, instance: str, lease_secs: float = LEASE_SECS) -> None:
        self._store = store
        self._lease_secs = lease_secs
        self._status = status
        self._instance = instance
        self._numbers = itertools.count()
        self._held: dict[str, tuple[str, ...]] = {}  # lease member -> names of the sets it holds a lease in
        self._releases: set[asyncio.Task[None]] = set()
        self._renewed_at = time.monotonic()

    async def take(self, bucket: str, rate: float) -> float | None:
        """Seconds until a token of the fleet's `bucket` (0: taken); None: ask your local bucket."""
        if not self._status.connected:
            return None  # the sync loop finds out when Redis is back; requests do not wait to learn it
        try:
            return await self._store.take_token(bucket, rate, max(1.0, rate))
        except StoreUnavailable:
            return None

    async def admit(self, sets: Sequence[LimitSet]) -> FleetVerdict | None:
        if not self._status.connected:
            return None
        member = f"{self._instance}:{next(self._numbers)}"
        try:
            index, reason, wait = await self._store.admit(sets, member, self._lease_secs)
        except StoreUnavailable:
            return None
        if index:
            return FleetVerdict(None, index - 1, reason, wait)
        leased = tuple(limit.name for limit in sets if limit.max_concurrent > 0)
        if leased:
            self._held[member] = leased
        return FleetVerdict(FleetLease(tuple(sets), member))

    def release(self, lease: FleetLease, tokens: int) -> None:
        held = self._held.pop(lease.member, None)
        if held is None and not (tokens and any(limit.tokens_per_minute > 0 for limit in lease.sets)):
            return  # nothing for the fleet to hear
        if not self._status.connected or len(self._releases) >= MAX_PENDING_RELEASES:
            return
        task = asyncio.get_running_loop().create_task(self._release(lease, tokens))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, lease: FleetLease, tokens: int) -> None:
        try:
            await self._store.release(lease.sets, lease.member, tokens)
        except StoreUnavailable:
            pass  # the lease expires; the tokens are not debited

    async def renew(self) -> None:
        """Called every mesh round: push out the leases held here, every third of their length."""
        now = time.monotonic()
        if now - self._renewed_at < self._lease_secs / 3:
            return
        self._renewed_at = now
        leases = [(name, member) for member, names in self._held.items() for name in names]
        await self._store.renew(leases, self._lease_secs)  # StoreUnavailable: the mesh round logs and goes on

    @property
    def leases_held(self) -> int:
        return len(self._held)

    async def close(self) -> None:
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=1.0)
