"""Streamed tokens per second through the gateway: its gRPC pipeline against its HTTP proxy, one run.

    python -m bench.grpc_streaming [--seconds 6] [--rounds 3] [--concurrency 32] [--tokens 128] [--engines fast]

One gateway serves two models: `http-model` on an HTTP simulator (the gateway relays its SSE bytes)
and `grpc-model` on a gRPC simulator (the gateway renders the chat template, tokenizes, detokenizes
every token and builds the SSE chunks itself). Both simulators run the same cost model, so the
difference is the gateway's work per path. Two cost models: the default engine (engine-bound, the
usual case) and a fast engine (1 ms decode steps), where the gateway and simulators are the limit.
Every answer is exactly --tokens tokens (max_tokens with ignore_eos; the usage chunk is checked);
tokens/s is the sum over clients of the tokens each received per second while it was busy.
"events/answer" counts the SSE deltas that carry text: on the gRPC path a token that ends
mid-character sends nothing until the character is whole. Rounds interleave; medians are reported.

Both simulators are Python, on the same machine as the gateway, and the gRPC one pays grpcio's
per-message cost on its side too, so tokens/s measures the whole chain. The gateway's own share is
its CPU time per streamed answer (user + system, from /proc, `bench/cpu.py`), reported beside each
simulator's: that ratio is the fair comparison of the two paths through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time
from dataclasses import dataclass

import orjson

from bench.cpu import tree_cpu_seconds
from shepherd.testing import Gateway, GrpcSim, Sim
from shepherd.transport.lean import LeanTransport

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a short story about a lighthouse keeper."}]
_TEXT = re.compile(rb'"content":"[^"]')  # a delta that carries text (the role chunk's content is "")
_USAGE = re.compile(rb'"completion_tokens":(\d+)')
ENGINES = {  # name -> cost model flags shared by both simulators
    "default engine": [],
    "fast engine": ["--decode-base-ms", "1", "--decode-per-req-ms", "0.01"],
}


@dataclass
class Result:
    tokens_per_sec: float
    answers: int
    p50_ttft_ms: float
    events_per_answer: float
    errors: int
    gateway_cpu_ms: float = 0.0  # CPU per answer, set by the caller
    engine_cpu_ms: float = 0.0


async def _measure(url: str, model: str, concurrency: int, seconds: float, tokens: int) -> Result:
    body = orjson.dumps({"model": model, "messages": MESSAGES, "stream": True, "max_tokens": tokens,
                         "ignore_eos": True, "temperature": 0, "stream_options": {"include_usage": True}})
    pool = LeanTransport(connect_timeout=5, idle_timeout=30)
    headers = {"content-type": "application/json"}
    ttfts: list[float] = []
    events: list[int] = []
    rates: list[float] = []  # each client's tokens per second while it was busy
    errors = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal errors
        began = time.monotonic()
        answers = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            first: float | None = None
            count = 0
            tail = b""
            try:
                response = await pool.request("POST", url, "/v1/chat/completions", headers, body, 120)
                async for chunk in response.iter_chunks():
                    data = tail + chunk
                    count += len(_TEXT.findall(data)) - len(_TEXT.findall(tail))
                    if first is None and _TEXT.search(data):
                        first = time.perf_counter() - started
                    tail = data[-512:]
                response.close()
                usage = _USAGE.findall(tail)
                if response.status != 200 or not usage or int(usage[-1]) != tokens:
                    errors += 1  # a failed stream, or an answer of the wrong length
                    continue
            except Exception:
                errors += 1
                continue
            answers += 1
            ttfts.append(first or 0.0)
            events.append(count)
        # Summing per-client rates keeps the tail (clients finishing at different times) out of the number.
        rates.append(answers * tokens / (time.monotonic() - began))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    await pool.close()
    return Result(sum(rates), len(events), statistics.median(ttfts) * 1000 if ttfts else 0.0,
                  statistics.mean(events) if events else 0.0, errors)


def _measured(gateway: Gateway, engine_pid: int, model: str, args: argparse.Namespace) -> Result:
    """One measurement, with the gateway's and the engine's CPU per answer."""
    gateway_before, engine_before = tree_cpu_seconds(gateway.proc.pid), tree_cpu_seconds(engine_pid)
    result = asyncio.run(_measure(gateway.url, model, args.concurrency, args.seconds, args.tokens))
    answers = max(1, result.answers + result.errors)
    result.gateway_cpu_ms = (tree_cpu_seconds(gateway.proc.pid) - gateway_before) * 1000 / answers
    result.engine_cpu_ms = (tree_cpu_seconds(engine_pid) - engine_before) * 1000 / answers
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--engines", default=",".join(name.split()[0] for name in ENGINES),
                        help="which cost models, comma-separated: default,fast")
    args = parser.parse_args()
    chosen = {name: flags for name, flags in ENGINES.items() if name.split()[0] in args.engines.split(",")}

    print(f"{args.concurrency} concurrent streams of {args.tokens} tokens, {args.rounds} rounds x {args.seconds:g}s "
          "per path (median); one gateway, same cost model on both simulators; CPU ms per streamed answer")
    print(f"\n{'engine':<15} {'path':<5} {'tokens/s':>10} {'answers':>8} {'p50 TTFT ms':>12} {'events/answer':>14} "
          f"{'errors':>7} {'gateway CPU':>12} {'engine CPU':>11}")
    summary: list[str] = []
    for engine, flags in chosen.items():
        http_sim = Sim(1, "--model", "http-model", "--record-requests", "0", *flags)
        grpc_sim = GrpcSim(1, "--model", "grpc-model", "--record-requests", "0", *flags)
        gateway = Gateway([*http_sim.urls, *grpc_sim.targets], "--log-level", "warn",
                          "--tokenizer-cache-enable-l0", "--tokenizer-cache-enable-l1")
        sims = {"http": http_sim, "grpc": grpc_sim}
        runs: dict[str, list[Result]] = {"http": [], "grpc": []}
        try:
            for _ in range(args.rounds):
                for path in runs:
                    runs[path].append(_measured(gateway, sims[path].proc.pid, f"{path}-model", args))
                    time.sleep(0.5)
        finally:
            gateway.stop()
            grpc_sim.stop()
            http_sim.stop()
        medians: dict[str, tuple[float, float]] = {}
        for path, results in runs.items():
            rate = statistics.median(r.tokens_per_sec for r in results)
            cpu = statistics.median(r.gateway_cpu_ms for r in results)
            medians[path] = rate, cpu
            print(f"{engine:<15} {path:<5} {rate:>10,.0f} {sum(r.answers for r in results):>8} "
                  f"{statistics.median(r.p50_ttft_ms for r in results):>12.1f} "
                  f"{statistics.median(r.events_per_answer for r in results):>14.1f} "
                  f"{sum(r.errors for r in results):>7} {cpu:>12.2f} "
                  f"{statistics.median(r.engine_cpu_ms for r in results):>11.2f}")
        summary.append(f"  {engine:<15} grpc/http streamed tokens/s {medians['grpc'][0] / medians['http'][0]:.2f}, "
                       f"gateway CPU per answer {medians['grpc'][1] / medians['http'][1]:.2f}")
    print("\nratios (same run):")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
