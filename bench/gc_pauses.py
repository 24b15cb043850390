"""Garbage-collection pauses with a large cache_aware tree: the previous layout vs the current one.

    python -m bench.gc_pauses [--nodes 1000000] [--seconds 10] [--rounds 2]

Each variant runs in its own fresh process, which first imports the gateway (so the heap holds
what a running gateway's does), optionally freezes that startup heap (what `shepherd launch` does
by default, see shepherd/gc_freeze.py), then fills a cache_aware tree to `--nodes` nodes (as
traffic would, after startup) and serves a synthetic request loop for `--seconds`: each
"request" leaves short-lived containers and a reference cycle behind, keeps a window of recent
ones alive, and inserts its prompt into the tree. Every collection is timed with `gc.callbacks`,
in the thread's CPU time: on a shared machine, wall time would also count the moments another
process had the core; on an idle one the two are the same.
Reported: pauses per collection (p50, p99, max), full (generation 2) collections and their
longest pause, and the time of one forced full collection (`gc.collect()`), which is what a full
collection costs whenever the interpreter decides to run one.

Variants: `object tree` is the previous layout (one Python object per node, reproduced here),
`flat tree` the current one (shepherd/policies/radix_tree.py); each with and without the freeze;
`flat tree + gateway GC` the freeze plus the gateway's young-generation threshold (gc_freeze.py's
YOUNG_THRESHOLD allocations instead of Python's 700), which is what `shepherd launch` runs with;
`no tree + freeze` the same request loop with no tree at all, i.e. what the loop's own garbage
costs. The baseline for the ratios is the previous layout without the freeze, in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import subprocess
import sys
import time
from collections import deque
from typing import Any

VARIANTS = ("object tree", "object tree + freeze", "flat tree", "flat tree + freeze", "flat tree + gateway GC",
            "no tree + freeze")
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega model engine cache prefix route gateway worker token batch").split()


class _ObjectNode:
    """The previous tree's node: an object with a children dict of nodes (both tracked by the GC)."""

    __slots__ = ("label", "children", "tenants", "parent")

    def __init__(self, label: str, parent: _ObjectNode | None) -> None:
        self.label = label
        self.children: dict[str, _ObjectNode] = {}
        self.tenants: dict[str, int] = {}
        self.parent = parent


class _ObjectTree:
    """The previous layout's insert path (enough to build the same shape of tree)."""

    def __init__(self) -> None:
        self.root = _ObjectNode("", None)
        self.nodes = 1
        self._clock = 0

    def insert(self, key: str, tenant: str) -> None:
        self._clock += 1
        node, pos = self.root, 0
        node.tenants[tenant] = self._clock
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                leaf = _ObjectNode(key[pos:], node)
                leaf.tenants[tenant] = self._clock
                node.children[key[pos]] = leaf
                self.nodes += 1
                return
            label = child.label
            matched = 0
            while matched < len(label) and pos + matched < len(key) and key[pos + matched] == label[matched]:
                matched += 1
            if matched < len(label):
                middle = _ObjectNode(label[:matched], node)
                middle.tenants = dict(child.tenants)
                child.label = label[matched:]
                child.parent = middle
                middle.children[child.label[0]] = child
                node.children[key[pos]] = middle
                self.nodes += 1
                child = middle
            child.tenants[tenant] = self._clock
            node, pos = child, pos + matched


def _prompts(rng: random.Random) -> Any:
    systems = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(64)]
    index = 0
    while True:
        index += 1
        yield f"{rng.choice(systems)} u{index}: " + " ".join(rng.choice(WORDS) for _ in range(6))


class _Request:
    """Stands in for what a request leaves behind: containers, and for one in eight a reference
    cycle (an exception's traceback, a future's callback) that only the collector frees."""

    def __init__(self, body: str, cycle: bool) -> None:
        self.headers = {"content-type": "application/json", "x-request-id": body[-12:]}
        self.body = {"messages": [{"role": "user", "content": body}], "model": "m"}
        self.me = self if cycle else None


def child(variant: str, nodes: int, seconds: float) -> dict[str, Any]:
    import shepherd.app  # noqa: F401  (the gateway's modules: the startup heap of a real process)
    from shepherd.config import PolicyOptions
    from shepherd.gc_freeze import freeze_startup_heap, raise_young_threshold
    from shepherd.policies.cache_aware import CacheAwarePolicy

    if variant.endswith(("+ freeze", "+ gateway GC")):
        freeze_startup_heap()
    if variant.endswith("+ gateway GC"):
        raise_young_threshold()
    rng = random.Random(5)
    prompts = _prompts(rng)
    tenants = [f"w{i}" for i in range(16)]
    if variant.startswith("object"):
        objects = _ObjectTree()
        insert, count = objects.insert, lambda: objects.nodes
    elif variant.startswith("no tree"):
        def insert(key: str, tenant: str) -> None:
            return None

        def count() -> int:
            return nodes
    else:
        policy = CacheAwarePolicy(PolicyOptions())
        insert, count = policy.text_tree.insert, lambda: policy.text_tree.node_count
    i = 0
    while count() < nodes:
        insert(next(prompts), tenants[i % 16])
        i += 1

    pauses: list[tuple[int, float]] = []
    started: list[float] = [0.0]

    def timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
        else:
            pauses.append((info["generation"], time.thread_time() - started[0]))

    gc.callbacks.append(timer)
    window: deque[_Request] = deque(maxlen=256)  # requests in flight keep theirs alive a while
    deadline = time.perf_counter() + seconds
    served = 0
    while time.perf_counter() < deadline:
        for _ in range(100):
            text = next(prompts)
            window.append(_Request(text, served % 8 == 0))
            insert(text, tenants[served % 16])
            served += 1
    gc.callbacks.remove(timer)
    forced = []
    for _ in range(3):
        began = time.thread_time()
        gc.collect()
        forced.append(time.thread_time() - began)
    return {"pauses": pauses, "forced": statistics.median(forced), "nodes": count(), "served": served,
            "tracked": len(gc.get_objects())}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.nodes, args.seconds)))
        return
    variants = [v.strip() for v in args.variants.split(",")]
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:  # interleaved, so drift on a shared machine hits all alike
            output = subprocess.run([sys.executable, "-m", "bench.gc_pauses", "--child", variant,
                                     "--nodes", str(args.nodes), "--seconds", str(args.seconds)],
                                    capture_output=True, text=True, check=True).stdout
            results[variant].append(json.loads(output.strip().splitlines()[-1]))
    print(f"cache tree of {args.nodes:,} nodes; {args.seconds:.0f}s of synthetic requests per run; "
          f"{args.rounds} rounds (median of rounds; min-max in brackets)")
    print(f"{'variant':<24} {'tracked':>10} {'pauses':>7} {'p50 ms':>7} {'p99 ms':>8} {'max ms':>8} "
          f"{'full GCs':>8} {'full max ms':>11} {'forced full ms':>15}")
    summary: dict[str, dict[str, list[float]]] = {}
    for variant, runs in results.items():
        rows: dict[str, list[float]] = {"p99": [], "max": [], "forced": [], "full_max": []}
        for run in runs:
            durations = [d * 1000 for _, d in run["pauses"]]
            full = [d * 1000 for g, d in run["pauses"] if g == 2]
            rows["p99"].append(_percentile(durations, 0.99))
            rows["max"].append(max(durations, default=0.0))
            rows["forced"].append(run["forced"] * 1000)
            rows["full_max"].append(max(full, default=0.0))
            rows.setdefault("p50", []).append(_percentile(durations, 0.5))
            rows.setdefault("count", []).append(len(durations))
            rows.setdefault("full", []).append(len(full))
            rows.setdefault("tracked", []).append(run["tracked"])
        summary[variant] = rows
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"{variant:<24} {med['tracked']:>10,.0f} {med['count']:>7.0f} {med['p50']:>7.2f} {med['p99']:>8.2f} "
              f"{med['max']:>8.1f} {med['full']:>8.0f} {med['full_max']:>11.1f} {med['forced']:>15.1f}")
    base = summary.get(VARIANTS[0])
    if base is None:
        return
    print("\nratios to the previous layout without the freeze (same run):")
    for variant, rows in summary.items():
        if variant == VARIANTS[0]:
            continue
        parts = []
        for key, name in (("p99", "p99 pause"), ("max", "max pause"), ("forced", "forced full collection")):
            ratios = sorted(a / b for a, b in zip(rows[key], base[key], strict=True) if b)
            if ratios:
                parts.append(f"{name} {statistics.median(ratios):.3f} ({ratios[0]:.3f}-{ratios[-1]:.3f})")
        print(f"  {variant:<24} " + ", ".join(parts))


if __name__ == "__main__":
    main()
