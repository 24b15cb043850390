"""What metrics and tracing cost: gateway throughput with each on, as a ratio to both off, same run.

    python -m bench.observability_overhead [--seconds 8] [--rounds 3] [--concurrency 32]

The backend is nginx answering fixed bytes (bench/nginx.py), so the gateway, not the backend, is
what is measured; spans go to the same nginx's OTLP/HTTP sink (`/v1/traces`, accepted and dropped),
so export costs the gateway what it would in production, where the collector runs elsewhere. An
earlier sink was a Python HTTP server in this process: on the 2-core machine it took CPU from the
gateway and closed the connection after every export. Beside req/s: the gateway's CPU seconds per
1,000 requests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.cpu import tree_cpu_seconds
from bench.loadgen import have_wrk, run_load
from bench.nginx import Nginx
from shepherd.testing import Gateway

BODY = json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "hello"}],
                   "max_tokens": 16}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--loadgen", choices=("wrk", "python"), default="wrk" if have_wrk() else "python")
    args = parser.parse_args()

    backend = Nginx()
    trace = ["--enable-trace", "--otlp-traces-endpoint", backend.url + "/v1/traces"]
    variants = {
        "both off (baseline)": ["--disable-metrics"],
        "metrics on": [],
        "tracing on": ["--disable-metrics", *trace],
        "metrics + tracing": trace,
    }
    gateways = {name: Gateway([backend.url], "--log-level", "warn", *flags) for name, flags in variants.items()}
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    try:
        for _ in range(args.rounds):
            for name, gateway in gateways.items():
                before = tree_cpu_seconds(gateway.proc.pid)
                result = run_load(gateway.url + "/v1/chat/completions", BODY, args.concurrency, args.seconds,
                                  use_wrk=args.loadgen == "wrk")
                cpu_per_1k = (tree_cpu_seconds(gateway.proc.pid) - before) / max(result.requests, 1) * 1000
                runs[name].append((result.requests_per_sec, result.p50_ms, cpu_per_1k))
                time.sleep(0.5)
    finally:
        for gateway in gateways.values():
            gateway.stop()
        backend.stop()

    print(f"load generator: {args.loadgen}; concurrency {args.concurrency}; median of {args.rounds} rounds")
    baseline = statistics.median(r for r, _, _ in runs["both off (baseline)"])
    base_cpu = statistics.median(c for _, _, c in runs["both off (baseline)"])
    print(f"{'variant':<22} {'req/s':>9} {'p50 ms':>8} {'CPU s/1k':>9} {'throughput vs both off':>23} "
          f"{'CPU vs both off':>16}")
    for name, values in runs.items():
        rate = statistics.median(r for r, _, _ in values)
        p50 = statistics.median(p for _, p, _ in values)
        cpu = statistics.median(c for _, _, c in values)
        print(f"{name:<22} {rate:>9,.0f} {p50:>8.2f} {cpu:>9.3f} {rate / baseline:>23.2f} {cpu / base_cpu:>16.2f}")


if __name__ == "__main__":
    main()
