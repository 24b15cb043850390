"""A continuous-batching engine simulator with a block-hashed prefix cache.

The cost model follows the reference's description of an SGLang/vLLM-like engine:

* requests queue FIFO and are admitted while fewer than `max_running` run and their prompt's KV fits
  beside the running requests' (cached blocks no running request holds are room, evicted on demand,
  as in vLLM and SGLang; a request is always admitted when nothing runs);
* each step prefills up to `prefill_chunk_tokens` uncached prompt tokens, and every request whose
  prefill is done decodes one token;
* a step lasts `max(prefill_tokens / prefill_tps, decode_base_ms + decode_per_req_ms * batch)`;
* prompt and output blocks of `block_size` tokens are keyed by a rolling hash of the whole prefix,
  so a cached block means the entire prefix up to it was seen; when a step's admissions and outputs
  outgrow the KV capacity the least recently used blocks are evicted. A prompt's blocks are touched
  last-block-first, so its first block is the most recently used and eviction takes the tails of
  prefixes before their heads (as vLLM frees a request's blocks in reverse order), never orphaning a
  cached child; the blocks of running requests are never evicted (they are in use), so a block is
  only ever stored under a parent the engine holds;
* every change to the block cache (stored with parent and token ids, removed, cleared) is
  published as a KV event, batched per step (`kv_events.KvEventLog`).

Tokens are delivered after the step's sleep, as a real engine would emit them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from shepherd.sim.kv_events import Event, KvEventLog


@dataclass(frozen=True)
class EngineParams:
    prefill_tps: float = 8000.0
    decode_base_ms: float = 6.0
    decode_per_req_ms: float = 0.35
    prefill_chunk_tokens: int = 2048
    max_running: int = 256
    kv_capacity_tokens: int = 524_288
    block_size: int = 16
    prefix_cache: bool = True


# The engine's own hash root, like vLLM's NONE_HASH: its block hashes are its business; the gateway
# names blocks itself from the token ids the events carry.
ENGINE_HASH_SEED = 0x5EED_CAFE


def block_keys(token_ids: Sequence[int], block_size: int, seed: int = 0) -> list[int]:
    """Keys of each full block; a key identifies the whole prefix up to the end of its block."""
    keys: list[int] = []
    key = seed
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        key = hash((key, tuple(token_ids[start:start + block_size])))
        keys.append(key)
    return keys


class SimRequest:
    """One sequence inside the engine; the server consumes its tokens with `stream()`."""

    __slots__ = ("prompt_ids", "max_new", "keys", "cached_tokens", "uncached_tokens", "prefill_remaining",
                 "generated", "delivered", "done", "disconnected", "_waiter", "_output_ids", "_tail_key",
                 "enqueued_at", "first_token_at", "finished_at", "prefilled")

    def __init__(self, prompt_ids: Sequence[int], max_new: int, output_ids: Sequence[int]) -> None:
        self.prompt_ids = prompt_ids
        self.max_new = max(0, max_new)
        self._output_ids = output_ids  # what the engine "generates", used to key output blocks
        self.keys: list[int] = []
        self._tail_key = 0
        self.cached_tokens = 0
        self.uncached_tokens = len(prompt_ids)
        self.prefill_remaining = 0
        self.generated = 0  # decoded by the engine
        self.delivered = 0  # visible to the consumer (after the step's sleep)
        self.done = False
        self.disconnected = False
        self._waiter: asyncio.Future[None] | None = None
        self.enqueued_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.prefilled = False  # its KV came from a PD prefill worker: no prefill of its own

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def stream(self) -> AsyncIterator[int]:
        """Yield the number of newly delivered tokens each time some arrive, until done."""
        seen = 0
        loop = asyncio.get_running_loop()
        while True:
            if self.delivered > seen:
                new = self.delivered - seen
                seen = self.delivered
                yield new
            elif self.done:
                return
            else:
                self._waiter = loop.create_future()
                await self._waiter
                self._waiter = None

    async def wait(self) -> None:
        async for _ in self.stream():
            pass


class Engine:
    def __init__(self, params: EngineParams | None = None, kv_event_replay: int = 4096) -> None:
        self.params = params or EngineParams()
        self._waiting: deque[SimRequest] = deque()
        self._running: list[SimRequest] = []
        # LRU order, oldest first: block key -> (parent key or None, the block's token ids)
        self._blocks: OrderedDict[int, tuple[int | None, tuple[int, ...]]] = OrderedDict()
        self.events = KvEventLog(kv_event_replay)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.cache_hit_rate = 0.0  # EWMA of cached/prompt at admission
        self.gen_throughput = 0.0  # EWMA of decode tokens per second
        self.steps = 0

    # -- public -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, prompt_ids: Sequence[int], max_new: int, output_ids: Sequence[int],
               prefilled: bool = False) -> SimRequest:
        """Queue a sequence. `prefilled`: its KV arrived from a prefill worker, so no prefill is run."""
        request = self.enqueue(prompt_ids, max_new, output_ids, prefilled)
        self.start()
        return request

    def enqueue(self, prompt_ids: Sequence[int], max_new: int, output_ids: Sequence[int],
                prefilled: bool = False) -> SimRequest:
        """Queue a sequence without starting the step loop: for a caller that drives `step()` on a
        simulated clock (shepherd replay)."""
        request = SimRequest(prompt_ids, max_new, output_ids)
        request.prefilled = prefilled
        if self.params.prefix_cache:
            request.keys = block_keys(prompt_ids, self.params.block_size, ENGINE_HASH_SEED)
            request._tail_key = request.keys[-1] if request.keys else 0
            request.cached_tokens = self._cached_prefix(request)
            request.uncached_tokens = request.prompt_tokens - request.cached_tokens
        self._waiting.append(request)
        self._wake.set()
        return request

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def step(self) -> tuple[list[SimRequest], list[SimRequest], float]:
        """Run one step's bookkeeping: (decoded, finished, duration in seconds). The caller delivers the
        tokens `duration` later, as `_run` does after its sleep."""
        return self._step()

    def flush_cache(self) -> None:
        self._blocks.clear()
        self.events.cleared()
        self.events.flush()

    def cached_blocks(self) -> int:
        return len(self._blocks)

    def snapshot_events(self) -> list[Event]:
        """Every live block as a stored event, parents before children (a KV-event resync)."""
        blocks = self._blocks
        emitted: set[int] = set()
        events: list[Event] = []
        for key in blocks:
            chain = []
            cursor: int | None = key
            while cursor is not None and cursor in blocks and cursor not in emitted:
                chain.append(cursor)
                cursor = blocks[cursor][0]
            for block in reversed(chain):
                emitted.add(block)
                parent, tokens = blocks[block]
                events.append(("stored", parent, ((block, tokens),)))
        return events

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def waiting_uncached_tokens(self) -> int:
        return sum(r.uncached_tokens for r in self._waiting)

    @property
    def resident_tokens(self) -> int:
        """KV the engine holds, its evictable prefix cache included (what admission and eviction see)."""
        if self.params.prefix_cache:
            size = self.params.block_size
            tails = sum((r.prompt_tokens + r.generated) % size for r in self._running)
            return len(self._blocks) * size + tails
        return sum(r.prompt_tokens + r.generated for r in self._running)

    @property
    def used_tokens(self) -> int:
        """KV the running requests hold (a block shared by several counted once): what SGLang's
        num_used_tokens and vLLM's kv_cache_usage report, both of which count cached blocks no
        request holds as free, since they are evicted on demand."""
        if not self.params.prefix_cache:
            return self.resident_tokens
        return self._used_tokens(self._held_keys())

    def _held_keys(self) -> set[int]:
        """The blocks the running requests hold: in use, never evicted, one copy however shared."""
        return {key for r in self._running for key in r.keys}

    def _used_tokens(self, held: set[int]) -> int:
        size = self.params.block_size
        return len(held) * size + sum((r.prompt_tokens + r.generated) % size for r in self._running)

    @property
    def token_usage(self) -> float:
        return min(1.0, self.used_tokens / self.params.kv_capacity_tokens)

    # -- the step loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._waiting and not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            started = time.monotonic()
            decoded, finished, duration = self._step()
            # Sleep out the rest of the step's cost (the bookkeeping above counts against it).
            await asyncio.sleep(max(0.0, duration - (time.monotonic() - started)))
            now = time.monotonic()
            for request in decoded:
                if request.first_token_at is None:
                    request.first_token_at = now
                request.delivered = request.generated
                request._wake()
            for request in finished:
                request.done = True
                request.finished_at = now
                request._wake()

    def _step(self) -> tuple[list[SimRequest], list[SimRequest], float]:
        params = self.params
        self.steps += 1
        self._admit()

        # Chunked prefill, in arrival order.
        budget = params.prefill_chunk_tokens
        prefilled = 0
        for request in self._running:
            if budget <= 0:
                break
            if request.prefill_remaining > 0:
                chunk = min(budget, request.prefill_remaining)
                request.prefill_remaining -= chunk
                budget -= chunk
                prefilled += chunk

        # Decode one token for every request whose prompt is fully in the KV cache.
        decoded: list[SimRequest] = []
        for request in self._running:
            if request.prefill_remaining == 0 and request.generated < request.max_new and not request.disconnected:
                request.generated += 1
                decoded.append(request)
                if params.prefix_cache and (request.prompt_tokens + request.generated) % params.block_size == 0:
                    self._insert_output_block(request)

        # Completion: finished and abandoned requests leave the batch.
        finished: list[SimRequest] = []
        still_running: list[SimRequest] = []
        for request in self._running:
            if request.disconnected or (request.prefill_remaining == 0 and request.generated >= request.max_new):
                finished.append(request)
            else:
                still_running.append(request)
        self._running = still_running
        self._evict()
        self.events.flush()

        decode_secs = (params.decode_base_ms + params.decode_per_req_ms * len(decoded)) / 1000.0
        prefill_secs = prefilled / params.prefill_tps
        duration = max(prefill_secs, decode_secs if decoded else 0.0, 0.001)
        if decoded:
            self.gen_throughput = 0.7 * self.gen_throughput + 0.3 * (len(decoded) / duration)
        return decoded, finished, duration

    def _admit(self) -> None:
        """Admit waiting requests, oldest first, while their KV fits beside the running requests'.
        A cached block no running request holds is room (it is evicted on demand, as vLLM takes it from
        its free-block queue and SGLang from its radix cache); a request's own cached prefix counts
        as its KV once it runs."""
        params = self.params
        size = params.block_size
        held = self._held_keys() if params.prefix_cache else set()
        used = self._used_tokens(held) if params.prefix_cache else self.resident_tokens
        while self._waiting and len(self._running) < params.max_running:
            request = self._waiting[0]
            if request.disconnected:
                self._waiting.popleft()
                request.done = True
                request._wake()
                continue
            if params.prefix_cache:  # the cache may have changed while it waited
                request.cached_tokens = self._cached_prefix(request)
                request.uncached_tokens = request.prompt_tokens - request.cached_tokens
                need = sum(1 for key in request.keys if key not in held) * size + request.prompt_tokens % size
            else:
                need = request.prompt_tokens
            if need > params.kv_capacity_tokens - used and self._running:
                break
            self._waiting.popleft()
            used += need
            if params.prefix_cache:
                held.update(request.keys)
                self._store_prompt(request)
            request.prefill_remaining = 0 if request.prefilled else request.uncached_tokens
            if request.prompt_tokens:
                self.cache_hit_rate = 0.8 * self.cache_hit_rate + 0.2 * (request.cached_tokens / request.prompt_tokens)
            self._running.append(request)

    def _store_prompt(self, request: SimRequest) -> None:
        """Cache the prompt's blocks (publishing the new ones) and touch them."""
        blocks, size, ids = self._blocks, self.params.block_size, request.prompt_ids
        run: list[tuple[int, tuple[int, ...]]] = []
        run_parent: int | None = None
        parent: int | None = None
        for index, key in enumerate(request.keys):
            if key not in blocks:
                tokens = tuple(ids[index * size:(index + 1) * size])
                blocks[key] = (parent, tokens)
                if not run:
                    run_parent = parent
                run.append((key, tokens))
            elif run:
                self.events.stored(run_parent, run)
                run = []
            parent = key
        if run:
            self.events.stored(run_parent, run)
        for key in reversed(request.keys):
            blocks.move_to_end(key)

    def _cached_prefix(self, request: SimRequest) -> int:
        matched = 0
        for key in request.keys:
            if key not in self._blocks:
                break
            matched += 1
        return min(matched * self.params.block_size, request.prompt_tokens)

    def _insert_output_block(self, request: SimRequest) -> None:
        size = self.params.block_size
        total = request.prompt_tokens + request.generated
        start = total - size
        sequence = list(request.prompt_ids[start:]) if start < request.prompt_tokens else []
        out_from = max(0, start - request.prompt_tokens)
        sequence.extend(request._output_ids[out_from:request.generated])
        if len(request.keys) * size != start:  # a partial prompt tail: the block straddles it
            return
        tokens = tuple(sequence[-size:])
        parent = request._tail_key if request.keys else None
        key = hash((request._tail_key, tokens))
        request.keys.append(key)
        request._tail_key = key
        if key not in self._blocks:
            self._blocks[key] = (parent, tokens)
            self.events.stored(parent, [(key, tokens)])
        self._blocks.move_to_end(key)

    def _evict(self) -> None:
        """Drop the least recently used blocks until the KV fits the capacity again. The running
        requests' blocks are in use: a real engine cannot drop them (vLLM counts references, SGLang
        locks the radix path), only the cache no request holds."""
        params = self.params
        if not params.prefix_cache:
            return
        excess = -(-(self.resident_tokens - params.kv_capacity_tokens) // params.block_size)  # blocks, rounded up
        if excess <= 0:
            return
        held = self._held_keys()
        dropped: list[int] = []
        for key in self._blocks:  # oldest first
            if len(dropped) >= excess:
                break
            if key not in held:
                dropped.append(key)
        for key in dropped:
            del self._blocks[key]
        self.events.removed(dropped)
