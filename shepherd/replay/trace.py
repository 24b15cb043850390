"""A trace: the requests a replay sends, read from `--record-traffic` files or made by a workload.

Prompts are sequences of block ids (the recorder's salted hash chain, or a generator's ids); two
prompts share a prefix exactly as far as they share leading blocks. `tokens_for` turns a prompt into
engine token ids: every block becomes the same `tokens_per_block` ids wherever it appears, so
shared blocks give shared token prefixes, and the rest of the prompt's length is filled with ids
unique to the request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from shepherd.recording.blocks import BLOCK_BYTES, split_chain

_TRACE_FILE = re.compile(r"^traffic-\d+\.jsonl$")
DEFAULT_OUTPUT_TOKENS = 128  # when neither the usage nor max_tokens says
_MIX = 0x9E3779B97F4A7C15


class TraceError(ValueError):
    """The trace cannot be read; the message says where."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival: float  # seconds from the trace's first request
    blocks: tuple[int, ...]
    prompt_tokens: int
    output_tokens: int
    model: str | None = None
    routing_key: str | None = None


@dataclass
class Trace:
    requests: list[TraceRequest]
    tokens_per_block: int = BLOCK_BYTES // 4
    source: str = ""
    skipped: int = 0  # lines that were not usable records
    notes: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.requests[-1].arrival if self.requests else 0.0

    @property
    def keyed_share(self) -> float:
        if not self.requests:
            return 0.0
        return sum(1 for r in self.requests if r.routing_key is not None) / len(self.requests)

    def tokens_for(self, index: int) -> tuple[int, ...]:
        request = self.requests[index]
        per_block = self.tokens_per_block
        ids: list[int] = []
        for block in request.blocks:
            ids.extend((block ^ (j * _MIX)) & 0x7FFFFFFF for j in range(per_block))
            if len(ids) >= request.prompt_tokens:
                break
        del ids[request.prompt_tokens:]
        filler = (index + 1) * _MIX
        ids.extend((filler ^ (j * 0x85EBCA77)) & 0x7FFFFFFF for j in range(request.prompt_tokens - len(ids)))
        return tuple(ids)

    def for_model(self, model: str) -> Trace:
        """Only the requests for `model`, their arrivals still measured from the trace's start."""
        requests = [r for r in self.requests if r.model == model]
        if not requests:
            known = sorted({r.model or "(none)" for r in self.requests})
            raise TraceError(f"the trace has no requests for model {model!r} (it has: {', '.join(known)})")
        return Trace(requests, self.tokens_per_block, f"{self.source}, model {model}", self.skipped, list(self.notes))

    def scaled(self, time_scale: float) -> Trace:
        """The same requests with arrival gaps multiplied by `time_scale` (0.5: twice the rate)."""
        requests = [TraceRequest(r.arrival * time_scale, r.blocks, r.prompt_tokens, r.output_tokens, r.model,
                                 r.routing_key) for r in self.requests]
        return Trace(requests, self.tokens_per_block, self.source, self.skipped, list(self.notes))


def trace_files(path: str) -> list[str]:
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if _TRACE_FILE.match(n))
        if not names:
            raise TraceError(f"{path} holds no traffic-*.jsonl files")
        return [os.path.join(path, n) for n in names]
    if not os.path.exists(path):
        raise TraceError(f"{path} does not exist")
    return [path]


def load_trace(path: str, max_requests: int | None = None) -> Trace:
    """Read recorded traffic (a file or a --record-traffic directory) in arrival order.

    Requests the gateway refused before any engine saw them (4xx other than 429) are left out; so
    are lines that are not records. Prompt and output lengths come from the worker's usage when it
    reported one, else from the prompt size and max_tokens.
    """
    rows: list[dict[str, object]] = []
    skipped = 0
    for name in trace_files(path):
        with open(name, "rb") as handle:
            for line in handle:
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    skipped += 1  # e.g. a line cut short by a crash
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("t"), (int, float)) \
                        or not isinstance(row.get("blocks"), str):
                    skipped += 1
                    continue
                status = row.get("status")
                if isinstance(status, int) and 400 <= status < 500 and status not in (429, 499):
                    continue
                rows.append(row)
    rows.sort(key=lambda r: r["t"])  # type: ignore[arg-type, return-value]
    if max_requests is not None:
        rows = rows[:max_requests]
    if not rows:
        raise TraceError(f"{path} holds no replayable requests")
    # One token count per block for the whole trace, from the ratio the workers reported.
    known = [(r["prompt_tokens"], r.get("prompt_bytes")) for r in rows
             if isinstance(r.get("prompt_tokens"), int) and isinstance(r.get("prompt_bytes"), int)
             and r["prompt_bytes"]]
    block_bytes = int(rows[0].get("block_bytes") or BLOCK_BYTES)  # type: ignore[call-overload]
    if known:
        ratio = sum(t for t, _ in known) / sum(b for _, b in known)  # type: ignore[misc]
        per_block = max(1, min(256, round(block_bytes * ratio)))
    else:
        per_block = max(1, block_bytes // 4)
    start = float(rows[0]["t"])  # type: ignore[arg-type]
    requests = [_request(row, start, per_block, block_bytes) for row in rows]
    return Trace(requests, per_block, path, skipped)


def _request(row: dict[str, object], start: float, per_block: int, block_bytes: int) -> TraceRequest:
    try:
        blocks = tuple(split_chain(str(row["blocks"])))
    except ValueError:  # not hex: treat the prompt as sharing nothing
        blocks = ()
    prompt = row.get("prompt_tokens")
    if not isinstance(prompt, int) or prompt <= 0:
        size = row.get("prompt_bytes")
        prompt = max(1, round((size if isinstance(size, int) else len(blocks) * block_bytes) * per_block / block_bytes))
    output = row.get("output_tokens")
    if not isinstance(output, int) or output <= 0:
        limit = row.get("max_tokens")
        output = limit if isinstance(limit, int) and limit > 0 else DEFAULT_OUTPUT_TOKENS
    model = row.get("model")
    key = row.get("routing_key")
    return TraceRequest(float(row["t"]) - start, blocks, prompt, output,  # type: ignore[arg-type]
                        model if isinstance(model, str) else None, key if isinstance(key, str) else None)


def from_requests(requests: Iterable[TraceRequest], tokens_per_block: int, source: str) -> Trace:
    ordered = sorted(requests, key=lambda r: r.arrival)
    return Trace(ordered, tokens_per_block, source)
