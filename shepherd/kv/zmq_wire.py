"""vLLM's (and SGLang's) KV-event wire format over ZMQ, both ways.

The engine's `ZmqEventPublisher` sends each batch on a PUB socket as three frames
[topic, 8-byte big-endian sequence number (from 0), msgpack payload], and keeps the last batches for
a ROUTER "replay" socket: a client sends the sequence number to start from (8 bytes big-endian) and
gets [sequence, payload] for every buffered batch from there, then the end marker [-1, b""].

The payload is a msgspec `KVEventBatch(ts, events, data_parallel_rank=None)` whose events are tagged
structs `BlockStored(block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium,
lora_name, ...)`, `BlockRemoved(block_hashes, medium, ...)` and `AllBlocksCleared()`. vLLM and SGLang
encode them `array_like` (an array, the tag first: ["BlockStored", [...], ...]); newer vLLM releases
dropped `array_like`, so a batch or an event may also come as a map ({"type": "BlockStored", ...}).
Both are read; trailing fields with defaults may be omitted (`omit_defaults`). A stored event carries
its blocks' tokens as one run, `block_size` tokens per hash.

Only blocks of the base model in GPU memory describe what a request can hit: blocks stored under a
LoRA adapter (their KV differs) or in another medium (a CPU offload tier) are left out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgpack

from shepherd.kv.index import EngineHash
from shepherd.kv.stream import KvBatch, KvEvent, named_blocks

END_SEQ = -1
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024  # one batch; a real step's events are far smaller
MAX_BLOCK_SIZE = 1 << 16
GPU = "GPU"

_STORED = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name")
_REMOVED = ("block_hashes", "medium")


class WireError(ValueError):
    """A frame that is not a KV-event batch."""


def seq_bytes(seq: int) -> bytes:
    return seq.to_bytes(8, "big", signed=True)


def parse_seq(frame: bytes) -> int:
    if len(frame) != 8:
        raise WireError(f"a sequence number is 8 bytes, got {len(frame)}")
    return int.from_bytes(frame, "big", signed=True)


# -- the publisher's side (the simulator) ---------------------------------------------------------

def encode_batch(events: Sequence[tuple[Any, ...]], block_size: int, dp_rank: int = 0,
                 ts: float | None = None) -> bytes:
    """A batch as vLLM's publisher packs it (array_like structs, the tag first); `events` as the
    simulator's log holds them: ("stored", parent, ((hash, tokens), ...)), ("removed", hashes), ("cleared",)."""
    out: list[Any] = []
    for event in events:
        if event[0] == "stored":
            parent, blocks = event[1], event[2]
            tokens = [t for _, block in blocks for t in block]
            out.append(["BlockStored", [h for h, _ in blocks], parent, tokens, block_size, None, GPU, None])
        elif event[0] == "removed":
            out.append(["BlockRemoved", list(event[1]), GPU])
        else:
            out.append(["AllBlocksCleared"])
    return msgpack.packb([time.time() if ts is None else ts, out, dp_rank])


# -- the gateway's side ---------------------------------------------------------------------------

def decode_batch(seq: int, payload: bytes) -> KvBatch:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError(f"a batch of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise WireError(f"not msgpack: {exc}") from None
    if isinstance(raw, dict):
        events = raw.get("events")
    elif isinstance(raw, list) and len(raw) >= 2:
        events = raw[1]
    else:
        raise WireError("a batch is [ts, events, ...] or {ts, events, ...}")
    if not isinstance(events, list):
        raise WireError("a batch's events must be a list")
    decoded: list[KvEvent] = []
    for event in events:
        kind, fields = _fields(event)
        if kind == "BlockStored":
            stored = _stored(fields)
            if stored is not None:
                decoded.append(stored)
        elif kind == "BlockRemoved":
            if fields.get("medium") in (None, GPU):
                decoded.append(("removed", tuple(_hashes(fields.get("block_hashes")))))
        elif kind == "AllBlocksCleared":
            decoded.append(("cleared",))
        # other kinds (newer engines' additions) say nothing about what a request can hit
    return KvBatch(seq, decoded)


def _fields(event: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(event, list) and event and isinstance(event[0], str):
        names = _STORED if event[0] == "BlockStored" else _REMOVED if event[0] == "BlockRemoved" else ()
        return event[0], dict(zip(names, event[1:], strict=False))
    if isinstance(event, dict) and isinstance(event.get("type"), str):
        return event["type"], event
    raise WireError("an event is a tagged array or a map with a `type`")


def _hashes(value: Any) -> list[EngineHash]:
    if not isinstance(value, list) or not all(isinstance(h, (int, bytes)) and not isinstance(h, bool)
                                              for h in value):
        raise WireError("block_hashes must be a list of integers or bytes")
    return value


def _stored(fields: dict[str, Any]) -> KvEvent | None:
    hashes = _hashes(fields.get("block_hashes"))
    parent = fields.get("parent_block_hash")
    tokens = fields.get("token_ids")
    size = fields.get("block_size")
    if parent is not None and (not isinstance(parent, (int, bytes)) or isinstance(parent, bool)):
        raise WireError("parent_block_hash must be an integer, bytes or null")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise WireError("token_ids must be a list of integers")
    if not isinstance(size, int) or not 0 < size <= MAX_BLOCK_SIZE:
        raise WireError("block_size must be a positive integer")
    if len(tokens) != len(hashes) * size:
        raise WireError(f"{len(hashes)} blocks of {size} tokens need {len(hashes) * size} token ids, got {len(tokens)}")
    if fields.get("lora_id") is not None or fields.get("lora_name") is not None or \
            fields.get("medium") not in (None, GPU):
        return None
    return ("stored", parent, named_blocks(hashes, tokens, size), size)
