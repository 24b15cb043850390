"""Bounded pin tables: what a sticky key was placed on, kept for as long as it is used.

A client can make up any number of routing keys, so a table of them is bounded twice: keys idle
for longer than `max_idle_secs` are dropped by `expire` (policy maintenance calls it), and past
`max_entries` the least recently used key goes at once. `PinTable` is the one such table; the
manual policy keeps its pins in one and `StickySessions` (`--routing-key-override`) is built on it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from shepherd.workers.worker import Worker

V = TypeVar("V")
K = TypeVar("K")


class PinTable(Generic[K, V]):
    """key -> value in least-recently-used order, with the time each key was last used."""

    def __init__(self, max_entries: int, max_idle_secs: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries <= 0:
            raise ValueError("a pin table needs room for at least one key")
        self._max = max_entries
        self._idle = max_idle_secs
        self._clock = clock
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The key's value, marking it used now (None when not pinned)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries[key] = (entry[0], self._clock())
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (value, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def peek(self, key: K) -> V | None:
        """The key's value without marking it used."""
        entry = self._entries.get(key)
        return entry[0] if entry is not None else None

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def expire(self) -> None:
        """Drop the keys idle for longer than max_idle_secs (the oldest come first, so stop at a fresh one)."""
        cutoff = self._clock() - self._idle
        while self._entries:
            key, (_, used) = next(iter(self._entries.items()))
            if used >= cutoff:
                break
            del self._entries[key]

    def items(self) -> Iterator[tuple[K, V]]:
        return ((key, value) for key, (value, _) in list(self._entries.items()))

    def values(self) -> Iterator[V]:
        return (value for value, _ in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


class StickySessions:
    """`--routing-key-override`: a request with a routing key goes where that key went before, on any policy.

    Keys are per model (the same key for two models pins one worker each). The pinned worker is used
    while it is among the request's available candidates; otherwise the policy's pick is pinned instead.
    """

    def __init__(self, max_entries: int, max_idle_secs: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._pins: PinTable[tuple[str | None, str], str] = PinTable(max_entries, max_idle_secs, clock)

    def pinned(self, model: str | None, key: str, available: Sequence[Worker]) -> Worker | None:
        """The worker `key` is pinned to, when it is one of `available`."""
        url = self._pins.get((model, key))
        if url is None:
            return None
        return next((w for w in available if w.url == url), None)

    def pin(self, model: str | None, key: str, worker: Worker) -> None:
        self._pins.put((model, key), worker.url)

    def expire(self) -> None:
        self._pins.expire()

    def on_worker_removed(self, worker: Worker) -> None:
        for key, url in self._pins.items():
            if url == worker.url:
                self._pins.pop(key)

    def __len__(self) -> int:
        return len(self._pins)
