"""What each history backend costs a client: Conversations API calls through one gateway per backend,
as ratios to the memory backend measured in the same run.

    python -m bench.history_storage [--seconds 5] [--concurrency 8] [--rounds 2]

Each client loops over: add two items to its conversation, list the newest 20, get the conversation.
PostgreSQL and Redis are real servers started on loopback (shepherd.testing.databases); SQLite is a
file in a temp dir. Rounds interleave the backends and the median is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import httpx

from shepherd.testing import Gateway
from shepherd.testing.databases import PostgresServer, RedisServer

ITEMS = {"items": [{"type": "message", "role": "user", "content": "What is the weather in Paris today?"},
                   {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]}]}


async def _client(url: str, seconds: float, latencies: list[float]) -> int:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        conversation = (await client.post("/v1/conversations", json={"metadata": {"bench": "1"}})).json()["id"]
        calls = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for method, path, body in (("POST", f"/v1/conversations/{conversation}/items", ITEMS),
                                       ("GET", f"/v1/conversations/{conversation}/items?limit=20", None),
                                       ("GET", f"/v1/conversations/{conversation}", None)):
                started = time.perf_counter()
                response = await client.request(method, path, json=body)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:200]}")
                calls += 1
        return calls


async def _measure(url: str, seconds: float, concurrency: int) -> tuple[float, float, float]:
    latencies: list[float] = []
    started = time.perf_counter()
    counts = await asyncio.gather(*(_client(url, seconds, latencies) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return sum(counts) / elapsed, latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    postgres, redis = PostgresServer(), RedisServer()
    data_dir = tempfile.mkdtemp(prefix="shepherd-bench-history-")
    backends = {
        "memory": ["--history-backend", "memory"],
        "sqlite": ["--history-backend", "sqlite", "--history-data-dir", data_dir],
        "postgres": ["--history-backend", "postgres", "--postgres-db-url", postgres.url],
        "redis": ["--history-backend", "redis", "--redis-url", redis.url],
    }
    gateways = {name: Gateway((), *flags, "--log-level", "warn") for name, flags in backends.items()}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in backends}
    try:
        for _ in range(args.rounds):
            for name, gateway in gateways.items():
                results[name].append(asyncio.run(_measure(gateway.url, args.seconds, args.concurrency)))
    finally:
        for gateway in gateways.values():
            gateway.stop()
        postgres.stop()
        redis.stop()
    base = statistics.median(r[0] for r in results["memory"])
    print(f"Conversations API, {args.concurrency} clients, {args.seconds:g}s x {args.rounds} rounds (median)")
    print(f"{'backend':<10}{'calls/s':>10}{'vs memory':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for name, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        p50 = statistics.median(r[1] for r in rows)
        p99 = statistics.median(r[2] for r in rows)
        print(f"{name:<10}{rate:>10.0f}{rate / base:>10.2f}x{p50:>9.2f}{p99:>9.2f}")


if __name__ == "__main__":
    main()
