"""The engine behind both simulated gRPC services: scripts, cost model, faults, records, aborts.

A servicer turns its proto request into a `SimGenerate`, and turns the `Piece`s this core yields
back into its own proto messages. Timing comes from the same continuous-batching `Engine` as the
HTTP simulator, so both simulators cost the same for the same traffic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from shepherd.sim.engine import Engine, EngineParams, SimRequest
from shepherd.sim.grpc.faults import GrpcFaults, GrpcStats
from shepherd.sim.grpc.script import Outcome, answer_text, decide
from shepherd.sim.text import request_seed
from shepherd.sim.tools import rendered_prompt_answer
from shepherd.tokenizer.tokenizer import Tokenizer

log = logging.getLogger("shepherd.sim.grpc")


class InjectedError(Exception):
    """A fault asks Generate to fail with this gRPC status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class SimGenerate:
    """A Generate request, whichever service it came from."""

    request_id: str
    input_ids: list[int]
    max_new: int | None
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)  # vLLM matches strings itself; SGLang refuses them
    ignore_eos: bool = False
    n: int = 1
    seed: int | None = None
    stream: bool = False
    logprobs: int | None = None  # None: no logprobs; k: k alternatives per token
    require_reasoning: bool = False
    record: dict[str, Any] = field(default_factory=dict)  # what the servicer saw, for /sim/requests


@dataclass
class Piece:
    """New tokens of one choice (a chunk), or its end (`outcome` set)."""

    index: int
    token_ids: list[int]
    completion_tokens: int  # running total for this choice
    prompt_tokens: int
    cached_tokens: int
    reasoning_tokens: int = 0
    outcome: Outcome | None = None
    all_ids: list[int] = field(default_factory=list)  # every id of the choice, on the final piece


def fake_logprob(token_id: int, rank: int = 0) -> float:
    """A deterministic, plausible logprob: the sampled token is the likeliest."""
    return -0.01 - (token_id % 7) * 0.05 - rank * 0.9


def logprobs_message(pb: Any, ids: Sequence[int], top: int) -> Any:
    """`OutputLogProbs` of either service (both protos share its shape) for the sampled `ids`."""
    return pb.OutputLogProbs(
        token_logprobs=[fake_logprob(i) for i in ids], token_ids=ids,
        top_logprobs=[pb.TopLogProbs(values=[fake_logprob(i, rank) for rank in range(top)],
                                     token_ids=[i if rank == 0 else (i + rank) % 151643 for rank in range(top)])
                      for i in ids])


class _Canned:
    """No cost model: every token is ready after a fixed delay."""

    def __init__(self, count: int, delay: float) -> None:
        self.count = count
        self.delay = delay
        self.cached_tokens = 0

    async def stream(self) -> AsyncIterator[int]:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.count:
            yield self.count


class SimCore:
    def __init__(self, model: str, tokenizer: Tokenizer, engine: Engine | None, output_tokens: int,
                 max_model_len: int, gen_ms: float = 0.0, record_requests: int = 100,
                 kv_events: bool = True, embedding_dim: int = 64) -> None:
        self.model = model
        self.kv_events = kv_events and engine is not None
        self.embedding_dim = embedding_dim
        self.tokenizer = tokenizer
        self.engine = engine
        self.output_tokens = output_tokens
        self.max_model_len = max_model_len
        self.gen_ms = gen_ms
        self.faults = GrpcFaults()
        self.stats = GrpcStats()
        self.stats.recent = type(self.stats.recent)(maxlen=max(1, record_requests))
        self.record_requests = record_requests
        self._active: dict[str, list[SimRequest | _Canned]] = {}
        self._think_end = tokenizer.token_to_id("</think>")
        self.started_at = time.time()

    def reset(self) -> None:
        self.faults = GrpcFaults()
        recent = self.stats.recent
        recent.clear()
        self.stats = GrpcStats(recent=recent)
        if self.engine is not None:
            self.engine.flush_cache()

    def abort(self, request_ids: Sequence[str]) -> bool:
        """Drop the named requests (and their n>1 sub-requests); True if any was running."""
        found = False
        for request_id in request_ids:
            self.stats.aborts += 1
            self.stats.aborted_ids.append(request_id)
            for key in [k for k in self._active if k == request_id or k.startswith(request_id + "-")]:
                found = True
                for request in self._active.pop(key):
                    if isinstance(request, SimRequest):
                        request.disconnected = True
        return found

    def embed(self, input_ids: Sequence[int], metadata: dict[str, str]) -> list[float]:
        """A deterministic unit vector for the ids (the same ids, the same vector); raises InjectedError."""
        stats, faults = self.stats, self.faults
        stats.requests_total += 1
        stats.embeds_total += 1
        if self.record_requests:
            stats.recent.append({"rpc": "Embed", "input_ids": list(input_ids), "metadata": metadata})
        if not faults.embed:
            raise InjectedError("UNIMPLEMENTED", f"{self.model} is a generation model; it serves no embeddings")
        if faults.error_code:
            stats.errors_injected += 1
            raise InjectedError(faults.error_code, "injected fault")
        rng = random.Random(request_seed("embed", tuple(input_ids)))
        vector = [rng.gauss(0.0, 1.0) for _ in range(self.embedding_dim)]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def _script(self, generate: SimGenerate, index: int) -> list[int]:
        text = self.faults.response_text
        if text is None:
            text = rendered_prompt_answer(self.tokenizer.decode(generate.input_ids, skip_special_tokens=False))
        if text is None:
            seed = request_seed(self.model, tuple(generate.input_ids), index, generate.seed)
            text = answer_text(seed, self.tokenizer, self.output_tokens)
        eos = self.tokenizer.eos_token_ids
        return self.tokenizer.encode(text) + ([eos[0]] if eos else [])

    def _thinking_length(self, ids: Sequence[int]) -> int:
        """Tokens before `</think>` (0 when the answer has none): what SGLang counts as reasoning."""
        if self._think_end is None or self._think_end not in ids:
            return 0
        return list(ids).index(self._think_end)

    async def generate(self, generate: SimGenerate) -> AsyncIterator[Piece]:
        """Pieces of all n choices, interleaved as the engine produces them; raises InjectedError."""
        stats, faults = self.stats, self.faults
        stats.requests_total += 1
        stats.in_flight += 1
        if self.record_requests:
            stats.recent.append(generate.record)
        try:
            if faults.latency_ms:
                await asyncio.sleep(faults.latency_ms / 1000)
            if faults.hang:
                await asyncio.sleep(10**9)
            if faults.error_code and faults.error_after_chunks < 0:
                stats.errors_injected += 1
                raise InjectedError(faults.error_code, "injected fault")
            prompt = len(generate.input_ids)
            limit = self.max_model_len - prompt
            max_new = limit if generate.max_new is None else min(generate.max_new, limit)
            outcomes = [decide(self.tokenizer, self._script(generate, i), max_new=max_new,
                               stop_token_ids=generate.stop_token_ids, eos_ids=self.tokenizer.eos_token_ids,
                               ignore_eos=generate.ignore_eos, stop_strings=generate.stop_strings)
                        for i in range(generate.n)]
            generate.record["output_ids"] = [o.output_ids for o in outcomes]
            async for piece in self._run(generate, outcomes):
                yield piece
            stats.completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            stats.cancelled += 1
            raise
        finally:
            stats.in_flight -= 1

    async def _run(self, generate: SimGenerate, outcomes: list[Outcome]) -> AsyncIterator[Piece]:
        prompt = len(generate.input_ids)
        deliveries: list[SimRequest | _Canned] = []
        for outcome in outcomes:
            if self.engine is not None:
                deliveries.append(self.engine.submit(generate.input_ids, len(outcome.output_ids), outcome.output_ids))
            else:
                deliveries.append(_Canned(len(outcome.output_ids), self.gen_ms / 1000))
        key = generate.request_id if generate.n == 1 else None
        if key is not None:
            self._active[key] = deliveries
        else:
            for i, delivery in enumerate(deliveries):
                self._active[f"{generate.request_id}-{i}"] = [delivery]
        queue: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()

        async def pump(index: int, delivery: SimRequest | _Canned) -> None:
            async for count in delivery.stream():
                queue.put_nowait((index, count))

        tasks = [asyncio.ensure_future(pump(i, d)) for i, d in enumerate(deliveries)]
        waiter = asyncio.ensure_future(asyncio.gather(*tasks))
        waiter.add_done_callback(lambda _: queue.put_nowait(None))
        thinking = [self._thinking_length(o.output_ids) if generate.require_reasoning else 0 for o in outcomes]
        per_chunk = self.faults.tokens_per_chunk
        delay = self.faults.chunk_delay_ms / 1000
        produced = [0] * len(outcomes)
        sent = [0] * len(outcomes)
        done = [False] * len(outcomes)
        chunks = 0
        try:
            while (item := await queue.get()) is not None:
                index, count = item
                produced[index] += count
                outcome = outcomes[index]
                total = len(outcome.output_ids)
                delivery = deliveries[index]
                while sent[index] < produced[index] and (produced[index] - sent[index] >= per_chunk
                                                         or produced[index] >= total):
                    end = min(produced[index], sent[index] + per_chunk)
                    if delay:
                        await asyncio.sleep(delay)
                    if 0 <= self.faults.error_after_chunks <= chunks and self.faults.error_code:
                        self.stats.errors_injected += 1
                        raise InjectedError(self.faults.error_code, "injected fault mid-stream")
                    chunks += 1
                    ids = outcome.output_ids[sent[index]:end]
                    sent[index] = end
                    yield Piece(index, ids, end, prompt, delivery.cached_tokens, min(end, thinking[index]))
                if produced[index] >= total and not done[index]:
                    done[index] = True
                    yield self._final(generate, index, outcome, delivery, thinking[index])
            for index, outcome in enumerate(outcomes):
                if not done[index]:  # aborted, or an empty answer (max_new_tokens=0)
                    done[index] = True
                    final = outcome if not outcome.output_ids else Outcome(outcome.output_ids[:sent[index]], "abort")
                    yield self._final(generate, index, final, deliveries[index], thinking[index])
        finally:
            for index, delivery in enumerate(deliveries):
                if not done[index] and isinstance(delivery, SimRequest):
                    delivery.disconnected = True  # the engine drops it at its next step
            for key in [generate.request_id] + [f"{generate.request_id}-{i}" for i in range(generate.n)]:
                self._active.pop(key, None)

    @staticmethod
    def _final(generate: SimGenerate, index: int, outcome: Outcome, delivery: SimRequest | _Canned,
               thinking: int) -> Piece:
        ids = outcome.output_ids
        return Piece(index, [], len(ids), len(generate.input_ids), delivery.cached_tokens, min(len(ids), thinking),
                     outcome=outcome, all_ids=ids)


def load_row(core: SimCore, params: EngineParams) -> dict[str, Any]:
    engine = core.engine
    running = engine.num_running if engine else core.stats.in_flight
    waiting = engine.num_waiting if engine else 0
    usage = engine.token_usage if engine else 0.0
    return {"dp_rank": 0, "num_running_reqs": running, "num_waiting_reqs": waiting,
            "num_total_reqs": running + waiting, "num_used_tokens": engine.used_tokens if engine else 0,
            "max_total_num_tokens": params.kv_capacity_tokens, "token_usage": usage,
            "gen_throughput": engine.gen_throughput if engine else 0.0,
            "cache_hit_rate": engine.cache_hit_rate if engine else 0.0, "utilization": usage,
            "max_running_requests": params.max_running,
            "num_waiting_uncached_tokens": engine.waiting_uncached_tokens if engine else 0}
