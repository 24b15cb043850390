"""The shared store on Redis (redis.asyncio), imported only when --mesh-redis-url is given.

Keys, all under `shepherd:mesh:{name}:` so several gateways can share one Redis:
  `{ns}` hash of entries, `{ns}:v` its version (INCR on every write, atomically with it),
  `{ns}:gen` a random token set once: a new one means Redis lost the data (restarted empty);
  `tree` a capped stream of batched cache-aware routing events;
  `rl:{bucket}` token buckets (hash: tokens, ts) updated by a Lua script on Redis's clock;
  `tl:{set}:c|r|t` a limit set's leases (sorted set: member -> expiry), request and token buckets.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shepherd.mesh.status import MeshStatus
from shepherd.mesh.store import SharedStore, StoreUnavailable
from shepherd.middleware.admission import LimitSet

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

# Bucket refill, shared by the limit-set scripts (a bucket is a hash of tokens and ts; idle ones expire
# once they would be full again).
_REFILL = """
local function refill(key, rate, now)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local capacity = rate * 60
  local tokens = tonumber(state[1]) or capacity
  local ts = tonumber(state[2]) or now
  return math.min(capacity, tokens + math.max(0, now - ts) * rate)
end
local function store(key, tokens, rate, now)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  local deficit = rate * 60 - tokens
  redis.call('PEXPIRE', key, math.ceil(math.max(0, deficit) / rate * 1000) + 1000)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# Admit one request against limit sets (KEYS: leases, request bucket, token bucket of each set; ARGV: member,
# lease secs, then max in flight, requests/s, tokens/s of each set; 0: no limit). Either every set admits it
# (a lease in each, a request token from each) or none is touched and the answer says which set refused,
# why and for how long.
_ADMIT = _REFILL + """
local member, lease = ARGV[1], tonumber(ARGV[2])
local sets = #KEYS / 3
local taken = {}
for i = 1, sets do
  local leases, requests, tokens = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local most, rrate, trate = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  if most > 0 then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    if redis.call('ZCARD', leases) >= most then return {i, 'concurrency', '1'} end
  end
  local left = nil
  if rrate > 0 then
    left = refill(requests, rrate, now)
    if left < 1 then return {i, 'request', tostring((1 - left) / rrate)} end
  end
  if trate > 0 then
    local balance = refill(tokens, trate, now)
    if balance < 1 then return {i, 'token', tostring((1 - balance) / trate)} end
  end
  taken[i] = left
end
for i = 1, sets do
  local most, rrate = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  if most > 0 then
    redis.call('ZADD', KEYS[3 * i - 2], now + lease, member)
    redis.call('PEXPIRE', KEYS[3 * i - 2], math.ceil(lease * 2000))
  end
  if rrate > 0 then store(KEYS[3 * i - 1], taken[i] - 1, rrate, now) end
end
return {0, '', '0'}
"""

# A request's end: its leases go (KEYS: the leases key of each set it holds one in), and what it used is
# debited from token buckets (KEYS after those: token buckets; ARGV: member, tokens used, then each
# bucket's tokens/s). A bucket may go into debt.
_RELEASE = _REFILL + """
local member, used = ARGV[1], tonumber(ARGV[2])
local buckets = #ARGV - 2
for i = 1, #KEYS - buckets do redis.call('ZREM', KEYS[i], member) end
for i = 1, buckets do
  local key, rate = KEYS[#KEYS - buckets + i], tonumber(ARGV[2 + i])
  store(key, refill(key, rate, now) - used, rate, now)
end
return 1
"""

# Leases still held are pushed out (KEYS[i] holds ARGV[2 + i]; ARGV[1]: lease secs); a lease already gone
# (expired while this instance could not reach Redis) is not brought back.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[1 + i])
  redis.call('PEXPIRE', KEYS[i], math.ceil(lease * 2000))
end
return 1
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
        self._admit_script = self._client.register_script(_ADMIT)
        self._release_script = self._client.register_script(_RELEASE)
        self._renew_script = self._client.register_script(_RENEW)

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

    def _set_keys(self, name: str) -> tuple[str, str, str]:
        base = self._prefix + "tl:" + name
        return base + ":c", base + ":r", base + ":t"

    async def admit(self, sets: Sequence[LimitSet], member: str, lease_secs: float) -> tuple[int, str, float]:
        """Admit a request against every set or none: (0, "", 0), else (1-based index of the set that
        refused, "concurrency" | "request" | "token", seconds until it may have room)."""
        keys: list[str] = []
        args: list[str] = [member, repr(lease_secs)]
        for limit in sets:
            keys += self._set_keys(limit.name)
            args += [str(limit.max_concurrent), repr(limit.requests_per_minute / 60),
                     repr(limit.tokens_per_minute / 60)]
        index, kind, wait = await self._call(self._admit_script(keys=keys, args=args))
        return int(index), bytes(kind).decode(), float(wait)

    async def release(self, sets: Sequence[LimitSet], member: str, tokens: int) -> None:
        keys = [self._set_keys(limit.name)[0] for limit in sets if limit.max_concurrent > 0]
        rates = [limit for limit in sets if limit.tokens_per_minute > 0 and tokens > 0]
        keys += [self._set_keys(limit.name)[2] for limit in rates]
        await self._call(self._release_script(
            keys=keys, args=[member, str(tokens), *(repr(limit.tokens_per_minute / 60) for limit in rates)]))

    async def renew(self, leases: Sequence[tuple[str, str]], lease_secs: float) -> None:
        """Push out the leases (set name, member) still held here."""
        if leases:
            await self._call(self._renew_script(keys=[self._set_keys(name)[0] for name, _ in leases],
                                                args=[repr(lease_secs), *(member for _, member in leases)]))

    async def close(self) -> None:
        await self._client.aclose()
