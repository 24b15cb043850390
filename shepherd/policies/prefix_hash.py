"""prefix_hash: a lighter cache affinity than cache_aware, with no tree to keep.

The request's head (its routing key, else the first `--prefix-token-count` tokens or, without
tokens, four times as many characters; or the deepest `--cache-boundaries` position that fits) is
hashed onto a consistent-hash ring. The ring's worker is taken unless it is loaded past both
`--prefix-hash-load-factor` times the mean and the mean plus `--prefix-hash-balance-abs-threshold`,
in which case the walk continues clockwise; if every worker is that loaded, the least loaded wins.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from shepherd.config import PolicyOptions
from shepherd.policies.base import Policy, RoutingRequest, least_loaded
from shepherd.policies.hash_ring import HashRing
from shepherd.workers.worker import Worker


class PrefixHashPolicy(Policy):
    name = "prefix_hash"
    balances_load = True

    def __init__(self, options: PolicyOptions) -> None:
        self._options = options
        self._ring = HashRing(())
        self._ring_urls: frozenset[str] = frozenset()

    def _head(self, request: RoutingRequest) -> bytes | None:
        if request.routing_key is not None:
            return request.routing_key.encode()
        options = self._options
        tokens = request.tokens
        if tokens is not None:
            fitting = [b for b in options.cache_boundaries if b <= len(tokens)]
            depth = max(fitting) if fitting else options.prefix_token_count
            head = tokens[:depth]
            return struct.pack(f"<{len(head)}I", *head) if head else None
        text = request.text
        fitting = [4 * b for b in options.cache_boundaries if 4 * b <= len(text)]
        depth = max(fitting) if fitting else 4 * options.prefix_token_count
        return text[:depth].encode() if text else None

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        head = self._head(request)
        if head is None:
            return least_loaded(workers)
        urls = frozenset(w.url for w in workers)
        if not urls <= self._ring_urls:
            self._ring_urls = self._ring_urls | urls
            self._ring = HashRing(self._ring_urls)
        by_url = {w.url: w for w in workers}
        total = sum(w.load for w in workers)
        mean = (total + 1) / len(workers)
        options = self._options
        ceiling = max(mean * options.prefix_hash_load_factor, mean + options.prefix_hash_balance_abs_threshold)
        visited: set[str] = set()
        for url in self._ring.walk(head):
            worker = by_url.get(url)
            if worker is None or url in visited:
                continue
            if total == 0 or worker.load <= ceiling:
                return worker
            visited.add(url)
            if len(visited) == len(by_url):
                break
        return least_loaded(workers)

    def on_worker_removed(self, worker: Worker) -> None:
        if worker.url in self._ring_urls:
            self._ring_urls = self._ring_urls - {worker.url}
            self._ring = HashRing(self._ring_urls)
