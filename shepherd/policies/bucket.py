"""bucket: place requests by length, so each worker sees prompts of a similar size.

Each worker owns a contiguous range of request lengths (tokens when known, else characters). At
first the ranges split [0, 4096) evenly, the last worker taking everything above. Every
`--bucket-adjust-interval-secs` the boundaries move so that each worker gets about the same share
of the characters seen in the last window. When the window's load is lopsided (max - min above
`--balance-abs-threshold` and max above `--balance-rel-threshold` times min), the worker with the
least recent load wins regardless of length.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import deque
from collections.abc import Callable, Sequence

from shepherd.config import PolicyOptions
from shepherd.policies.base import Policy, RoutingRequest
from shepherd.workers.worker import Worker

INITIAL_SPAN = 4096


class BucketPolicy(Policy):
    name = "bucket"

    def __init__(self, options: PolicyOptions, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._options = options
        self._rng = rng or random.Random()
        self._clock = clock
        self._urls: list[str] = []
        self._upper_bounds: list[int] = []  # exclusive upper bound of each worker's range but the last
        self._window: deque[tuple[float, str, int]] = deque()  # (time, url, length) of recent choices
        self._window_load: dict[str, int] = {}  # url -> characters routed there within the window
        self._last_adjust = clock()

    def _layout(self, urls: list[str]) -> None:
        self._urls = urls
        self._window_load = {url: self._window_load.get(url, 0) for url in urls}
        gap = max(1, INITIAL_SPAN // len(urls))
        self._upper_bounds = [gap * (i + 1) for i in range(len(urls) - 1)]

    def _recent_load(self, now: float) -> dict[str, int]:
        horizon = now - self._options.bucket_adjust_interval_secs
        window, load = self._window, self._window_load
        while window and window[0][0] < horizon:
            _, url, length = window.popleft()
            if url in load:
                load[url] -= length
        return load

    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        urls = sorted(w.url for w in workers)
        if urls != self._urls:
            self._layout(urls)
        by_url = {w.url: w for w in workers}
        length = len(request.tokens) if request.tokens is not None else len(request.text)
        now = self._clock()
        if now - self._last_adjust >= self._options.bucket_adjust_interval_secs:
            self._rebalance()
            self._last_adjust = now
        load = self._recent_load(now)
        heaviest, lightest = max(load.values()), min(load.values())
        if heaviest - lightest > self._options.balance_abs_threshold and \
                heaviest > lightest * self._options.balance_rel_threshold:
            url = self._rng.choice([u for u, v in load.items() if v == lightest])
        else:
            url = self._urls[bisect.bisect_right(self._upper_bounds, length)]
        self._window.append((now, url, length))
        load[url] += length
        return by_url[url]

    def _rebalance(self) -> None:
        """Move the boundaries so each worker gets an equal share of the window's characters."""
        lengths = sorted(length for _, _, length in self._window)
        if len(self._urls) < 2 or len(lengths) < len(self._urls):
            return
        total = sum(lengths)
        share = total / len(self._urls)
        bounds: list[int] = []
        running = 0
        for length in lengths:
            running += length
            if running >= share * (len(bounds) + 1) and len(bounds) < len(self._urls) - 1:
                bounds.append(length + 1)
        if len(bounds) == len(self._urls) - 1 and bounds == sorted(bounds):
            self._upper_bounds = bounds

    def boundaries(self) -> list[int]:
        return list(self._upper_bounds)
