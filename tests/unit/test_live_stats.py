"""The status page's per-second window: rates, errors, TTFT quantiles and per-(worker, model) totals."""

from __future__ import annotations

import pytest

from shepherd.observability.live_stats import LiveStats


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def test_window_series_and_pairs() -> None:
    clock = Clock()
    stats = LiveStats(window_secs=60, clock=clock)
    for i in range(100):
        stats.observe("w1", "m", 200, 0.010 if i < 98 else 2.0, prompt_tokens=10, cached_tokens=5)
    stats.observe("w2", "m", 503, None)
    stats.observe(None, None, 429, None)
    clock.now += 4
    snapshot = stats.snapshot(minutes=1, step_secs=5)
    series = snapshot["series"]
    assert sum(series["rps"][:-1]) == 0
    assert series["rps"][-1] == pytest.approx(102 / 5)
    assert series["error_rate"][-1] == pytest.approx(2 / 102, abs=1e-3)
    assert 9 <= series["ttft_p50_ms"][-1] <= 13  # log buckets: within one bucket of 10 ms
    assert 1500 <= series["ttft_p99_ms"][-1] <= 2600
    pairs = {(p["worker"], p["model"]): p for p in snapshot["pairs"]}
    assert pairs[("w1", "m")]["requests"] == 100 and pairs[("w1", "m")]["cache_hit_rate"] == 0.5
    assert pairs[("w2", "m")]["errors"] == 1 and pairs[("-", "-")]["errors"] == 1


def test_old_seconds_leave_the_window() -> None:
    clock = Clock()
    stats = LiveStats(window_secs=60, clock=clock)
    stats.observe("w1", "m", 200, 0.1)
    clock.now += 61
    stats.observe("w1", "m", 200, 0.1)  # reuses the slot of 61 seconds ago
    snapshot = stats.snapshot(minutes=1)
    assert snapshot["pairs"][0]["requests"] == 1
    assert sum(s for s in snapshot["series"]["rps"]) * 5 == pytest.approx(1)


def test_partial_newest_point_is_a_rate_over_its_elapsed_seconds() -> None:
    clock = Clock()
    stats = LiveStats(window_secs=60, clock=clock)
    for _ in range(10):
        stats.observe("w", "m", 200, 0.1)
    snapshot = stats.snapshot(minutes=1, step_secs=5)
    last_start = snapshot["series"]["t"][-1]
    elapsed = int(clock.now) - last_start + 1
    assert snapshot["series"]["rps"][-1] == pytest.approx(10 / elapsed)


@pytest.mark.parametrize(("ttft", "reported_ms"), [(0.0001, 1.0), (0.001, 1.0), (0.00101, 1.26), (0.01, 10.0),
                                                  (0.0101, 12.59), (10_000.0, 125892.54)])
def test_a_time_to_first_token_is_reported_as_its_bucket_upper_bound(ttft: float, reported_ms: float) -> None:
    stats = LiveStats(window_secs=60, clock=Clock())
    stats.observe("w", "m", 200, ttft)
    assert stats.snapshot(minutes=1)["series"]["ttft_p50_ms"][-1] == reported_ms
