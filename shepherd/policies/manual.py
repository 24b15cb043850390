"""manual: sticky sessions keyed by the routing key (`x-smg-routing-key` or `--routing-key-headers`).

The first request of a key is placed by `--assignment-mode` (random, min_load, min_group: fewest
active keys, delegate: as min_load) and pinned. Later requests go to the pinned worker while it is
available; if it is not, a new worker is chosen and remembered as well (at most two per key, so a
worker that comes back gets its sessions back). Keys idle for `--max-idle-secs` are forgotten.
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
from shepherd.workers.worker import Worker

MAX_PINNED = 2


class _Pin:
    __slots__ = ("urls", "last_access")

    def __init__(self, url: str, now: float) -> None:
        self.urls = [url]
        self.last_access = now


class ManualPolicy(Policy):
    name = "manual"

    def __init__(self, options: PolicyOptions, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._options = options
        self._rng = rng or random.Random()
        self._clock = clock
        self._pins: dict[str, _Pin] = {}

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        key = request.routing_key
        if key is None:
            return self._assign(workers)
        now = self._clock()
        pin = self._pins.get(key)
        if pin is not None:
            pin.last_access = now
            by_url = {w.url: w for w in workers}
            for url in pin.urls:
                if url in by_url:
                    return by_url[url]
            chosen = self._assign(workers, key)
            pin.urls = [*pin.urls, chosen.url][-MAX_PINNED:]
            return chosen
        chosen = self._assign(workers, key)
        self._pins[key] = _Pin(chosen.url, now)
        return chosen

    def _assign(self, workers: Sequence[Worker], key: str | None = None) -> Worker:
        if key is not None and self._options.agree_across_instances:
            return max(workers, key=lambda w: hash64(f"{key}\x00{w.url}".encode()))
        mode = self._options.assignment_mode
        if mode == "random":
            return workers[self._rng.randrange(len(workers))]
        if mode == "min_group":
            groups = Counter(pin.urls[-1] for pin in self._pins.values())
            fewest = min(groups.get(w.url, 0) for w in workers)
            return self._rng.choice([w for w in workers if groups.get(w.url, 0) == fewest])
        lowest = least_loaded(workers).load  # min_load and delegate
        return self._rng.choice([w for w in workers if w.load == lowest])

    def pinned(self, key: str) -> list[str]:
        pin = self._pins.get(key)
        return list(pin.urls) if pin else []

    def maintain(self) -> None:
        cutoff = self._clock() - self._options.max_idle_secs
        for key in [k for k, pin in self._pins.items() if pin.last_access < cutoff]:
            del self._pins[key]

    def on_worker_removed(self, worker: Worker) -> None:
        for key in list(self._pins):
            pin = self._pins[key]
            pin.urls = [url for url in pin.urls if url != worker.url]
            if not pin.urls:
                del self._pins[key]

    def __len__(self) -> int:
        return len(self._pins)
