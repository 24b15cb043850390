"""Replay a trace against a simulated fleet on a simulated clock.

The fleet is N copies of the engine simulator (shepherd/sim/engine.py, the cost model the
mock worker serves) in front of which a real routing policy (shepherd/policies) picks a worker for
every request, seeing what it sees in the gateway: each worker's in-flight count, and the engine's
load report as the load monitor would have polled it. Nothing sleeps: an event queue advances the
clock from one arrival, engine step or load poll to the next, so a run is deterministic for a seed
and takes a fraction of the trace's duration.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shepherd.config import PolicyOptions
from shepherd.policies.base import RoutingRequest
from shepherd.policies.factory import create_policy
from shepherd.replay.trace import Trace
from shepherd.sim.engine import Engine, EngineParams, SimRequest
from shepherd.workers.worker import LoadSnapshot, Worker

_ARRIVAL, _STEP_DONE, _POLL, _MAINTAIN = 0, 1, 2, 3
_ROUTING_KEY_HEADER = "x-smg-routing-key"


@dataclass(frozen=True)
class RunResult:
    requests: int
    hit_rate: float  # cached prompt tokens / prompt tokens, as the engines counted them at admission
    ttft_p50_ms: float
    ttft_p99_ms: float
    mean_ttft_ms: float
    throughput_rps: float  # completed requests per second from the first arrival to the last completion
    output_tps: float
    min_share: float  # the least and most requests any worker got, as a share of all
    max_share: float
    makespan_secs: float


class _SimWorker:
    __slots__ = ("index", "worker", "engine", "stepping", "served")

    def __init__(self, index: int, params: EngineParams) -> None:
        self.index = index
        self.worker = Worker(id=f"sim-{index}", url=f"http://sim-{index}", model_ids=("replay",))
        self.engine = Engine(params)
        self.stepping = False
        self.served = 0


def simulate(
    trace: Trace,
    workers: int,
    policy: str,
    options: PolicyOptions,
    params: EngineParams,
    seed: int,
    load_monitor_interval: float = 10.0,
    tokens: Sequence[tuple[int, ...]] | None = None,
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    """Run the whole trace once. `tokens` may carry trace.tokens_for(i) precomputed for every i."""
    if workers < 1:
        raise ValueError("the fleet needs at least one worker")
    fleet = [_SimWorker(i, params) for i in range(workers)]
    handles = [w.worker for w in fleet]
    chosen = create_policy(policy, options, random.Random(seed))
    events: list[tuple[float, int, int, int, object]] = []
    sequence = 0

    def push(at: float, kind: int, index: int, payload: object = None) -> None:
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (at, sequence, kind, index, payload))

    requests = trace.requests
    for i, request in enumerate(requests):
        push(request.arrival, _ARRIVAL, i)
    push(0.0, _POLL, 0)
    push(options.eviction_interval_secs, _MAINTAIN, 0)

    arrival_of: dict[int, float] = {}  # id(SimRequest) -> arrival time
    ttfts: list[float] = []
    prompt_total = cached_total = output_total = 0
    pending = len(requests)
    polls = 0
    last_done = 0.0
    report_every = max(1, len(requests) // 20)

    def start_step(sim: _SimWorker, now: float) -> None:
        decoded, finished, duration = sim.engine.step()
        sim.stepping = True
        push(now + duration, _STEP_DONE, sim.index, (decoded, finished))

    by_id = {sim.worker.id: sim for sim in fleet}

    while events and pending:
        now, _, kind, index, payload = heapq.heappop(events)
        if kind == _ARRIVAL:
            request = requests[index]
            prompt = tokens[index] if tokens is not None else trace.tokens_for(index)
            headers = {_ROUTING_KEY_HEADER: request.routing_key} if request.routing_key else {}
            routing = RoutingRequest("/v1/chat/completions", None, headers, tokens=prompt)
            worker = chosen.select(handles, routing) or min(handles, key=lambda w: (w.load, w.processed))
            sim = by_id[worker.id]
            worker.load += 1
            worker.processed += 1
            sim.served += 1
            submitted = sim.engine.enqueue(prompt, request.output_tokens, range(request.output_tokens))
            arrival_of[id(submitted)] = now
            if not sim.stepping:
                start_step(sim, now)
            if progress is not None and index % report_every == 0:
                progress(index / len(requests))
        elif kind == _STEP_DONE:
            sim = fleet[index]
            sim.stepping = False
            decoded, finished = typing.cast(tuple[list[SimRequest], list[SimRequest]], payload)
            for request_ in decoded:
                if request_.first_token_at is None:
                    request_.first_token_at = now
                    ttfts.append(now - arrival_of[id(request_)])
            for request_ in finished:
                _finish(request_)
                sim.worker.load -= 1
                prompt_total += request_.prompt_tokens
                cached_total += request_.cached_tokens
                output_total += request_.generated
                if request_.first_token_at is None:  # nothing to generate: its answer is its first token
                    ttfts.append(now - arrival_of[id(request_)])
                del arrival_of[id(request_)]
                pending -= 1
                last_done = now
            if sim.engine.has_work:
                start_step(sim, now)
        elif kind == _POLL:
            polls += 1
            for sim in fleet:
                sim.worker.snapshot = _snapshot(sim.engine, polls, now, sim.worker.load)
            push(now + load_monitor_interval, _POLL, 0)
        else:
            chosen.maintain()
            push(now + options.eviction_interval_secs, _MAINTAIN, 0)

    ttfts.sort()
    served = [sim.served for sim in fleet]
    total = sum(served) or 1
    makespan = max(last_done - (requests[0].arrival if requests else 0.0), 1e-9)
    return RunResult(
        requests=len(requests),
        hit_rate=cached_total / prompt_total if prompt_total else 0.0,
        ttft_p50_ms=_quantile(ttfts, 0.5) * 1000,
        ttft_p99_ms=_quantile(ttfts, 0.99) * 1000,
        mean_ttft_ms=statistics.fmean(ttfts) * 1000 if ttfts else 0.0,
        throughput_rps=len(requests) / makespan,
        output_tps=output_total / makespan,
        min_share=min(served) / total,
        max_share=max(served) / total,
        makespan_secs=makespan,
    )


def _finish(request: SimRequest) -> None:
    request.done = True


def _snapshot(engine: Engine, seq: int, now: float, in_flight: int) -> LoadSnapshot:
    used = engine.used_tokens
    return LoadSnapshot(running=engine.num_running, waiting=engine.num_waiting,
                        waiting_uncached_tokens=engine.waiting_uncached_tokens, used_tokens=used,
                        max_tokens=engine.params.kv_capacity_tokens, token_usage=engine.token_usage,
                        gen_throughput=engine.gen_throughput, cache_hit_rate=engine.cache_hit_rate,
                        seq=seq, polled_at=now, in_flight_at_report=in_flight)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]
