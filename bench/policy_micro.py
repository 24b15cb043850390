"""How long one routing decision takes, per policy, with 16 and 256 workers.

    python -m bench.policy_micro [--decisions 20000] [--prompts 100000] [--clock cpu|wall]

cache_aware's tree is first filled with `--prompts` chat prompts (shared system prompts with distinct
user turns, as a busy deployment would hold), then every policy routes the same stream of new
requests, each call timed on its own. Workers carry in-flight counts and load reports so the
load-aware policies do their full work. The baseline is round_robin, the cheapest decision there is.

`--clock cpu` (the default) times each decision in the thread's CPU time, so a decision that
another process preempted on a shared machine is not counted as slow; `--clock wall` uses
`perf_counter_ns` (the same on an idle machine, plus preemption on a busy one).
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

from shepherd.config import PolicyOptions
from shepherd.policies.base import RoutingRequest
from shepherd.policies.cache_aware import CacheAwarePolicy
from shepherd.policies.factory import POLICY_NAMES, create_policy
from shepherd.workers.worker import LoadSnapshot, Worker

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega model engine cache prefix route gateway worker token batch").split()


def make_workers(count: int, rng: random.Random) -> list[Worker]:
    workers = []
    for i in range(count):
        worker = Worker(id=f"w{i}", url=f"http://10.0.{i // 250}.{i % 250}:8000", model_ids=("m",))
        worker.load = rng.randrange(0, 32)
        worker.snapshot = LoadSnapshot(waiting=rng.randrange(8), waiting_uncached_tokens=rng.randrange(20000),
                                       gen_throughput=rng.uniform(500, 3000), token_usage=rng.random(), seq=1)
        workers.append(worker)
    return workers


def make_prompts(count: int, rng: random.Random) -> list[str]:
    systems = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(50)]
    return [f"{rng.choice(systems)} user {i}: " + " ".join(rng.choice(WORDS) for _ in range(40)) for i in range(count)]


def request_for(text: str, index: int) -> RoutingRequest:
    headers = {"x-smg-routing-key": f"session-{index % 5000}"}
    return RoutingRequest("/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}, headers)


def time_policy(name: str, workers: list[Worker], requests: list[RoutingRequest], warm: list[str],
                clock_name: str = "cpu") -> list[int]:
    policy = create_policy(name, PolicyOptions())
    if isinstance(policy, CacheAwarePolicy):
        for i, text in enumerate(warm):
            policy.text_tree.insert(text, workers[i % len(workers)].id)
    for request in requests[:200]:  # warm-up: caches, branch predictors, lazily built rings
        policy.select(workers, request)
    samples = []
    gc.collect()
    clock = time.thread_time_ns if clock_name == "cpu" else time.perf_counter_ns
    for request in requests:
        request._text = None  # each decision pays for its own text extraction
        started = clock()
        policy.select(workers, request)
        samples.append(clock() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    rng = random.Random(7)
    warm = make_prompts(args.prompts, rng)
    fresh = make_prompts(args.decisions, random.Random(11))
    requests = [request_for(text, i) for i, text in enumerate(fresh)]
    print(f"{args.decisions} decisions per policy; cache_aware tree pre-filled with {args.prompts:,} prompts "
          f"(mean {statistics.mean(len(p) for p in warm):.0f} chars); clock: {args.clock}")
    print(f"{'policy':<20} {'workers':>7} {'p50 us':>8} {'p99 us':>8} {'mean us':>8} {'vs round_robin p50':>19}")
    for count in (16, 256):
        workers = make_workers(count, random.Random(count))
        baseline = None
        for name in ("round_robin", *[n for n in POLICY_NAMES if n != "round_robin"]):
            samples = sorted(time_policy(name, workers, requests, warm if name == "cache_aware" else [], args.clock))
            p50 = samples[len(samples) // 2] / 1000
            p99 = samples[int(len(samples) * 0.99)] / 1000
            mean = statistics.mean(samples) / 1000
            baseline = baseline or p50
            print(f"{name:<20} {count:>7} {p50:>8.1f} {p99:>8.1f} {mean:>8.1f} {p50 / baseline:>18.1f}x")


if __name__ == "__main__":
    main()
