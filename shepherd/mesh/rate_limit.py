"""Fleet-wide token buckets: the admission controller asks Redis (one Lua call on Redis's clock)
instead of its own bucket, so a limit holds for every instance and process together.

While the store is unreachable (MeshStatus says so), each instance falls back to its own local
bucket at the configured rate: clients never see an error caused by Redis alone, at the price of
a looser limit (up to one configured rate per instance) until Redis answers again.
"""

from __future__ import annotations

from shepherd.mesh.redis_store import RedisStore
from shepherd.mesh.status import MeshStatus
from shepherd.mesh.store import StoreUnavailable


class FleetLimiter:
    def __init__(self, store: RedisStore, status: MeshStatus) -> None:
        self._store = store
        self._status = status

    async def take(self, bucket: str, rate: float) -> float | None:
        """Seconds until a token of the fleet's `bucket` (0: taken); None: ask your local bucket."""
        if not self._status.connected:
            return None  # the sync loop finds out when Redis is back; requests do not wait to learn it
        try:
            return await self._store.take_token(bucket, rate, max(1.0, rate))
        except StoreUnavailable:
            return None
