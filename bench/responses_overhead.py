"""What a stored, chained Responses call adds over a plain chat call, per backend, same run.

    python -m bench.responses_overhead [--requests 300] [--rounds 3]

Per backend (HTTP and gRPC simulators, an Anthropic and an OpenAI provider simulator; all canned,
so the engine costs almost nothing), one gateway with the default SQLite history store. Each Responses call continues
one stored response (`previous_response_id`), so the gateway loads the chain, routes the expanded chat,
builds the Response and stores it; the plain chat call sends the same three messages to
/v1/chat/completions. Calls are sequential (latency, not throughput) and the two kinds alternate, so
drift hits both alike. Printed: median and p90 per kind, and the ratio of Responses to chat.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import httpx

from shepherd.testing import Gateway, GrpcSim, Sim

QUESTION = "What did I just tell you?"


def _timed(http: httpx.Client, path: str, body: dict[str, object]) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    response = http.post(path, json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()


def _measure(url: str, model: str, requests: int, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"chat": [], "responses": []}
    with httpx.Client(base_url=url, timeout=30) as http:
        _, base = _timed(http, "/v1/responses", {"model": model, "input": "My name is Ada.", "max_output_tokens": 16})
        answer = base["output"][0]["content"][0]["text"]  # type: ignore[index]
        messages = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": answer},
                    {"role": "user", "content": QUESTION}]
        chat = {"model": model, "messages": messages, "max_tokens": 16}
        chained = {"model": model, "input": QUESTION, "previous_response_id": base["id"], "max_output_tokens": 16}
        for _ in range(20):  # warm-up: connections, tokenizer caches, SQLite pages
            _timed(http, "/v1/chat/completions", chat)
            _timed(http, "/v1/responses", chained)
        for _ in range(rounds):
            for _ in range(requests):
                times["chat"].append(_timed(http, "/v1/chat/completions", chat)[0])
                times["responses"].append(_timed(http, "/v1/responses", chained)[0])
    return times


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


PROVIDER_KEY = "sk-bench-provider"


def _backend(name: str) -> tuple[Sim | GrpcSim, list[Any], str]:
    """The simulated backend, the gateway's (worker urls, *flags) and the model it serves."""
    if name == "grpc":
        grpc = GrpcSim(1, "--model", "qwen3-bench", "--engine", "canned", "--record-requests", "0")
        return grpc, [grpc.targets], "qwen3-bench"
    if name == "http":
        http = Sim(1, "--model", "bench-model", "--engine", "canned", "--record-requests", "0")
        return http, [http.urls], "bench-model"
    # A provider: Anthropic's is executed by the gateway over Messages, OpenAI's gets its own /v1/responses.
    model = f"{name}-bench"
    provider = Sim(1, "--provider", name, "--api-key", PROVIDER_KEY, "--model", model, "--engine", "canned",
                   "--record-requests", "0")
    base = provider.urls[0] + ("/v1" if name == "anthropic" else "")
    return provider, [[], "--external-provider", f"{base}={name},key_env=BENCH_PROVIDER_KEY"], model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="calls of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(f"{'backend':<10} {'call':<28} {'median ms':>10} {'p90 ms':>8} {'ratio (median)':>15}")
    for backend in ("http", "grpc", "anthropic", "openai"):
        sim, gateway_args, model = _backend(backend)
        with tempfile.TemporaryDirectory() as data_dir:
            gateway = Gateway(*gateway_args, "--log-level", "warn", "--history-data-dir", data_dir,
                              expect_workers=1, env={"BENCH_PROVIDER_KEY": PROVIDER_KEY})
            try:
                times = _measure(gateway.url, model, args.requests, args.rounds)
            finally:
                gateway.stop()
                sim.stop()
        chat_median = statistics.median(times["chat"])
        for kind, label in (("chat", "chat (baseline)"), ("responses", "responses, stored + chained")):
            median = statistics.median(times[kind])
            print(f"{backend:<10} {label:<28} {median * 1000:>10.2f} {_p(times[kind], 0.9) * 1000:>8.2f} "
                  f"{median / chat_median:>14.2f}x")
        added = (statistics.median(times["responses"]) - chat_median) * 1000
        print(f"{backend:<10} {'added by Responses':<28} {added:>10.2f}")


if __name__ == "__main__":
    main()
