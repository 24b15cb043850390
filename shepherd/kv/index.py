"""The blocks each engine holds, as its KV-cache events describe them.

Per worker the index maps the engine's block hash to the gateway's own block name (see blocks.py)
and counts the copies of each name; one map from name to holders answers a prompt's lookup in one
dict probe per block. A stored block whose parent the index does not know (its store was missed)
cannot be named and is left out: the index may under-report what an engine holds, never over-report.

A worker is `live` while its event stream is connected and in sequence. The policy trusts the index
only for live workers and falls back to its approximate tree for the others, so a worker whose
stream broke is never routed to on the strength of blocks it may since have dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shepherd.kv.blocks import ROOT, block_name

# Blocks tracked per worker at most: an engine holds what its memory allows, but the gateway bounds
# what a buggy or hostile publisher can make it keep.
MAX_BLOCKS_PER_WORKER = 1 << 22

EngineHash = int | bytes  # vLLM's ExternalBlockHash is either; the simulator's and SGLang's are ints


@dataclass
class WorkerBlocks:
    names: dict[EngineHash, int] = field(default_factory=dict)  # engine hash -> gateway name
    copies: dict[int, int] = field(default_factory=dict)  # gateway name -> engine blocks holding it
    live: bool = False
    block_size: int | None = None  # as the engine's events report it
    stored: int = 0
    removed: int = 0
    unnamed: int = 0  # stored blocks skipped because their parent was unknown
    resyncs: int = 0  # the blocks were cleared because the index lost track (a snapshot, a rebuild)
    gaps: int = 0  # lost batches noticed by sequence number
    waiting_uncached_tokens: int = 0  # from the load record the latest batch carried


class KvIndex:
    def __init__(self, default_block_size: int = 16, max_blocks_per_worker: int = MAX_BLOCKS_PER_WORKER) -> None:
        self.default_block_size = default_block_size
        self._max_blocks = max_blocks_per_worker
        self._workers: dict[str, WorkerBlocks] = {}
        self._holders: dict[int, set[str]] = {}

    # -- what the event streams apply ---------------------------------------------------------

    def _state(self, worker_id: str) -> WorkerBlocks:
        state = self._workers.get(worker_id)
        if state is None:
            state = self._workers[worker_id] = WorkerBlocks()
        return state

    def set_live(self, worker_id: str, live: bool) -> None:
        self._state(worker_id).live = live

    def set_load(self, worker_id: str, waiting_uncached_tokens: int) -> None:
        self._state(worker_id).waiting_uncached_tokens = max(0, waiting_uncached_tokens)

    def waiting_uncached_tokens(self, worker_id: str) -> int:
        """The engine's queued prefill as its event stream last said (0 unless the stream is live)."""
        state = self._workers.get(worker_id)
        return state.waiting_uncached_tokens if state is not None and state.live else 0

    def gap(self, worker_id: str) -> None:
        """Batches were lost: stop trusting the worker's blocks until its stream is in sequence again."""
        state = self._state(worker_id)
        state.gaps += 1
        state.live = False

    def clear(self, worker_id: str, resync: bool = True) -> None:
        """The engine dropped everything (or the index lost track of it): forget its blocks."""
        state = self._workers.get(worker_id)
        if state is None:
            return
        holders = self._holders
        for name in state.copies:
            owners = holders.get(name)
            if owners is not None:
                owners.discard(worker_id)
                if not owners:
                    del holders[name]
        state.names.clear()
        state.copies.clear()
        if resync:
            state.resyncs += 1

    def stored(self, worker_id: str, parent: EngineHash | None, blocks: Iterable[tuple[EngineHash, Sequence[int]]],
               block_size: int | None = None) -> None:
        state = self._state(worker_id)
        if block_size:
            state.block_size = block_size
        names, copies = state.names, state.copies
        if parent is None:
            parent_name: int | None = ROOT
        else:
            parent_name = names.get(parent)
        for engine_hash, tokens in blocks:
            if parent_name is None or len(names) >= self._max_blocks:
                state.unnamed += 1
                continue
            name = block_name(parent_name, tokens)
            previous = names.get(engine_hash)
            if previous != name:
                if previous is not None:
                    self._drop_copy(worker_id, state, previous)
                names[engine_hash] = name
                count = copies.get(name, 0)
                copies[name] = count + 1
                if not count:
                    self._holders.setdefault(name, set()).add(worker_id)
            state.stored += 1
            parent_name = name

    def removed(self, worker_id: str, engine_hashes: Iterable[EngineHash]) -> None:
        state = self._state(worker_id)
        for engine_hash in engine_hashes:
            name = state.names.pop(engine_hash, None)
            if name is not None:
                self._drop_copy(worker_id, state, name)
                state.removed += 1

    def _drop_copy(self, worker_id: str, state: WorkerBlocks, name: int) -> None:
        count = state.copies.get(name, 0) - 1
        if count > 0:
            state.copies[name] = count
            return
        state.copies.pop(name, None)
        owners = self._holders.get(name)
        if owners is not None:
            owners.discard(worker_id)
            if not owners:
                del self._holders[name]

    def forget(self, worker_id: str) -> None:
        """The worker left the fleet."""
        self.clear(worker_id, resync=False)
        self._workers.pop(worker_id, None)

    # -- what the policy reads ----------------------------------------------------------------

    def any_live(self) -> bool:
        return any(state.live for state in self._workers.values())

    def is_live(self, worker_id: str) -> bool:
        state = self._workers.get(worker_id)
        return state is not None and state.live

    def block_size(self, worker_ids: Iterable[str]) -> int:
        """The block size the prompt is cut at: the live workers' (they agree in one model's fleet)."""
        for worker_id in worker_ids:
            state = self._workers.get(worker_id)
            if state is not None and state.live and state.block_size:
                return state.block_size
        return self.default_block_size

    def matched_blocks(self, names: Sequence[int], worker_ids: Iterable[str]) -> dict[str, int]:
        """For each worker, how many of the prompt's leading blocks it holds."""
        active = set(worker_ids)
        matched = dict.fromkeys(active, 0)
        holders = self._holders
        for position, name in enumerate(names):
            if not active:
                break
            owners = holders.get(name, ())
            for worker_id in [w for w in active if w not in owners]:
                active.discard(worker_id)
                matched[worker_id] = position
        for worker_id in active:
            matched[worker_id] = len(names)
        return matched

    def holds(self, worker_id: str, name: int) -> bool:
        return worker_id in self._holders.get(name, ())

    def blocks(self, worker_id: str) -> int:
        state = self._workers.get(worker_id)
        return len(state.copies) if state is not None else 0

    def stats(self) -> dict[str, dict[str, int | bool]]:
        return {worker_id: {"live": s.live, "blocks": len(s.copies), "stored": s.stored, "removed": s.removed,
                            "unnamed": s.unnamed, "resyncs": s.resyncs, "gaps": s.gaps}
                for worker_id, s in self._workers.items()}
