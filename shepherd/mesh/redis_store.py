"""The shared store on Redis (redis.asyncio), imported only when --mesh-redis-url is given.

Keys, all under `shepherd:mesh:{name}:` so several gateways can share one Redis:
  `{ns}` hash of entries, `{ns}:v` its version (INCR on every write, atomically with it),
  `{ns}:gen` a random token set once: a new one means Redis lost the data (restarted empty);
  `tree` a capped stream of batched cache-aware routing events;
  `rl:{bucket}` token buckets (hash: tokens, ts) updated by a Lua script on Redis's clock.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shepherd.mesh.status import MeshStatus
from shepherd.mesh.store import SharedStore, StoreUnavailable

_WRITE = """
if ARGV[3] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if ARGV[4] == '1' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
redis.call('INCR', KEYS[2])
return 1
"""

# A token bucket on Redis's clock (one clock for the whole fleet): refill, take one token or say how
# long until one is there. Idle buckets expire once they would be full again.
_TAKE = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return tostring(wait)
"""

STREAM_MAX_LEN = 4096  # batches kept for instances catching up


class RedisStore(SharedStore):
    kind = "redis"

    def __init__(self, url: str, name: str, timeout_secs: float, status: MeshStatus) -> None:
        self._client: Any = aioredis.Redis.from_url(url, socket_timeout=timeout_secs,
                                                    socket_connect_timeout=timeout_secs, max_connections=32)
        self._prefix = f"shepherd:mesh:{name}:"
        self._timeout = timeout_secs
        self._status = status
        self._write_script = self._client.register_script(_WRITE)
        self._take_script = self._client.register_script(_TAKE)

    async def _call(self, operation: Any) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                result = await operation
        except (RedisError, OSError, TimeoutError) as exc:
            self._status.failed(exc)
            raise StoreUnavailable(str(exc)) from None
        self._status.ok()
        return result

    async def version(self, namespace: str) -> int:
        value = await self._call(self._client.get(self._prefix + namespace + ":v"))
        return int(value or 0)

    async def generation(self, namespace: str) -> str:
        key = self._prefix + namespace + ":gen"
        pipe = self._client.pipeline(transaction=True)
        pipe.set(key, uuid.uuid4().hex, nx=True)
        pipe.get(key)
        _, value = await self._call(pipe.execute())
        return bytes(value).decode()

    async def read(self, namespace: str) -> tuple[int, dict[str, bytes]]:
        key = self._prefix + namespace
        pipe = self._client.pipeline(transaction=True)
        pipe.get(key + ":v")
        pipe.hgetall(key)
        version, entries = await self._call(pipe.execute())
        return int(version or 0), {k.decode(): v for k, v in entries.items()}

    async def write(self, namespace: str, key: str, value: bytes | None, *, only_if_absent: bool = False) -> bool:
        ns = self._prefix + namespace
        flags = ["1" if only_if_absent else "0", "1" if value is None else "0"]
        result = await self._call(self._write_script(keys=[ns, ns + ":v"], args=[key, value or b"", *flags]))
        return bool(result)

    async def append_event(self, payload: bytes) -> None:
        await self._call(self._client.xadd(self._prefix + "tree", {"b": payload}, maxlen=STREAM_MAX_LEN,
                                           approximate=True))

    async def read_events(self, after: str, count: int) -> list[tuple[str, bytes]]:
        """Batches appended after the stream id `after` ("$" for none yet: start from the end)."""
        key = self._prefix + "tree"
        if after == "$":
            last = await self._call(self._client.xrevrange(key, count=1))
            return [(last[0][0].decode(), b"")] if last else [("0-0", b"")]
        answer = await self._call(self._client.xread({key: after}, count=count))
        return [(entry_id.decode(), fields.get(b"b", b"")) for _, entries in answer for entry_id, fields in entries]

    async def take_token(self, bucket: str, rate: float, capacity: float) -> float:
        """Seconds until a token (0: one was taken)."""
        return float(await self._call(self._take_script(keys=[self._prefix + "rl:" + bucket],
                                                        args=[repr(rate), repr(capacity)])))

    async def close(self) -> None:
        await self._client.aclose()
