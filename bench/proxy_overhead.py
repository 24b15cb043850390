"""What the gateway costs: direct to a light backend vs through Shepherd vs through SMG, in one run.

    python -m bench.proxy_overhead [--seconds 8] [--rounds 3] [--smg .venv-smg/bin/smg]
                                   [--baseline-checkout DIR] [--workers 2] [--shepherd-flag=--x ...]

The backend is nginx (Debian package) answering fixed bytes, started on loopback with a generated
config (bench/nginx.py): it is not Python and costs a few microseconds per request, so it takes
little CPU from the gateways, which are what is measured. Scenarios: non-streaming chat at
concurrency 1 and 32, and a streamed chat answer (64 SSE events, chunked) at concurrency 32.
Targets run interleaved, `--rounds` times each; the median is reported, and each ratio's spread
(min-max over rounds, both sides of a ratio measured back to back).

Beside requests/s and latency, each target's CPU seconds per 1,000 requests: user + system time
of its process tree (from /proc) over the load run, divided by the requests completed. That is
the figure that does not depend on how many cores a gateway can use.

`--baseline-checkout DIR` adds a second Shepherd run from another checkout (for example
`git worktree add /tmp/base HEAD~3`), so a change is compared with the code before it in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

from bench.cpu import tree_cpu_seconds
from bench.loadgen import LoadResult, have_wrk, run_load
from bench.nginx import Nginx
from bench.smg import Smg, find_smg
from shepherd.testing import Gateway

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "Say something short"}], "max_tokens": 16}
STREAM = {**CHAT, "max_tokens": 64, "stream": True}
STREAM_EVENTS = 64
SCENARIOS = [  # (name, concurrency, body, extra headers: nginx picks the streamed answer by header)
    ("chat c=1", 1, CHAT, {}),
    ("chat c=32", 32, CHAT, {}),
    ("stream c=32", 32, STREAM, {"X-Bench-Stream": "1"}),
]


@dataclass
class Run:
    load: LoadResult
    cpu_per_1k: float  # CPU seconds of the target's processes per 1,000 requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smg", help="path to the smg binary (default: .venv-smg/bin/smg, then PATH)")
    parser.add_argument("--loadgen", choices=("wrk", "python"), default="wrk" if have_wrk() else "python")
    parser.add_argument("--scenarios", default=",".join(s[0] for s in SCENARIOS),
                        help="comma-separated subset of: " + ", ".join(s[0] for s in SCENARIOS))
    parser.add_argument("--shepherd-flag", action="append", default=[],
                        help="an extra `shepherd launch` flag for the Shepherd target (repeatable)")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--baseline-checkout", help="also run the Shepherd of this checkout, as `baseline`")
    parser.add_argument("--workers", type=int, default=0,
                        help="also run `shepherd launch --workers N` as target `shepherd-wN` (its CPU counts the "
                             "supervisor and every child)")
    args = parser.parse_args()
    wanted = {name.strip() for name in args.scenarios.split(",")}
    scenarios = [s for s in SCENARIOS if s[0] in wanted]

    backend = Nginx(stream_events=STREAM_EVENTS)
    urls = [backend.url]
    flags = ("--policy", "round_robin", "--log-level", "warn")
    gateway = Gateway(urls, *flags, *args.shepherd_flag)
    smg_binary = find_smg(args.smg)
    smg = Smg(smg_binary, urls, "round_robin") if smg_binary else None
    baseline = Gateway(urls, *flags, checkout=args.baseline_checkout) if args.baseline_checkout else None
    multi = Gateway(urls, *flags, *args.shepherd_flag, "--workers", str(args.workers)) if args.workers > 1 else None
    targets: dict[str, tuple[str, int]] = {"direct": (backend.url, backend.proc.pid),
                                           "shepherd": (gateway.url, gateway.proc.pid)}
    if baseline is not None:
        targets["baseline"] = (baseline.url, baseline.proc.pid)
    if multi is not None:
        targets[f"shepherd-w{args.workers}"] = (multi.url, multi.proc.pid)
    if smg is not None:
        targets["smg"] = (smg.url, smg.proc.pid)
    print(f"backend: nginx; load generator: {args.loadgen}; {args.rounds} rounds x {args.seconds:.0f}s "
          f"per target and scenario; shepherd flags: {' '.join(args.shepherd_flag) or '(none)'}")
    if smg is None:
        print("SMG not found: run `make bench-setup` (a separate venv with `pip install smg`) to compare against it")

    results: dict[str, dict[str, list[Run]]] = {}
    try:
        for name, concurrency, body, headers in scenarios:
            payload = json.dumps(body).encode()
            runs: dict[str, list[Run]] = {target: [] for target in targets}
            for _ in range(args.rounds):
                for target, (base, pid) in targets.items():
                    before = tree_cpu_seconds(pid)
                    load = run_load(base + "/v1/chat/completions", payload, concurrency, args.seconds,
                                    use_wrk=args.loadgen == "wrk", headers=headers)
                    used = tree_cpu_seconds(pid) - before
                    runs[target].append(Run(load, 1000 * used / load.requests if load.requests else 0.0))
                    time.sleep(0.5)
            results[name] = runs
    finally:
        for process in (smg, baseline, multi, gateway, backend):
            if process is not None:
                process.stop()

    _report(results)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({s: {t: [{**vars(r.load), "cpu_per_1k": r.cpu_per_1k} for r in rs] for t, rs in by.items()}
                       for s, by in results.items()}, handle, indent=2)


def _median(runs: list[Run]) -> tuple[LoadResult, float]:
    return LoadResult(
        requests_per_sec=statistics.median(r.load.requests_per_sec for r in runs),
        p50_ms=statistics.median(r.load.p50_ms for r in runs),
        p99_ms=statistics.median(r.load.p99_ms for r in runs),
        errors=sum(r.load.errors for r in runs),
        bytes_per_request=statistics.median(r.load.bytes_per_request for r in runs),
        requests=sum(r.load.requests for r in runs),
    ), statistics.median(r.cpu_per_1k for r in runs)


def _ratio(top: list[Run], bottom: list[Run], cpu: bool) -> str:
    """Median of the per-round ratios, with their min-max."""
    values = sorted((a.cpu_per_1k / b.cpu_per_1k if cpu else a.load.requests_per_sec / b.load.requests_per_sec)
                    for a, b in zip(top, bottom, strict=True) if (b.cpu_per_1k if cpu else b.load.requests_per_sec))
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f} ({values[0]:.2f}-{values[-1]:.2f})"


def _report(results: dict[str, dict[str, list[Run]]]) -> None:
    print()
    print(f"{'scenario':<12} {'target':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU s/1k':>9} {'errors':>7}")
    for scenario, by_target in results.items():
        for target, runs in by_target.items():
            load, cpu = _median(runs)
            print(f"{scenario:<12} {target:<12} {load.requests_per_sec:>9,.0f} {load.p50_ms:>8.2f} "
                  f"{load.p99_ms:>8.2f} {cpu:>9.3f} {load.errors:>7}")
    print()
    print("ratios (same run; median of rounds, min-max in brackets):")
    for scenario, by_target in results.items():
        shepherd = by_target["shepherd"]
        lines = [f"shepherd/direct req/s {_ratio(shepherd, by_target['direct'], False)}"]
        for other in ("smg", "baseline"):
            if other in by_target:
                lines.append(f"shepherd/{other} req/s {_ratio(shepherd, by_target[other], False)}, "
                             f"CPU per request {_ratio(shepherd, by_target[other], True)}")
        for multi in (t for t in by_target if t.startswith("shepherd-w")):
            lines.append(f"{multi}/shepherd req/s {_ratio(by_target[multi], shepherd, False)}, "
                         f"CPU per request {_ratio(by_target[multi], shepherd, True)}")
            if "smg" in by_target:
                lines.append(f"{multi}/smg req/s {_ratio(by_target[multi], by_target['smg'], False)}")
        print(f"  {scenario:<12} " + ("\n" + " " * 15).join(lines))
        if scenario == "chat c=1":
            direct = _median(by_target["direct"])[0].p50_ms
            added = [f"{target} {1000 * (_median(runs)[0].p50_ms - direct):.0f} us"
                     for target, runs in by_target.items() if target != "direct"]
            print(f"  {'':<12} added p50 latency: " + ", ".join(added))


if __name__ == "__main__":
    main()
