"""`shepherd replay TRACE | --workload NAME`: the command's flags and its run."""

from __future__ import annotations

import argparse
import sys

import orjson

from shepherd.config import GatewayConfig
from shepherd.policies.factory import POLICY_NAMES
from shepherd.replay.advisor import ReplaySettings, advise, default_candidates
from shepherd.replay.report import as_json, as_table
from shepherd.replay.trace import TraceError, load_trace
from shepherd.replay.workloads import WORKLOADS, synthetic_trace
from shepherd.sim.engine import EngineParams


def add_replay_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", nargs="?", help="a traffic-*.jsonl file or a --record-traffic directory")
    source = parser.add_argument_group("synthetic traffic (instead of a trace)")
    source.add_argument("--workload", choices=tuple(WORKLOADS), help="generate a trace of this kind")
    source.add_argument("--requests", type=int, default=2000, help="requests to generate (default: %(default)s)")
    source.add_argument("--rate", type=float, default=20.0, help="requests per second (default: %(default)s)")
    fleet = parser.add_argument_group("the simulated fleet")
    fleet.add_argument("--workers", type=int, default=4, help="fleet size (default: %(default)s)")
    engine = EngineParams()
    fleet.add_argument("--prefill-tps", type=float, default=engine.prefill_tps)
    fleet.add_argument("--decode-base-ms", type=float, default=engine.decode_base_ms)
    fleet.add_argument("--decode-per-req-ms", type=float, default=engine.decode_per_req_ms)
    fleet.add_argument("--prefill-chunk-tokens", type=int, default=engine.prefill_chunk_tokens)
    fleet.add_argument("--max-running", type=int, default=engine.max_running)
    fleet.add_argument("--kv-capacity-tokens", type=int, default=engine.kv_capacity_tokens)
    fleet.add_argument("--block-size", type=int, default=engine.block_size)
    fleet.add_argument("--load-monitor-interval", type=float, default=GatewayConfig().load_monitor_interval_secs,
                       help="seconds between the simulated gateway's engine-load polls (default: %(default)s)")
    run = parser.add_argument_group("the replay")
    run.add_argument("--seed", type=int, default=0, help="seeds the policies and the workload (default: 0)")
    run.add_argument("--policies", nargs="+", choices=POLICY_NAMES, default=None,
                     help="only try these policies (default: every one worth trying)")
    run.add_argument("--time-scale", type=float, default=1.0,
                     help="multiply the trace's arrival gaps (0.5 replays it at twice the rate)")
    run.add_argument("--max-requests", type=int, default=None, help="replay only the first N requests")
    run.add_argument("--model", default=None, help="replay only this model's requests (a fleet serves one model)")
    run.add_argument("--target-ttft-p99-ms", type=float, default=None,
                     help="also find the fewest workers that keep TTFT p99 under this")
    run.add_argument("--max-workers", type=int, default=None,
                     help="the largest fleet the capacity search tries (default: 4 x --workers)")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run_replay)


def _fail(message: str) -> int:
    print(f"shepherd replay: {message}", file=sys.stderr)
    return 2


def run_replay(args: argparse.Namespace) -> int:
    if (args.trace is None) == (args.workload is None):
        return _fail("give a TRACE or --workload NAME (one of them)")
    if args.workers < 1 or (args.max_workers is not None and args.max_workers < 1):
        return _fail("--workers and --max-workers must be at least 1")
    if args.time_scale <= 0:
        return _fail("--time-scale must be positive")
    if min(args.prefill_tps, args.kv_capacity_tokens, args.max_running, args.block_size,
           args.prefill_chunk_tokens) <= 0 or args.load_monitor_interval <= 0:
        return _fail("engine parameters and --load-monitor-interval must be positive")
    try:
        if args.trace is not None:
            trace = load_trace(args.trace, args.max_requests)
        else:
            trace = synthetic_trace(args.workload, args.max_requests or args.requests, args.rate, args.seed)
    except (TraceError, ValueError, OSError) as exc:
        return _fail(str(exc))
    if args.model is not None:
        try:
            trace = trace.for_model(args.model)
        except TraceError as exc:
            return _fail(str(exc))
    if args.time_scale != 1.0:
        trace = trace.scaled(args.time_scale)
    params = EngineParams(prefill_tps=args.prefill_tps, decode_base_ms=args.decode_base_ms,
                          decode_per_req_ms=args.decode_per_req_ms, prefill_chunk_tokens=args.prefill_chunk_tokens,
                          max_running=args.max_running, kv_capacity_tokens=args.kv_capacity_tokens,
                          block_size=args.block_size)
    settings = ReplaySettings(workers=args.workers, params=params, seed=args.seed,
                              load_monitor_interval=args.load_monitor_interval,
                              default_load_monitor_interval=GatewayConfig().load_monitor_interval_secs)
    candidates = default_candidates(trace)
    if args.policies:
        candidates = [c for c in candidates if c.policy in args.policies]
        if not candidates:
            return _fail(f"none of {', '.join(args.policies)} is a policy the advisor tries "
                         f"({', '.join(sorted({c.policy for c in default_candidates(trace)}))})")
    interactive = sys.stderr.isatty()

    def progress(label: str, share: float) -> None:
        if share >= 1.0:
            print(f"\r{label}: done{' ' * 12}", file=sys.stderr, flush=True)
        elif interactive:
            print(f"\r{label}: {share:4.0%}", end="", file=sys.stderr, flush=True)

    advice = advise(trace, settings, candidates, progress, args.target_ttft_p99_ms, args.max_workers)
    if args.json:
        sys.stdout.write(orjson.dumps(as_json(trace, settings, advice), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(as_table(trace, settings, advice))
    return 0
