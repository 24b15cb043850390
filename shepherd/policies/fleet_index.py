"""Indexes of one fleet's live load, so a decision need not walk every worker in Python.

A policy decides over `workers`, the available candidates of one model, which between two registry
or health events is the same fleet decision after decision. An index is built for such a fleet and
kept current by the workers themselves: each write to a worker's `load`, `processed` or `snapshot`
is announced to its watchers (Worker.watch), and the index moves that one worker between buckets
in O(log n). A decision then reads the lowest bucket instead of scanning.

`FleetCache` gives a policy the index of the fleet it is asked about: for fleets of a policy's
minimum size or more (a smaller one costs less to scan than to keep indexed, since every write to a
worker's load pays about a microsecond for the index), built once the same fleet comes twice in a row (a retry
that excludes one worker, or a worker's breaker opening, changes the fleet for a decision or two,
and is scanned rather than indexed), checked with a tuple comparison, which CPython does by
identity in C.

Ties are broken exactly as the scanning code does (first in fleet order, or a uniform choice among
the tied workers listed in fleet order), so an index changes no decision, only its cost.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from shepherd.workers.worker import Worker


class MinBuckets:
    """Members grouped by a score, with the smallest key's group found in O(log n) amortised.

    Empty groups are dropped at once; their keys stay in the heap until they reach its top (lazy
    deletion), and the heap is rebuilt when stale keys outnumber live ones."""

    def __init__(self) -> None:
        self._groups: dict[float, set[int]] = {}
        self._heap: list[float] = []

    def add(self, key: float, member: int) -> None:
        group = self._groups.get(key)
        if group is None:
            self._groups[key] = {member}
            heapq.heappush(self._heap, key)
            if len(self._heap) > 2 * len(self._groups) + 32:
                self._heap = list(self._groups)
                heapq.heapify(self._heap)
        else:
            group.add(member)

    def discard(self, key: float, member: int) -> None:
        group = self._groups.get(key)
        if group is not None:
            group.discard(member)
            if not group:
                del self._groups[key]

    def lowest(self) -> tuple[float, set[int]]:
        """The smallest key and its members (not to be changed); IndexError when empty."""
        heap, groups = self._heap, self._groups
        while heap[0] not in groups:
            heapq.heappop(heap)
        return heap[0], groups[heap[0]]

    def group(self, key: float) -> set[int] | None:
        return self._groups.get(key)

    def __len__(self) -> int:
        return sum(map(len, self._groups.values()))


class FleetIndex:
    """Base of the indexes: the fleet, each worker's position in it, and the watch on its workers."""

    def __init__(self, fleet: tuple[Worker, ...]) -> None:
        self.fleet = fleet
        self.position = {w.id: i for i, w in enumerate(fleet)}
        self._at = {w: i for i, w in enumerate(fleet)}  # by identity (Worker has eq=False)
        self.valid = len(self.position) == len(fleet)  # ids index the fleet: they must be unique
        if self.valid:
            for worker in fleet:
                worker.watch(self)

    def close(self) -> None:
        for worker in self.fleet:
            worker.unwatch(self)

    def _member(self, worker: Worker) -> int | None:
        return self._at.get(worker)

    def worker_changed(self, worker: Worker, field: str) -> None:
        raise NotImplementedError


class LoadIndex(FleetIndex):
    """In-flight counts of a fleet: the least-loaded worker (ties: fewest processed, then fleet
    order), the total load, and the least-loaded among a set of worker ids.

    The order is a heap of (load, processed, position) with lazy deletion: a write pushes the
    worker's new key and leaves the old one, which is dropped when it reaches the top no longer
    matching the worker (a request's dispatch writes twice and its end once, so each write must be
    cheap)."""

    few_ids = 8  # least_loaded_of looks up this many ids one by one; more, by load

    def __init__(self, fleet: tuple[Worker, ...]) -> None:
        super().__init__(fleet)
        self._keys: list[tuple[int, int]] = [(w.load, w.processed) for w in fleet]
        self._heap = [(load, processed, i) for i, (load, processed) in enumerate(self._keys)]
        heapq.heapify(self._heap)
        self._ids_by_load: dict[int, set[str]] = {}
        self._loads: list[int] = []  # the distinct loads, ascending
        for worker, (load, _) in zip(fleet, self._keys, strict=True):
            self._add_load(load, worker.id)
        self.total_load = sum(load for load, _ in self._keys)

    def _add_load(self, load: int, worker_id: str) -> None:
        ids = self._ids_by_load.get(load)
        if ids is None:
            self._ids_by_load[load] = {worker_id}
            bisect.insort(self._loads, load)
        else:
            ids.add(worker_id)

    def worker_changed(self, worker: Worker, field: str) -> None:
        # On every dispatch and every finish, so inlined: one dict probe, a heap push, and a move
        # between two load groups when the load changed.
        position = self._at.get(worker)
        if position is None or field == "snapshot":
            return
        keys = self._keys
        old_load, old_processed = keys[position]
        load, processed = worker.load, worker.processed
        if load == old_load and processed == old_processed:
            return
        keys[position] = (load, processed)
        heap = self._heap
        heapq.heappush(heap, (load, processed, position))
        if len(heap) > 2 * len(keys) + 64:  # mostly stale entries: rebuild from the keys
            self._heap = heap = [(load, processed, i) for i, (load, processed) in enumerate(keys)]
            heapq.heapify(heap)
        if load != old_load:
            self.total_load += load - old_load
            worker_id = worker.id
            by_load = self._ids_by_load
            ids = by_load[old_load]
            ids.discard(worker_id)
            if not ids:
                del by_load[old_load]
                del self._loads[bisect.bisect_left(self._loads, old_load)]
            self._add_load(load, worker_id)

    def least_loaded(self) -> Worker:
        """As policies.base.least_loaded(fleet)."""
        heap, keys = self._heap, self._keys
        while True:
            load, processed, position = heap[0]
            if keys[position] == (load, processed):
                return self.fleet[position]
            heapq.heappop(heap)

    def least_loaded_of(self, ids: Mapping[str, Any]) -> list[Worker]:
        """The workers named in `ids` (its keys) with the fewest in flight, in fleet order ([] when
        none is in the fleet). A few ids are looked up one by one; many (a shared system prompt's
        node holds most of the fleet) are found by walking the loads upwards, intersecting each
        load's ids with `ids` in C (a dict view and a set: CPython iterates the smaller)."""
        position = self.position
        if len(ids) <= self.few_ids:
            keys = self._keys
            lowest: int | None = None
            tied: list[int] = []
            for name in ids:
                at = position.get(name)
                if at is None:
                    continue
                load = keys[at][0]
                if lowest is None or load < lowest:
                    lowest, tied = load, [at]
                elif load == lowest:
                    tied.append(at)
            tied.sort()
            return [self.fleet[i] for i in tied]
        names = ids.keys()
        for load in self._loads:
            found = names & self._ids_by_load[load]
            if found:
                return [self.fleet[i] for i in sorted(map(position.__getitem__, found))]
        return []


class ScoreIndex(FleetIndex):
    """Workers of a fleet by a score that depends on the worker alone (`score(worker)`): the lowest
    score and the workers holding it, in fleet order. A worker is rescored when one of the `fields`
    the score reads is written, or when its owner says so (`rescore`, for state the policy keeps
    itself). Workers that `scored` refuses are counted in `unscored` and left out."""

    def __init__(self, fleet: tuple[Worker, ...], score: Callable[[Worker], float],
                 scored: Callable[[Worker], bool], fields: frozenset[str]) -> None:
        super().__init__(fleet)
        self._score, self._scored, self._fields = score, scored, fields
        self._scores: list[float | None] = []
        self._buckets: MinBuckets = MinBuckets()
        self.unscored = 0  # workers `scored` refuses (their score depends on the whole fleet)
        for position, worker in enumerate(fleet):
            value = score(worker) if scored(worker) else None
            self._scores.append(value)
            if value is None:
                self.unscored += 1
            else:
                self._buckets.add(value, position)

    def _set(self, position: int, worker: Worker) -> None:
        old = self._scores[position]
        new = self._score(worker) if self._scored(worker) else None
        if new == old:
            return
        self._scores[position] = new
        if old is None:
            self.unscored -= 1
        else:
            self._buckets.discard(old, position)
        if new is None:
            self.unscored += 1
        else:
            self._buckets.add(new, position)

    def worker_changed(self, worker: Worker, field: str) -> None:
        if field in self._fields:
            self.rescore(worker)

    def rescore(self, worker: Worker) -> None:
        position = self._member(worker)
        if position is not None:
            self._set(position, worker)

    def lowest(self) -> list[Worker]:
        """The workers with the lowest score, in fleet order; only when `unscored` is 0."""
        _, positions = self._buckets.lowest()
        if len(positions) == 1:
            return [self.fleet[next(iter(positions))]]
        return [self.fleet[i] for i in sorted(positions)]


IndexT = TypeVar("IndexT", bound=FleetIndex)


MIN_FLEET = 32  # least_load scans smaller fleets: its scan is C-speed, the index costs it more


class FleetCache(Generic[IndexT]):
    """The index of the fleet a policy is asked about, or None while that fleet is not indexed
    (fewer than `min_size` workers, or not yet seen twice in a row)."""

    def __init__(self, build: Callable[[tuple[Worker, ...]], IndexT], min_size: int = MIN_FLEET) -> None:
        self._build = build
        self._min_size = min_size
        self._index: IndexT | None = None
        self._last: tuple[Worker, ...] = ()  # the last fleet that had no index

    def get(self, workers: Sequence[Worker]) -> IndexT | None:
        if len(workers) < self._min_size:
            return None
        fleet = workers if isinstance(workers, tuple) else tuple(workers)
        index = self._index
        if index is not None and (fleet is index.fleet or fleet == index.fleet):
            self._last = ()  # "twice in a row" means two consecutive decisions
            return index if index.valid else None
        if fleet != self._last:
            self._last = fleet
            return None
        self.clear()  # the same new fleet twice in a row: index it
        self._index = index = self._build(fleet)
        return index if index.valid else None

    @property
    def current(self) -> IndexT | None:
        """The index kept, whichever fleet it is of."""
        return self._index if self._index is not None and self._index.valid else None

    def clear(self) -> None:
        if self._index is not None:
            self._index.close()
        self._index, self._last = None, ()
