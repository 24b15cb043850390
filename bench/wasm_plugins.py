"""What a WASM plugin adds to a request: latency through one gateway with no plugin, a no-op plugin
and a header-rewriting plugin, as ratios to no plugin, same run.

    python -m bench.wasm_plugins [--requests 100] [--rounds 10] [--concurrency 1,16]

The backend is the simulator's canned engine (instant answers). The no-op plugin is attached to
both hooks (continue on each); the header rewriter replaces one request header and removes another
on every request. Guests are built from WAT by tests/wasm_guests.py. Each variant has its own
gateway process (same flags, plugins attached over the admin API); short runs of `--requests`
interleave across the variants `--rounds` times, so drift on a shared machine hits all of them
alike, and the medians over rounds are reported.
At concurrency 1 the numbers are per-request latency; at higher concurrency, throughput shows what
the plugin costs the gateway's CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

from shepherd.testing import Gateway, Sim
from tests import wasm_guests as guests

BODY = json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "Say something short"}],
                   "max_tokens": 16}).encode()
HEADERS = {"content-type": "application/json", "x-tenant": "bench", "x-debug": "1", "user-agent": "bench",
           "accept": "application/json"}


async def _load(url: str, requests: int, concurrency: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) for `requests` POSTs with `concurrency` in flight."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        for _ in range(min(20, requests)):  # warm the connections and the plugin pools
            (await client.post(url, content=BODY, headers=HEADERS)).raise_for_status()
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await client.post(url, content=BODY, headers=HEADERS)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return (len(latencies) / elapsed, latencies[len(latencies) // 2] * 1000,
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000)


def _attach(gateway: Gateway, name: str, wasm: bytes, attach: list[str]) -> str:
    import base64

    response = httpx.post(gateway.url + "/wasm", timeout=60, json={
        "name": name, "sha256": guests.sha256(wasm), "attach": attach,
        "wasm_base64": base64.b64encode(wasm).decode()})
    response.raise_for_status()
    return str(response.json()["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="requests per run")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", default="1,16", help="comma-separated concurrency levels")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    variants: dict[str, tuple[bytes, list[str]] | None] = {
        "no plugin (baseline)": None,
        "no-op plugin": (guests.noop(), ["on-request", "on-response"]),
        "header-rewriting plugin": (guests.header_rewriter(), ["on-request"]),
    }
    sim = Sim(1, "--engine", "canned", "--record-requests", "1")
    gateways: dict[str, Gateway] = {}
    runs: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    try:
        for name, variant in variants.items():
            gateways[name] = Gateway(sim.urls, "--log-level", "warn", "--enable-wasm")
            if variant:
                _attach(gateways[name], name.split()[0], *variant)
        for _ in range(args.rounds):
            for level in levels:
                for name, gateway in gateways.items():
                    result = asyncio.run(_load(gateway.url + "/v1/chat/completions", args.requests, level))
                    runs.setdefault((name, level), []).append(result)
    finally:
        for gateway in gateways.values():
            gateway.stop()
        sim.stop()

    print(f"{args.requests} requests per run, {args.rounds} interleaved rounds, medians; client: httpx, same machine")
    for level in levels:
        base = [statistics.median(v[i] for v in runs[("no plugin (baseline)", level)]) for i in range(3)]
        print(f"\nconcurrency {level}")
        print(f"{'variant':<26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50 vs none':>12} {'added p50 us':>13} "
              f"{'req/s vs none':>14}")
        for name in variants:
            rate, p50, p99 = (statistics.median(v[i] for v in runs[(name, level)]) for i in range(3))
            print(f"{name:<26} {rate:>8,.0f} {p50:>8.2f} {p99:>8.2f} {p50 / base[1]:>12.2f} "
                  f"{(p50 - base[1]) * 1000:>13.0f} {rate / base[0]:>14.2f}")


if __name__ == "__main__":
    main()
