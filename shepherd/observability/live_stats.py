"""Per-second request counters for the last few minutes, for the status page.

Prometheus counters are cumulative and meant to be scraped; the status page wants "the last five
minutes" without a Prometheus server. Every finished inference request adds to the current
one-second slot: a count, an error count and token totals per (worker, model), and its time to
first token in a log-spaced histogram. Slots older than the window are reused, so memory is fixed:
WINDOW_SECS slots, each with at most MAX_PAIRS (worker, model) rows.

Time to first token is the time to the first relayed chunk for a stream, and the whole answer's
time otherwise (that is when a non-streaming client sees its first token).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

WINDOW_SECS = 300
MAX_PAIRS = 1024
# Histogram bucket upper bounds: 1 ms to about 2 min, 10 buckets per decade.
_BUCKETS = tuple(0.001 * 10 ** (i / 10) for i in range(52))
_LAST_BUCKET = len(_BUCKETS) - 1


class _Slot:
    __slots__ = ("second", "pairs", "ttft", "requests", "errors")

    def __init__(self) -> None:
        self.second = -1
        self.pairs: dict[tuple[str, str], list[int]] = {}  # -> [requests, errors, prompt, cached]
        self.ttft = [0] * len(_BUCKETS)
        self.requests = 0
        self.errors = 0

    def reset(self, second: int) -> None:
        self.second = second
        self.pairs.clear()
        self.ttft = [0] * len(_BUCKETS)
        self.requests = 0
        self.errors = 0


class LiveStats:
    def __init__(self, window_secs: int = WINDOW_SECS, clock: Callable[[], float] = time.time) -> None:
        self._window = window_secs
        self._clock = clock
        self._slots = [_Slot() for _ in range(window_secs)]

    def observe(self, worker: str | None, model: str | None, status: int, ttft: float | None,
                prompt_tokens: int = 0, cached_tokens: int = 0) -> None:
        # Once per inference request, so the slot and the bucket are found inline: the current
        # second's slot (reset if it held an older second), and the first bucket whose upper bound
        # is at least the time to first token (the last takes anything longer).
        second = int(self._clock())
        slot = self._slots[second % self._window]
        if slot.second != second:
            slot.reset(second)
        error = status >= 500 or status == 429
        slot.requests += 1
        slot.errors += error
        if ttft is not None and status < 400:
            slot.ttft[min(bisect_left(_BUCKETS, ttft), _LAST_BUCKET)] += 1
        key = (worker or "-", model or "-")
        row = slot.pairs.get(key)
        if row is None:
            if len(slot.pairs) >= MAX_PAIRS:
                key = ("-", "-")
                row = slot.pairs.setdefault(key, [0, 0, 0, 0])
            else:
                row = slot.pairs[key] = [0, 0, 0, 0]
        row[0] += 1
        row[1] += error
        row[2] += prompt_tokens
        row[3] += cached_tokens

    def snapshot(self, minutes: float = 5.0, step_secs: int = 5) -> dict[str, Any]:
        """Series over the window (one point per `step_secs`) and per (worker, model) totals."""
        now = int(self._clock())
        span = min(self._window, max(step_secs, int(minutes * 60)))
        first = now - span + 1
        live = [s for s in self._slots if first <= s.second <= now]
        series: dict[str, list[Any]] = {"t": [], "rps": [], "error_rate": [], "ttft_p50_ms": [], "ttft_p99_ms": []}
        for start in range(first, now + 1, step_secs):
            chunk = [s for s in live if start <= s.second < start + step_secs]
            requests = sum(s.requests for s in chunk)
            errors = sum(s.errors for s in chunk)
            histogram = [sum(column) for column in zip(*(s.ttft for s in chunk), strict=True)] if chunk else []
            series["t"].append(start)
            elapsed = min(step_secs, now - start + 1)  # the newest point covers only the seconds so far
            series["rps"].append(round(requests / elapsed, 3))
            series["error_rate"].append(round(errors / requests, 4) if requests else 0.0)
            series["ttft_p50_ms"].append(_quantile_ms(histogram, 0.5))
            series["ttft_p99_ms"].append(_quantile_ms(histogram, 0.99))
        totals: dict[tuple[str, str], list[int]] = {}
        for slot in live:
            for key, row in slot.pairs.items():
                total = totals.setdefault(key, [0, 0, 0, 0])
                for i in range(4):
                    total[i] += row[i]
        pairs = [{"worker": worker, "model": model, "requests": r, "errors": e,
                  "prompt_tokens": p, "cached_tokens": c, "cache_hit_rate": round(c / p, 4) if p else None}
                 for (worker, model), (r, e, p, c) in sorted(totals.items())]
        return {"window_secs": span, "step_secs": step_secs, "series": series, "pairs": pairs}


def _quantile_ms(histogram: list[int], q: float) -> float | None:
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return round(_BUCKETS[index] * 1000, 2)
    return round(_BUCKETS[-1] * 1000, 2)
