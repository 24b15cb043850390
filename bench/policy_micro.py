"""How long one routing decision takes, per policy, with 16 and 256 workers.

    python -m bench.policy_micro [--decisions 20000] [--prompts 100000] [--clock cpu|wall]
                                 [--policies least_load,cache_aware]

cache_aware's tree is first filled with `--prompts` chat prompts (shared system prompts with distinct
user turns, as a busy deployment would hold), then every policy routes the same stream of new
requests, each call timed on its own. Workers carry in-flight counts and load reports so the
load-aware policies do their full work, and every decision is followed by what the request path
does to the loads: the chosen worker's `load` and `processed` go up (as an Attempt does) and the
request dispatched 64 decisions earlier finishes (`load` down). Those writes are timed on their own
("update us", mean), since an indexed policy pays for its index there.

Baselines, both measured in the same run: round_robin, the cheapest decision there is, and for
least_load and cache_aware the same policy with its fleet index turned off ("(scan)" rows: the
previous code path, which walks every worker on every decision).

Garbage collection stays on, as in the gateway, with the setup's objects frozen (the gateway
freezes its startup heap); each row says how many collections ran while it was timed and in how
many timed decisions one ran, so a p99 made of collections shows as such.

`--clock cpu` (the default) times each decision in the thread's CPU time, so a decision that
another process preempted on a shared machine is not counted as slow; `--clock wall` uses
`perf_counter_ns` (the same on an idle machine, plus preemption on a busy one).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass

from shepherd.config import PolicyOptions
from shepherd.policies.base import RoutingRequest
from shepherd.policies.cache_aware import CacheAwarePolicy
from shepherd.policies.factory import POLICY_NAMES, create_policy
from shepherd.policies.fleet_index import FleetCache
from shepherd.workers.worker import LoadSnapshot, Worker

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega model engine cache prefix route gateway worker token batch").split()


def make_workers(count: int, rng: random.Random) -> tuple[Worker, ...]:
    """A fleet as selection hands it to a policy: one tuple, the same object decision after decision
    (a list would make each decision copy and compare the fleet to find its index)."""
    workers = []
    for i in range(count):
        worker = Worker(id=f"w{i}", url=f"http://10.0.{i // 250}.{i % 250}:8000", model_ids=("m",))
        worker.load = rng.randrange(0, 32)
        worker.snapshot = LoadSnapshot(waiting=rng.randrange(8), waiting_uncached_tokens=rng.randrange(20000),
                                       gen_throughput=rng.uniform(500, 3000), token_usage=rng.random(), seq=1)
        workers.append(worker)
    return tuple(workers)


def make_prompts(count: int, rng: random.Random) -> list[str]:
    systems = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(50)]
    return [f"{rng.choice(systems)} user {i}: " + " ".join(rng.choice(WORDS) for _ in range(40)) for i in range(count)]


def request_for(text: str, index: int) -> RoutingRequest:
    headers = {"x-smg-routing-key": f"session-{index % 5000}"}
    return RoutingRequest("/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}, headers)


@dataclass
class Run:
    decisions: list[int]  # ns per decision
    updates: list[int]  # ns per decision's load writes
    collections: int
    collected_in: int  # timed decisions during which a collection ran


INFLIGHT = 64  # requests the benchmark keeps in flight: each decision finishes the one 64 before


def time_policy(name: str, workers: tuple[Worker, ...], requests: list[RoutingRequest], warm: list[str],
                clock_name: str = "cpu", scan: bool = False) -> Run:
    policy = create_policy(name, PolicyOptions())
    if scan:
        policy._fleets = FleetCache(lambda fleet: None, min_size=sys.maxsize)  # type: ignore[attr-defined, arg-type, return-value]
    if isinstance(policy, CacheAwarePolicy):
        for i, text in enumerate(warm):
            policy.text_tree.insert(text, workers[i % len(workers)].id)
    loads = [(w.load, w.processed) for w in workers]
    inflight: deque[Worker] = deque()
    for request in requests[:200]:  # warm-up: caches, branch predictors, lazily built rings and indexes
        policy.select(workers, request)
    gc.collect()
    gc.freeze()
    collections = [0]

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections[0] += 1

    gc.callbacks.append(count)
    clock = time.thread_time_ns if clock_name == "cpu" else time.perf_counter_ns
    decisions, updates = [], []
    collected_in = 0
    try:
        for request in requests:
            request._text = None  # each decision pays for its own text extraction
            before = collections[0]
            started = clock()
            chosen = policy.select(workers, request)
            decided = clock()
            assert chosen is not None
            chosen.load += 1
            chosen.processed += 1
            inflight.append(chosen)
            if len(inflight) > INFLIGHT:
                inflight.popleft().load -= 1
            updated = clock()
            decisions.append(decided - started)
            updates.append(updated - decided)
            collected_in += collections[0] != before
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
        for worker, (load, processed) in zip(workers, loads, strict=True):  # the next policy starts alike
            worker.load, worker.processed = load, processed
    return Run(decisions, updates, collections[0], collected_in)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--policies", default=",".join(POLICY_NAMES),
                        help="comma-separated policies to time (round_robin is always timed, as the baseline)")
    args = parser.parse_args()
    chosen = [n for n in args.policies.split(",") if n and n != "round_robin"]
    unknown = [n for n in chosen if n not in POLICY_NAMES]
    if unknown:
        parser.error(f"unknown policies: {', '.join(unknown)}")
    rng = random.Random(7)
    warm = make_prompts(args.prompts, rng) if "cache_aware" in chosen else []
    fresh = make_prompts(args.decisions, random.Random(11))
    requests = [request_for(text, i) for i, text in enumerate(fresh)]
    mean_chars = statistics.mean(len(p) for p in warm) if warm else 0
    print(f"{args.decisions} decisions per policy; cache_aware tree pre-filled with {len(warm):,} prompts "
          f"(mean {mean_chars:.0f} chars); clock: {args.clock}; gc: {'on' if gc.isenabled() else 'off'}, "
          f"thresholds {gc.get_threshold()}, setup heap frozen")
    print(f"{'policy':<20} {'workers':>7} {'p50 us':>8} {'p99 us':>8} {'mean us':>8} {'update us':>9} "
          f"{'vs round_robin p50':>19} {'vs scan p99':>11} {'gc runs':>7} {'gc hit':>6}")
    rows = [("round_robin", False)]
    for name in chosen:
        if name in ("least_load", "cache_aware"):
            rows.append((name, True))
        rows.append((name, False))
    for count in (16, 256):
        workers = make_workers(count, random.Random(count))
        baseline = None
        scan_p99: dict[str, float] = {}
        for name, scan in rows:
            run = time_policy(name, workers, requests, warm if name == "cache_aware" else [], args.clock, scan)
            samples = sorted(run.decisions)
            p50 = samples[len(samples) // 2] / 1000
            p99 = samples[int(len(samples) * 0.99)] / 1000
            mean = statistics.mean(samples) / 1000
            update = statistics.mean(run.updates) / 1000
            baseline = baseline or p50
            if scan:
                scan_p99[name] = p99
            versus = f"{p99 / scan_p99[name]:.2f}x" if name in scan_p99 and not scan else ""
            label = f"{name} (scan)" if scan else name
            print(f"{label:<20} {count:>7} {p50:>8.1f} {p99:>8.1f} {mean:>8.1f} {update:>9.2f} "
                  f"{p50 / baseline:>18.1f}x {versus:>11} {run.collections:>7} {run.collected_in:>6}")


if __name__ == "__main__":
    main()
