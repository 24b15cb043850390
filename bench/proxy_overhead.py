"""What the gateway costs: direct to a fast backend vs through Shepherd vs through SMG, in one run.

    python -m bench.proxy_overhead [--seconds 8] [--rounds 3] [--smg .venv-smg/bin/smg]
                                   [--baseline-checkout DIR] [--workers 2 [--workers-only]]

`--baseline-checkout DIR` adds a second Shepherd gateway run from another checkout (for example
`git worktree add /tmp/base HEAD~3`), so a change is compared with the code before it in one run.

The backend is the simulator's canned engine (instant answers), so the gateway's own overhead is
what the numbers show. Scenarios: non-streaming chat at concurrency 1 and 32, and streaming chat
(64 tokens per answer) at concurrency 32. Targets run interleaved, `--rounds` times each, and the
median is reported, so slow drift on a shared machine hits all of them alike.

`--workers N` adds `shepherd launch --workers N` against `--workers 1` in the same run, in front of
an nginx backend with canned answers (not the Python simulator, which would share the cores and
cap both), with the gateway's CPU seconds per 1,000 requests (supervisor and children together).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import httpx

from bench.loadgen import LoadResult, have_wrk, run_load
from bench.nginx_backend import NginxBackend
from bench.smg import Smg, find_smg
from shepherd.testing import Gateway, Sim

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "Say something short"}], "max_tokens": 16}
STREAM = {**CHAT, "max_tokens": 64, "stream": True}
SCENARIOS = [  # (name, concurrency, body)
    ("chat c=1", 1, CHAT),
    ("chat c=32", 32, CHAT),
    ("stream c=32", 32, STREAM),
]


def events_per_stream(url: str) -> int:
    with httpx.Client(timeout=30) as http, http.stream("POST", url, json=STREAM) as response:
        return sum(1 for line in response.iter_lines() if line.startswith("data:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smg", help="path to the smg binary (default: .venv-smg/bin/smg, then PATH)")
    parser.add_argument("--loadgen", choices=("wrk", "python"), default="wrk" if have_wrk() else "python")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--baseline-checkout", help="also run the Shepherd of this checkout, as `baseline`")
    parser.add_argument("--workers", type=int, default=0, help="also compare --workers N with --workers 1 (nginx)")
    parser.add_argument("--workers-only", action="store_true", help="only the --workers comparison")
    args = parser.parse_args()
    if args.workers:
        compare_workers(args.workers, args.seconds, args.rounds, args.loadgen == "wrk")
        if args.workers_only:
            return

    sim = Sim(1, "--engine", "canned", "--record-requests", "0")
    gateway = Gateway(sim.urls, "--policy", "round_robin", "--log-level", "warn")
    smg_binary = find_smg(args.smg)
    smg = Smg(smg_binary, sim.urls, "round_robin") if smg_binary else None
    baseline = (Gateway(sim.urls, "--policy", "round_robin", "--log-level", "warn", checkout=args.baseline_checkout)
                if args.baseline_checkout else None)
    targets = {"direct": sim.urls[0], "shepherd": gateway.url}
    if baseline is not None:
        targets["baseline"] = baseline.url
    if smg is not None:
        targets["smg"] = smg.url
    print(f"load generator: {args.loadgen}; {args.rounds} rounds x {args.seconds:.0f}s per target and scenario")
    if smg is None:
        print("SMG not found: run `make bench-setup` (a separate venv with `pip install smg`) to compare against it")

    events = events_per_stream(gateway.url + "/v1/chat/completions")
    results: dict[str, dict[str, LoadResult]] = {}
    try:
        for name, concurrency, body in SCENARIOS:
            payload = json.dumps(body).encode()
            runs: dict[str, list[LoadResult]] = {target: [] for target in targets}
            for _ in range(args.rounds):
                for target, base in targets.items():
                    runs[target].append(run_load(base + "/v1/chat/completions", payload, concurrency, args.seconds,
                                                 use_wrk=args.loadgen == "wrk"))
                    time.sleep(0.5)
            results[name] = {target: _median(rs) for target, rs in runs.items()}
    finally:
        if smg is not None:
            smg.stop()
        if baseline is not None:
            baseline.stop()
        gateway.stop()
        sim.stop()

    _report(results, events)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({s: {t: vars(r) for t, r in rs.items()} for s, rs in results.items()}, handle, indent=2)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live and reaped children (a supervisor and its gateways)."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(p: int) -> list[str]:
        with open(f"/proc/{p}/stat") as file:
            return file.read().rpartition(")")[2].split()

    fields = stat(pid)  # after the name: state is [0], utime [11], stime [12], cutime [13], cstime [14]
    total = sum(int(v) for v in fields[11:15])
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        for child in file.read().split():
            try:
                total += sum(int(v) for v in stat(int(child))[11:13])
            except FileNotFoundError:
                pass
    return total / tick


def compare_workers(count: int, seconds: float, rounds: int, use_wrk: bool) -> None:
    backend = NginxBackend()
    flags = ("--policy", "round_robin", "--log-level", "warn", "--history-backend", "memory",
             "--disable-health-check")
    gateways = {"workers=1": Gateway([backend.url], *flags, "--workers", "1"),
                f"workers={count}": Gateway([backend.url], *flags, "--workers", str(count))}
    time.sleep(2)  # every process up and registered
    payload = json.dumps(CHAT).encode()
    rows: dict[tuple[int, str], list[tuple[LoadResult, float]]] = {}
    try:
        for concurrency in (32, 64):
            for _ in range(rounds):
                for name, gateway in gateways.items():
                    before = _cpu_seconds(gateway.proc.pid)
                    result = run_load(gateway.url + "/v1/chat/completions", payload, concurrency, seconds,
                                      use_wrk=use_wrk)
                    used = _cpu_seconds(gateway.proc.pid) - before
                    per_thousand = 1000 * used / max(1.0, result.requests_per_sec * seconds)
                    rows.setdefault((concurrency, name), []).append((result, per_thousand))
                    time.sleep(0.5)
    finally:
        for gateway in gateways.values():
            gateway.stop()
        backend.stop()
    print(f"\n--workers comparison, nginx backend, {os.cpu_count()} cores, {rounds} rounds x {seconds:.0f}s (median)")
    print(f"{'scenario':<10} {'gateway':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'CPU s/1k req':>13}")
    medians: dict[tuple[int, str], float] = {}
    for (concurrency, name), runs in rows.items():
        result = _median([r for r, _ in runs])
        cpu = statistics.median(c for _, c in runs)
        medians[(concurrency, name)] = result.requests_per_sec
        print(f"{'chat c=' + str(concurrency):<10} {name:<10} {result.requests_per_sec:>9,.0f} {result.p50_ms:>8.2f} "
              f"{result.p99_ms:>8.2f} {result.errors:>7} {cpu:>13.3f}")
    for concurrency in (32, 64):
        ratio = medians[(concurrency, f"workers={count}")] / medians[(concurrency, "workers=1")]
        print(f"  chat c={concurrency}: workers={count}/workers=1 throughput {ratio:.2f}")


def _median(runs: list[LoadResult]) -> LoadResult:
    return LoadResult(
        requests_per_sec=statistics.median(r.requests_per_sec for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        errors=sum(r.errors for r in runs),
        bytes_per_request=statistics.median(r.bytes_per_request for r in runs),
    )


def _report(results: dict[str, dict[str, LoadResult]], events: int) -> None:
    print()
    print(f"{'scenario':<13} {'target':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  extra")
    for scenario, by_target in results.items():
        for target, result in by_target.items():
            extra = f"{result.requests_per_sec * events:,.0f} SSE events/s" if scenario.startswith("stream") else ""
            print(f"{scenario:<13} {target:<9} {result.requests_per_sec:>9,.0f} {result.p50_ms:>8.2f} "
                  f"{result.p99_ms:>8.2f} {result.errors:>7}  {extra}")
    print()
    print("ratios (same run):")
    for scenario, by_target in results.items():
        direct, shepherd, smg = by_target["direct"], by_target["shepherd"], by_target.get("smg")
        line = f"  {scenario:<13} shepherd/direct throughput {shepherd.requests_per_sec / direct.requests_per_sec:.2f}"
        baseline = by_target.get("baseline")
        if baseline is not None:
            line += (f"   shepherd/baseline throughput {shepherd.requests_per_sec / baseline.requests_per_sec:.2f}"
                     f", p50 {shepherd.p50_ms / baseline.p50_ms:.2f}x")
        if smg is not None:
            line += (f"   smg/direct {smg.requests_per_sec / direct.requests_per_sec:.2f}"
                     f"   shepherd/smg {shepherd.requests_per_sec / smg.requests_per_sec:.2f}")
        print(line)
        if scenario == "chat c=1":
            added = f"  {'':<13} added p50 latency: shepherd {1000 * (shepherd.p50_ms - direct.p50_ms):.0f} us"
            if baseline is not None:
                added += f", baseline {1000 * (baseline.p50_ms - direct.p50_ms):.0f} us"
            if smg is not None:
                added += f", smg {1000 * (smg.p50_ms - direct.p50_ms):.0f} us"
            print(added)


if __name__ == "__main__":
    main()
