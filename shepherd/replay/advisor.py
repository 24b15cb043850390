"""Which policy suits a trace: replay it once per candidate setting, rank, and recommend one.

Ranking is by TTFT p99, then p50 (what users of the fleet feel). The recommendation is the
simplest candidate within `tolerance` of the best p99: a plain load balancer beats a cache-affinity
policy that is no faster, since it keeps no state and cannot pile traffic onto one worker. A
cache-affinity policy is recommended only when it also finds clearly more cache hits (at least
`min_hit_gain` more) than the best plain balancer: without reuse to exploit, whatever it wins comes
from its least-loaded fallback, and the trace's luck, not from affinity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from shepherd.config import PolicyOptions
from shepherd.replay.fleet import RunResult, simulate
from shepherd.replay.trace import Trace
from shepherd.sim.engine import EngineParams

AFFINITY_POLICIES = frozenset({"cache_aware", "prefix_hash", "consistent_hashing"})
_SIMPLICITY = {"round_robin": 0, "power_of_two": 1, "least_load": 2, "consistent_hashing": 3, "prefix_hash": 3,
               "cache_aware": 4}


@dataclass(frozen=True)
class Candidate:
    policy: str
    settings: tuple[tuple[str, Any], ...] = ()  # PolicyOptions field -> value, non-default ones only

    @property
    def label(self) -> str:
        if not self.settings:
            return self.policy
        return self.policy + " " + " ".join(f"{_flag(k)}={v:g}" for k, v in self.settings)

    def options(self, base: PolicyOptions) -> PolicyOptions:
        return replace(base, **dict(self.settings))

    def launch_flags(self, load_monitor_interval: float, default_interval: float) -> list[str]:
        flags = ["--policy", self.policy]
        for name, value in self.settings:
            flags += [f"--{_flag(name)}", f"{value:g}"]
        if self.policy in ("least_load", "power_of_two", "cache_aware") and load_monitor_interval != default_interval:
            flags += ["--load-monitor-interval", f"{load_monitor_interval:g}"]
        return flags


def _flag(name: str) -> str:
    return name.replace("_", "-")


def default_candidates(trace: Trace) -> list[Candidate]:
    candidates = [
        Candidate("round_robin"),
        Candidate("power_of_two"),
        Candidate("least_load"),
        Candidate("prefix_hash"),
        Candidate("prefix_hash", (("prefix_token_count", 64),)),
        Candidate("cache_aware"),
        Candidate("cache_aware", (("cache_threshold", 0.5),)),
        Candidate("cache_aware", (("balance_abs_threshold", 8.0), ("balance_rel_threshold", 1.2))),
    ]
    if trace.keyed_share >= 0.5:  # routing keys only mean something when most requests carry one
        candidates.append(Candidate("consistent_hashing"))
    return candidates


@dataclass(frozen=True)
class Row:
    candidate: Candidate
    result: RunResult


@dataclass
class Advice:
    workers: int
    rows: list[Row]  # ranked, best first
    recommended: Row
    reason: str
    launch_flags: list[str]
    capacity: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReplaySettings:
    workers: int
    params: EngineParams
    seed: int = 0
    load_monitor_interval: float = 10.0
    default_load_monitor_interval: float = 10.0
    tolerance: float = 0.05
    min_hit_gain: float = 0.05
    base_options: PolicyOptions = field(default_factory=PolicyOptions)


Progress = Callable[[str, float], None]


def rank(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r.result.ttft_p99_ms, r.result.ttft_p50_ms, _SIMPLICITY.get(
        r.candidate.policy, 9)))


def recommend(ranked: list[Row], tolerance: float, min_hit_gain: float) -> tuple[Row, str]:
    best = ranked[0]
    ceiling = best.result.ttft_p99_ms * (1 + tolerance)
    close = [r for r in ranked if r.result.ttft_p99_ms <= ceiling]
    balancers = [r for r in ranked if r.candidate.policy not in AFFINITY_POLICIES]
    best_balancer_hits = max((r.result.hit_rate for r in balancers), default=0.0)

    def earns_affinity(row: Row) -> bool:
        return row.candidate.policy not in AFFINITY_POLICIES or \
            row.result.hit_rate >= best_balancer_hits + min_hit_gain

    eligible = [r for r in close if earns_affinity(r)]
    if not eligible:  # only affinity policies were fast, and without more cache hits: take the best balancer
        chosen = balancers[0] if balancers else best
        return chosen, (f"the faster cache-affinity settings found no more cache hits than {chosen.candidate.label} "
                        f"(under {min_hit_gain:.0%} more), so their edge is not from affinity; "
                        f"{chosen.candidate.label} has the best TTFT p99 of the plain balancers")
    chosen = min(eligible, key=lambda r: (_SIMPLICITY.get(r.candidate.policy, 9), r.result.ttft_p99_ms))
    if chosen is best:
        reason = f"the lowest TTFT p99, {best.result.ttft_p99_ms:.0f} ms"
    else:
        reason = (f"TTFT p99 {chosen.result.ttft_p99_ms:.0f} ms is within {tolerance:.0%} of the best "
                  f"({best.candidate.label}, {best.result.ttft_p99_ms:.0f} ms), and it is the simpler policy")
    if chosen.candidate.policy in AFFINITY_POLICIES:
        reason += (f"; it finds {chosen.result.hit_rate:.0%} of prompt tokens in the cache against "
                   f"{best_balancer_hits:.0%} for the best plain balancer")
    return chosen, reason


def advise(trace: Trace, settings: ReplaySettings, candidates: list[Candidate] | None = None,
           progress: Progress | None = None, target_p99_ms: float | None = None,
           max_workers: int | None = None) -> Advice:
    candidates = candidates or default_candidates(trace)
    tokens = [trace.tokens_for(i) for i in range(len(trace.requests))]
    rows: list[Row] = []
    for n, candidate in enumerate(candidates, 1):
        label = f"[{n}/{len(candidates)}] {candidate.label}"
        rows.append(Row(candidate, _run(trace, tokens, settings, candidate, settings.workers, label, progress)))
    ranked = rank(rows)
    chosen, reason = recommend(ranked, settings.tolerance, settings.min_hit_gain)
    flags = chosen.candidate.launch_flags(settings.load_monitor_interval, settings.default_load_monitor_interval)
    advice = Advice(settings.workers, ranked, chosen, reason, flags)
    if target_p99_ms is not None:
        advice.capacity = capacity(trace, tokens, settings, chosen.candidate, target_p99_ms,
                                   max_workers or 4 * settings.workers, progress)
    return advice


def _run(trace: Trace, tokens: list[tuple[int, ...]], settings: ReplaySettings, candidate: Candidate,
         workers: int, label: str, progress: Progress | None) -> RunResult:
    report = (lambda share: progress(label, share)) if progress is not None else None
    result = simulate(trace, workers, candidate.policy, candidate.options(settings.base_options), settings.params,
                      settings.seed, settings.load_monitor_interval, tokens, report)
    if progress is not None:
        progress(label, 1.0)
    return result


def capacity(trace: Trace, tokens: list[tuple[int, ...]], settings: ReplaySettings, candidate: Candidate,
             target_p99_ms: float, max_workers: int, progress: Progress | None) -> dict[str, Any]:
    """The fewest workers (up to max_workers) whose TTFT p99 stays under the target, by bisection
    (more workers never make the simulated p99 worse by much; each tried size is reported)."""
    tried: dict[int, float] = {}

    def p99(n: int) -> float:
        if n not in tried:
            label = f"[capacity] {candidate.label} on {n} workers"
            tried[n] = _run(trace, tokens, settings, candidate, n, label, progress).ttft_p99_ms
        return tried[n]

    result: dict[str, Any] = {"target_ttft_p99_ms": target_p99_ms, "policy": candidate.label}
    if p99(max_workers) > target_p99_ms:
        result.update(workers=None, message=f"even {max_workers} workers give a TTFT p99 of "
                                            f"{tried[max_workers]:.0f} ms")
    else:
        low, high = 0, max_workers  # p99(low) misses the target (0 workers: by definition), p99(high) meets it
        while high - low > 1:
            middle = (low + high) // 2
            if p99(middle) <= target_p99_ms:
                high = middle
            else:
                low = middle
        result.update(workers=high, ttft_p99_ms=tried[high])
    result["tried"] = {str(n): round(v, 1) for n, v in sorted(tried.items())}
    return result
