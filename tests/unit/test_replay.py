"""The replay advisor's parts: traces, workloads, the simulated fleet, ranking and the capacity search."""

from __future__ import annotations

import orjson
import pytest

from shepherd.config import PolicyOptions
from shepherd.replay.advisor import Candidate, ReplaySettings, Row, advise, recommend
from shepherd.replay.fleet import RunResult, simulate
from shepherd.replay.trace import TraceError, load_trace
from shepherd.replay.workloads import WORKLOADS, synthetic_trace
from shepherd.sim.engine import EngineParams

PARAMS = EngineParams()


def _result(p99: float, hit: float = 0.0, p50: float = 10.0) -> RunResult:
    return RunResult(requests=100, hit_rate=hit, ttft_p50_ms=p50, ttft_p99_ms=p99, mean_ttft_ms=p50,
                     throughput_rps=10, output_tps=100, min_share=0.25, max_share=0.25, makespan_secs=10)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workloads_are_deterministic_for_a_seed(name: str) -> None:
    a, b = synthetic_trace(name, 300, 20, 3), synthetic_trace(name, 300, 20, 3)
    assert a.requests == b.requests and len(a.requests) == 300
    assert synthetic_trace(name, 300, 20, 4).requests != a.requests
    arrivals = [r.arrival for r in a.requests]
    assert arrivals == sorted(arrivals)


def test_shared_blocks_become_shared_token_prefixes() -> None:
    trace = synthetic_trace("multi-turn", 200, 20, 1)
    first = trace.requests[0]
    later = next(i for i, r in enumerate(trace.requests) if i and r.blocks[:len(first.blocks)] == first.blocks)
    tokens_first, tokens_later = trace.tokens_for(0), trace.tokens_for(later)
    assert len(tokens_first) == first.prompt_tokens
    assert tokens_later[:len(tokens_first)] == tokens_first
    unique = synthetic_trace("unique", 50, 20, 1)
    assert unique.tokens_for(0)[:8] != unique.tokens_for(1)[:8]


def test_simulation_is_deterministic_and_cache_affinity_pays_on_chat() -> None:
    trace = synthetic_trace("multi-turn", 600, 15, 2)
    runs = {policy: simulate(trace, 4, policy, PolicyOptions(), PARAMS, seed=9)
            for policy in ("round_robin", "cache_aware", "power_of_two")}
    assert simulate(trace, 4, "power_of_two", PolicyOptions(), PARAMS, seed=9) == runs["power_of_two"]
    assert runs["cache_aware"].hit_rate > runs["round_robin"].hit_rate + 0.1
    assert runs["cache_aware"].ttft_p50_ms < runs["round_robin"].ttft_p50_ms
    assert runs["round_robin"].min_share == runs["round_robin"].max_share == 0.25
    for result in runs.values():
        assert result.requests == 600 and result.ttft_p99_ms >= result.ttft_p50_ms > 0


def test_more_workers_lower_ttft_under_load() -> None:
    trace = synthetic_trace("unique", 400, 40, 5)
    small = simulate(trace, 1, "round_robin", PolicyOptions(), PARAMS, seed=1)
    large = simulate(trace, 6, "round_robin", PolicyOptions(), PARAMS, seed=1)
    assert large.ttft_p99_ms < small.ttft_p99_ms


def test_recommendation_prefers_the_simpler_policy_when_close() -> None:
    rows = [Row(Candidate("cache_aware"), _result(100, hit=0.8)), Row(Candidate("round_robin"), _result(104, 0.5)),
            Row(Candidate("least_load"), _result(150, 0.5))]
    chosen, reason = recommend(rows, tolerance=0.05, min_hit_gain=0.05)
    assert chosen.candidate.policy == "round_robin" and "within 5%" in reason


def test_affinity_is_recommended_only_with_more_cache_hits() -> None:
    no_gain = [Row(Candidate("cache_aware"), _result(80, hit=0.02)), Row(Candidate("least_load"), _result(95, 0.0)),
               Row(Candidate("round_robin"), _result(120, 0.0))]
    chosen, reason = recommend(no_gain, 0.05, 0.05)
    assert chosen.candidate.policy == "least_load" and "no more cache hits" in reason
    gain = [Row(Candidate("cache_aware"), _result(80, hit=0.6)), Row(Candidate("least_load"), _result(95, 0.3))]
    chosen, reason = recommend(gain, 0.05, 0.05)
    assert chosen.candidate.policy == "cache_aware" and "60%" in reason


def test_capacity_finds_the_fewest_workers_under_the_target() -> None:
    trace = synthetic_trace("unique", 300, 30, 8)
    settings = ReplaySettings(workers=2, params=PARAMS, seed=1)
    advice = advise(trace, settings, [Candidate("round_robin")], target_p99_ms=400, max_workers=8)
    capacity = advice.capacity
    assert capacity is not None and capacity["workers"] is not None
    tried = {int(n): v for n, v in capacity["tried"].items()}
    assert tried[capacity["workers"]] <= 400
    if capacity["workers"] > 1:
        assert tried.get(capacity["workers"] - 1, 1e9) > 400
    assert advice.launch_flags == ["--policy", "round_robin"]


def test_candidate_flags_are_launch_flags() -> None:
    candidate = Candidate("cache_aware", (("cache_threshold", 0.5), ("balance_abs_threshold", 8.0)))
    assert candidate.launch_flags(2.0, 10.0) == ["--policy", "cache_aware", "--cache-threshold", "0.5",
                                                 "--balance-abs-threshold", "8", "--load-monitor-interval", "2"]
    assert candidate.options(PolicyOptions()).cache_threshold == 0.5
    from shepherd.cli import build_parser
    args = build_parser().parse_args(["launch", *candidate.launch_flags(2.0, 10.0)])
    assert args.cache_threshold == 0.5 and args.balance_abs_threshold == 8 and args.load_monitor_interval == 2


def test_trace_loader_skips_bad_lines_and_client_errors(tmp_path) -> None:
    good = {"v": 1, "t": 100.0, "model": "m", "blocks": "00" * 16, "block_bytes": 128, "prompt_bytes": 256,
            "prompt_tokens": 64, "output_tokens": 8, "status": 200}
    lines = [orjson.dumps(good), b"{not json", orjson.dumps({**good, "t": 99.0, "status": 400}),
             orjson.dumps({**good, "t": 101.5, "prompt_tokens": None, "output_tokens": None, "max_tokens": 5,
                           "model": "other"}),
             orjson.dumps([1, 2])]
    (tmp_path / "traffic-000001.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    trace = load_trace(str(tmp_path))
    assert trace.skipped == 2 and len(trace.requests) == 2
    assert [r.arrival for r in trace.requests] == [0.0, 1.5]
    assert trace.tokens_per_block == 32  # 64 tokens for 256 bytes, 128-byte blocks
    assert trace.requests[1].output_tokens == 5 and trace.requests[1].prompt_tokens == 64
    assert len(trace.requests[0].blocks) == 2
    assert [r.model for r in trace.for_model("other").requests] == ["other"]
    with pytest.raises(TraceError):
        trace.for_model("missing")
    with pytest.raises(TraceError):
        load_trace(str(tmp_path / "nothing-here"))
