"""Prompt blocks as the gateway names them: a chained hash over token ids in blocks of block_size.

The gateway never relies on an engine's own hash function (vLLM's sha256-of-pickle, SGLang's, a
simulator's): every stored-block event carries the block's token ids and its parent's engine hash,
so the index recomputes each block's name with this function and keeps the engine's hash only to
apply later removals. A block's name identifies the whole prefix up to its end, as the engine's
does, because it folds in the parent's name.
"""

from __future__ import annotations

from collections.abc import Sequence

ROOT = 0  # the parent of a prompt's first block


def block_name(parent: int, tokens: Sequence[int]) -> int:
    # Python's hash of a tuple of ints is deterministic across processes (only str/bytes are salted).
    return hash((parent, tuple(tokens)))


def prompt_blocks(tokens: Sequence[int], block_size: int) -> list[int]:
    """Names of every full block of `tokens`; a partial tail is no block (engines do not cache it)."""
    names: list[int] = []
    parent = ROOT
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = block_name(parent, tokens[start:start + block_size])
        names.append(parent)
    return names
