"""Admission control: how many inference requests run at once, how many wait, and how fast they come.

* `--max-concurrent-requests N`: at most N requests in flight; the next `--queue-size` wait in FIFO
  order for up to `--queue-timeout-secs`. A full queue answers 429 at once, a wait that times out
  503; both with Retry-After. A slot is held until the response (streamed or not) is finished.
* `--rate-limit-tokens-per-second R`: a token bucket (one second of burst) in front of everything;
  an empty bucket answers 429 with the time until the next token as Retry-After.
* With the mesh on Redis, both buckets are the fleet's (mesh/rate_limit.py): every instance and
  process takes from the same bucket; the local one decides only while Redis cannot answer.
* Per API key (the key a client presents, as Bearer token or `x-api-key`, kept only as a hash): the
  same two limits, each key on its own, so one tenant cannot take the whole gateway.

Every rate-limit decision and every rejection is reported to the optional counters
(`smg_http_rate_limit_total`, `smg_admission_queue_rejected_total`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

from shepherd.config import AdmissionConfig
from shepherd.errors import GatewayError

MAX_TRACKED_KEYS = 10_000


class TokenBucket:
    __slots__ = ("rate", "capacity", "tokens", "updated")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> float:
        """Take a token; return 0, or the seconds until one will be available (nothing taken)."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class _KeyState:
    __slots__ = ("in_flight", "bucket", "name")

    def __init__(self, rate: float, name: str) -> None:
        self.name = name  # the fleet bucket's name: the key's hash, never the key
        self.in_flight = 0
        self.bucket = TokenBucket(rate) if rate > 0 else None


class Ticket:
    """Proof of admission; hand it back with `release()` exactly once."""

    __slots__ = ("key", "holds_slot")

    def __init__(self, key: _KeyState | None, holds_slot: bool) -> None:
        self.key = key
        self.holds_slot = holds_slot


Counter = Callable[[str], None]
# A fleet-wide bucket (the mesh, on Redis): (bucket name, rate) -> seconds until a token (0: taken),
# or None when the fleet cannot answer and the local bucket decides.
FleetTokens = Callable[[str, float], Awaitable[float | None]]


class AdmissionController:
    def __init__(self, config: AdmissionConfig, count_rate_limit: Counter | None = None,
                 count_rejected: Counter | None = None, fleet: FleetTokens | None = None) -> None:
        self._config = config
        self._fleet = fleet
        self._count_rate_limit = count_rate_limit  # "allowed" | "rejected", per token-bucket decision
        self._count_rejected = count_rejected  # the reason of every request turned away
        self._limit = config.max_concurrent_requests
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._bucket = TokenBucket(config.rate_limit_tokens_per_second) if config.rate_limit_tokens_per_second else None
        self._per_key = config.per_key_max_concurrent_requests > 0 or config.per_key_rate_limit_tokens_per_second > 0
        self._keys: OrderedDict[str, _KeyState] = OrderedDict()
        self.rejected = {"full": 0, "timeout": 0, "rate": 0, "key": 0}

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

    async def acquire(self, api_key: str | None) -> Ticket:
        """Admit a request presented with `api_key` (None: no key), or raise a 429/503 GatewayError."""
        config = self._config
        if self._bucket is not None:
            await self._check_rate("global", self._bucket, "rate_limit_exceeded",
                                   "The gateway's request rate limit was reached")
        key = self._key_state(api_key) if self._per_key else None
        if key is not None:
            if key.bucket is not None:
                await self._check_rate("key:" + key.name, key.bucket, "key_rate_limit_exceeded",
                                       "This API key's request rate limit was reached")
            if 0 < config.per_key_max_concurrent_requests <= key.in_flight:
                self._reject("key")
                raise GatewayError(429, "key_concurrency_limit_exceeded",
                                   "This API key has too many requests in flight", headers={"Retry-After": "1"})
            key.in_flight += 1
        try:
            await self._take_slot()
        except BaseException:
            if key is not None:
                key.in_flight -= 1
            raise
        return Ticket(key, self._limit > 0)

    def release(self, ticket: Ticket) -> None:
        if ticket.key is not None:
            ticket.key.in_flight -= 1
        if not ticket.holds_slot:
            return
        while self._waiters:  # hand the slot straight to the longest waiter still waiting
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1

    async def _take_slot(self) -> None:
        if self._limit <= 0:
            return
        if self.in_flight < self._limit and not self._waiters:
            self.in_flight += 1
            return
        config = self._config
        if len(self._waiters) >= config.queue_size:
            self._reject("full")
            reason = "queuing is disabled" if config.queue_size == 0 else f"{config.queue_size} requests already wait"
            raise GatewayError(429, "admission_queue_full", f"The gateway is at capacity and {reason}",
                               headers={"Retry-After": "2"})
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), config.queue_timeout_secs)
        except TimeoutError:
            if waiter.done():  # the slot arrived just as the wait timed out: keep it
                return
            waiter.cancel()
            self._reject("timeout")
            raise GatewayError(503, "admission_queue_timeout",
                               f"No capacity became free within {config.queue_timeout_secs:g}s",
                               headers={"Retry-After": "2"}) from None
        except asyncio.CancelledError:  # the client left while waiting
            if waiter.done() and not waiter.cancelled():
                self.release(Ticket(None, True))  # pass the slot it was just given to the next waiter
            else:
                waiter.cancel()
            raise

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

    def _key_state(self, api_key: str | None) -> _KeyState | None:
        if not api_key:
            return None
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        state = self._keys.get(digest)
        if state is None:
            state = self._keys[digest] = _KeyState(self._config.per_key_rate_limit_tokens_per_second, digest)
            if len(self._keys) > MAX_TRACKED_KEYS:  # forget the least recently seen idle key
                for old, old_state in self._keys.items():
                    if old_state.in_flight == 0:
                        del self._keys[old]
                        break
        else:
            self._keys.move_to_end(digest)
        return state
