"""Synthetic traces for `shepherd replay --workload NAME`, when no recording exists yet.

Each generator builds prompts out of segments (a system prompt, a document, a turn of a chat), a
segment being a run of blocks with ids of its own, so a segment reused by two requests is a shared
prefix exactly when everything before it is shared too. Arrivals are Poisson at `rate` requests per
second overall; follow-ups of a conversation or an agent loop come a think time after the previous
step. Everything is drawn from one seeded generator: the same seed gives the same trace.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from shepherd.replay.trace import Trace, TraceRequest, from_requests

TOKENS_PER_BLOCK = 16


class _Blocks:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def segment(self, tokens: int) -> tuple[int, ...]:
        return tuple(self._rng.getrandbits(63) for _ in range(max(1, math.ceil(tokens / TOKENS_PER_BLOCK))))


def _request(arrival: float, blocks: tuple[int, ...], output: int) -> TraceRequest:
    return TraceRequest(arrival, blocks, len(blocks) * TOKENS_PER_BLOCK, output)


def _sessions(rng: random.Random, count: int, rate: float, turns: tuple[int, int], think: float,
              first: Callable[[], tuple[int, ...]], step: Callable[[], tuple[int, int]]) -> list[TraceRequest]:
    """Sessions whose every step resends the history plus a new input; `step` gives (input, output) sizes."""
    blocks = _Blocks(rng)
    mean_turns = (turns[0] + turns[1]) / 2
    requests: list[TraceRequest] = []
    start = 0.0
    while len(requests) < count:
        start += rng.expovariate(rate / mean_turns)
        history = first()
        at = start
        for _ in range(rng.randint(*turns)):
            new_input, output = step()
            prompt = history + blocks.segment(new_input)
            requests.append(_request(at, prompt, output))
            history = prompt + blocks.segment(output)  # the answer is part of the next prompt
            at += rng.expovariate(1.0 / think)
    requests.sort(key=lambda r: r.arrival)
    return requests[:count]


def multi_turn(rng: random.Random, count: int, rate: float) -> list[TraceRequest]:
    """Chats of 3-10 turns over a handful of shared system prompts."""
    blocks = _Blocks(rng)
    systems = [blocks.segment(400) for _ in range(8)]
    return _sessions(rng, count, rate, (3, 10), 4.0, lambda: rng.choice(systems),
                     lambda: (rng.randint(40, 160), rng.randint(40, 200)))


def shared_system(rng: random.Random, count: int, rate: float) -> list[TraceRequest]:
    """One-shot questions behind a few long system prompts (a popular one and a long tail)."""
    blocks = _Blocks(rng)
    systems = [blocks.segment(1200) for _ in range(6)]
    weights = [1 / (i + 1) for i in range(len(systems))]
    requests, at = [], 0.0
    for _ in range(count):
        at += rng.expovariate(rate)
        system = rng.choices(systems, weights)[0]
        requests.append(_request(at, system + blocks.segment(rng.randint(20, 120)), rng.randint(30, 150)))
    return requests


def rag(rng: random.Random, count: int, rate: float) -> list[TraceRequest]:
    """Retrieval: a shared instruction, three documents from a popular-first corpus, a question."""
    blocks = _Blocks(rng)
    instruction = blocks.segment(200)
    corpus = [blocks.segment(rng.randint(300, 900)) for _ in range(60)]
    weights = [1 / (i + 1) ** 1.1 for i in range(len(corpus))]
    requests, at = [], 0.0
    for _ in range(count):
        at += rng.expovariate(rate)
        documents: tuple[int, ...] = ()
        for document in rng.choices(corpus, weights, k=3):
            documents += document
        requests.append(_request(at, instruction + documents + blocks.segment(rng.randint(20, 80)),
                                 rng.randint(60, 250)))
    return requests


def agent(rng: random.Random, count: int, rate: float) -> list[TraceRequest]:
    """Agent loops: a long tool-laden prompt per agent kind, then steps that append tool output."""
    blocks = _Blocks(rng)
    kinds = [blocks.segment(2000) for _ in range(4)]
    return _sessions(rng, count, rate, (4, 16), 0.5, lambda: rng.choice(kinds),
                     lambda: (rng.randint(100, 800), rng.randint(20, 80)))


def unique(rng: random.Random, count: int, rate: float) -> list[TraceRequest]:
    """No shared prefixes at all: what cache affinity cannot help."""
    blocks = _Blocks(rng)
    requests, at = [], 0.0
    for _ in range(count):
        at += rng.expovariate(rate)
        requests.append(_request(at, blocks.segment(rng.randint(200, 1500)), rng.randint(40, 200)))
    return requests


WORKLOADS: dict[str, Callable[[random.Random, int, float], list[TraceRequest]]] = {
    "multi-turn": multi_turn,
    "shared-system": shared_system,
    "rag": rag,
    "agent": agent,
    "unique": unique,
}


def synthetic_trace(name: str, requests: int, rate: float, seed: int) -> Trace:
    try:
        generator = WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}") from None
    if requests <= 0 or rate <= 0:
        raise ValueError("the workload needs a positive request count and rate")
    return from_requests(generator(random.Random(seed), requests, rate), TOKENS_PER_BLOCK, f"workload {name}")
