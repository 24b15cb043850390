"""manual: sticky sessions keyed by the routing key (`x-smg-routing-key` or `--routing-key-headers`).

The first request of a key is placed by `--assignment-mode` (random, min_load, min_group: fewest
active keys, delegate: as min_load) and pinned. Later requests go to the pinned worker while it is
available; if it is not, a new worker is chosen and remembered as well (at most two per key, so a
worker that comes back gets its sessions back). Keys idle for `--max-idle-secs` are forgotten, and
past `max_sticky_keys` the least recently used key goes (policies/sticky.py's PinTable).
Requests without a key are placed without pinning. In a mesh (`agree_across_instances`), a key is
placed by rendezvous hashing over the available workers instead, so every instance pins it to the
same worker (and re-pins it to the same one when that worker is gone) without a word between them.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

from shepherd.config import PolicyOptions
from shepherd.policies.base import Policy, RoutingRequest, least_loaded
from shepherd.policies.hash_ring import hash64
from shepherd.policies.sticky import PinTable
from shepherd.workers.worker import Worker

MAX_PINNED = 2


class ManualPolicy(Policy):
    name = "manual"

    def __init__(self, options: PolicyOptions, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._options = options
        self._rng = rng or random.Random()
        # key -> the worker URLs it is pinned to, newest last
        self._pins: PinTable[str, list[str]] = PinTable(options.max_sticky_keys, options.max_idle_secs, clock)

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        key = request.routing_key
        if key is None:
            return self._assign(workers)
        urls = self._pins.get(key)
        if urls is not None:
            by_url = {w.url: w for w in workers}
            for url in urls:
                if url in by_url:
                    return by_url[url]
            chosen = self._assign(workers, key)
            urls.append(chosen.url)
            del urls[:-MAX_PINNED]
            return chosen
        chosen = self._assign(workers, key)
        self._pins.put(key, [chosen.url])
        return chosen

    def _assign(self, workers: Sequence[Worker], key: str | None = None) -> Worker:
        if key is not None and self._options.agree_across_instances:
            return max(workers, key=lambda w: hash64(f"{key}\x00{w.url}".encode()))
        mode = self._options.assignment_mode
        if mode == "random":
            return workers[self._rng.randrange(len(workers))]
        if mode == "min_group":
            groups = Counter(urls[-1] for urls in self._pins.values())
            fewest = min(groups.get(w.url, 0) for w in workers)
            return self._rng.choice([w for w in workers if groups.get(w.url, 0) == fewest])
        lowest = least_loaded(workers).load  # min_load and delegate
        return self._rng.choice([w for w in workers if w.load == lowest])

    def pinned(self, key: str) -> list[str]:
        return list(self._pins.peek(key) or ())

    def maintain(self) -> None:
        self._pins.expire()

    def on_worker_removed(self, worker: Worker) -> None:
        for key, urls in self._pins.items():
            urls[:] = [url for url in urls if url != worker.url]
            if not urls:
                self._pins.pop(key)

    def __len__(self) -> int:
        return len(self._pins)
