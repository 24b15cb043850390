"""The two-level tokenization cache. It wraps encode only; decoding is never cached.

L0 is an exact-match LRU keyed by (text, add_special_tokens), bounded by entry count and by memory
(texts, ids and a per-entry overhead, as SMG's --tokenizer-cache-l0-max-memory).

L1 reuses prefixes. A boundary is the offset just after a special token (`<|im_end|>` and friends);
because such tokens are atomic (matched before normalization, no right-strip), encoding a text equals
encoding its prefix up to a boundary and the rest separately, then concatenating. L1 stores the
cumulative ids at each boundary under a blake2b digest of the prefix, bounded by memory, LRU. A chat
that shares a long system prompt with earlier traffic then only encodes its new messages.

The result is always exactly what the uncached tokenizer returns: L1 turns itself off for a
tokenizer whose pre-tokenizer could treat a segment's start specially, and for one that adds
special tokens at the end of a sequence.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from shepherd.tokenizer.tokenizer import Tokenizer

log = logging.getLogger("shepherd.tokenizer")

_L1_ENTRY_OVERHEAD = 160  # bytes: digest key, OrderedDict slot and array header, per entry
_L0_ENTRY_OVERHEAD = 160  # bytes: OrderedDict slot and links, array header, per entry (the text is counted apart)


@dataclass(frozen=True)
class CacheConfig:
    enable_l0: bool = False
    l0_max_entries: int = 10_000
    enable_l1: bool = False
    l1_max_memory: int = 50 * 1024 * 1024
    l0_max_memory: int = 256 * 1024 * 1024

    @property
    def enabled(self) -> bool:
        return self.enable_l0 or self.enable_l1


class CacheStats:
    """Lookups per layer (an L0 hit skips L1; L1 counts a text without boundaries as a miss, as SMG),
    and the UTF-8 input bytes hits served: whole texts for L0, matched prefixes for L1."""

    __slots__ = ("l0_hits", "l0_misses", "l1_hits", "l1_misses", "l1_tokens_reused", "l0_reused_bytes",
                 "l1_reused_bytes")

    def __init__(self) -> None:
        self.l0_hits = self.l0_misses = self.l1_hits = self.l1_misses = self.l1_tokens_reused = 0
        self.l0_reused_bytes = self.l1_reused_bytes = 0

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


# What a scrape reads (summed over every tokenizer): the counters only grow, gauges are the present.
COUNTER_TOTALS = ("l0_hits", "l0_misses", "l1_hits", "l1_misses", "l0_evictions", "l1_evictions",
                  "l0_reused_bytes", "l1_reused_bytes")
GAUGE_TOTALS = ("l0_entries", "l1_entries", "l0_memory_bytes", "l1_memory_bytes")


class L0Cache:
    """Exact match. Two LRU maps (one per add_special_tokens value) share one entry and memory budget."""

    def __init__(self, max_entries: int, max_memory: int = 256 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_memory = max_memory
        self.memory = 0
        self.evictions = 0  # entries dropped to make room
        self._maps: tuple[OrderedDict[str, array[int]], OrderedDict[str, array[int]]] = (OrderedDict(), OrderedDict())
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._maps[0]) + len(self._maps[1])

    def get(self, text: str, add_special_tokens: bool) -> list[int] | None:
        entries = self._maps[add_special_tokens]
        with self._lock:
            ids = entries.get(text)
            if ids is None:
                return None
            entries.move_to_end(text)
        return ids.tolist()

    def put(self, text: str, add_special_tokens: bool, ids: list[int]) -> None:
        stored = array("I", ids)  # 4 bytes a token instead of a list of int objects
        size = _l0_size(text, stored)
        if size > self.max_memory:
            return  # larger than the whole cache: kept nowhere
        with self._lock:
            entries = self._maps[add_special_tokens]
            old = entries.pop(text, None)
            if old is not None:
                self.memory -= _l0_size(text, old)
            entries[text] = stored
            self.memory += size
            while len(self) > self.max_entries or self.memory > self.max_memory:
                larger = max(self._maps, key=len)
                evicted_text, evicted = larger.popitem(last=False)
                self.memory -= _l0_size(evicted_text, evicted)
                self.evictions += 1


def _l0_size(text: str, ids: array[int]) -> int:
    return sys.getsizeof(text) + ids.itemsize * len(ids) + _L0_ENTRY_OVERHEAD


class L1Cache:
    """Cumulative ids at special-token boundaries, keyed by a digest of the prefix; bounded by bytes."""

    def __init__(self, max_memory: int, boundary_tokens: list[str]) -> None:
        self.max_memory = max_memory
        self.memory = 0
        self.evictions = 0  # entries dropped to make room
        ordered = sorted(set(boundary_tokens), key=len, reverse=True)  # leftmost-longest, like the tokenizer
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._entries: OrderedDict[bytes, array[int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def boundaries(self, text: str) -> list[int]:
        if self.pattern is None:
            return []
        end = len(text)
        return [m.end() for m in self.pattern.finditer(text) if m.end() < end]

    @staticmethod
    def keys(text: str, add_special_tokens: bool, boundaries: list[int]) -> list[bytes]:
        hasher = hashlib.blake2b(b"\x01" if add_special_tokens else b"\x00", digest_size=16)
        keys: list[bytes] = []
        start = 0
        for boundary in boundaries:
            hasher.update(text[start:boundary].encode())
            keys.append(hasher.copy().digest())
            start = boundary
        return keys

    def get(self, key: bytes) -> array[int] | None:
        with self._lock:
            ids = self._entries.get(key)
            if ids is not None:
                self._entries.move_to_end(key)
            return ids

    def put(self, key: bytes, ids: array[int]) -> None:
        size = ids.itemsize * len(ids) + _L1_ENTRY_OVERHEAD
        if size > self.max_memory:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.memory -= old.itemsize * len(old) + _L1_ENTRY_OVERHEAD
            while self._entries and self.memory + size > self.max_memory:
                _, evicted = self._entries.popitem(last=False)
                self.memory -= evicted.itemsize * len(evicted) + _L1_ENTRY_OVERHEAD
                self.evictions += 1
            self._entries[key] = ids
            self.memory += size


def _l1_safe_tokens(tokenizer: Tokenizer) -> list[str]:
    """Special tokens that split a text into independently encodable halves."""
    return [t.content for t in tokenizer.special_added.values() if not t.normalized and not t.rstrip and t.content]


def _pre_tokenizer_is_positional(tokenizer: Tokenizer) -> bool:
    """A Metaspace that prepends only at the start of the input treats a cut differently."""
    pre = tokenizer.backend.pre_tokenizer
    state = pre.__getstate__() if pre is not None else b""
    return b'"Metaspace"' in state and b'"first"' in state


class CachedEncoder:
    """Encode through L0 and/or L1; the same answers as `tokenizer.encode`, faster on repeats."""

    def __init__(self, tokenizer: Tokenizer, config: CacheConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.stats = CacheStats()
        self.l0 = L0Cache(config.l0_max_entries, config.l0_max_memory) if config.enable_l0 else None
        self.l1: L1Cache | None = None
        self._l1_flags = (False, False)  # whether L1 may serve add_special_tokens=False / True
        if config.enable_l1:
            self._setup_l1()

    def _setup_l1(self) -> None:
        tokens = _l1_safe_tokens(self.tokenizer)
        if not tokens or _pre_tokenizer_is_positional(self.tokenizer):
            log.warning("tokenizer %s: L1 cache disabled (no safe special-token boundaries)", self.tokenizer.source)
            return
        self.l1 = L1Cache(self.config.l1_max_memory, tokens)
        # With add_special_tokens=True only a prefix-only post-processor (a BOS) is safe to cut after.
        plain = self.tokenizer.encode("a", False)
        special = self.tokenizer.encode("a", True)
        prefix_only = special[len(special) - len(plain):] == plain
        flags = (self._self_test(tokens, False), prefix_only and self._self_test(tokens, True))
        self._l1_flags = flags
        if not flags[0]:
            log.warning("tokenizer %s: L1 cache disabled (segmented encoding differs)", self.tokenizer.source)
            self.l1 = None

    def _self_test(self, tokens: list[str], add_special_tokens: bool) -> bool:
        assert self.l1 is not None
        for token in tokens[:16]:
            probes = (f"Hello{token} world", f"{token}\n x {token}y  ", f"a {token}  b\n\n{token}", f"{token}{token}é")
            for text in probes:
                expected = self.tokenizer.encode(text, add_special_tokens)
                if self._segmented(text, add_special_tokens, self.l1.boundaries(text)) != expected:
                    return False
        return True

    def _segmented(self, text: str, add_special_tokens: bool, boundaries: list[int]) -> list[int]:
        ids: list[int] = []
        start = 0
        for end in [*boundaries, len(text)]:
            ids += self.tokenizer.encode(text[start:end], add_special_tokens and start == 0)
            start = end
        return ids

    # -- the encode paths ---------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        cached = self._l0_lookup(text, add_special_tokens)
        if cached is not None:
            return cached
        plan = self._plan(text, add_special_tokens)
        if plan is None:
            ids = self.tokenizer.encode(text, add_special_tokens)
        else:
            pieces = [self.tokenizer.encode(text[s:e], flag) for s, e, flag in plan.segments]
            ids = self._commit(plan, pieces)
        if self.l0 is not None:
            self.l0.put(text, add_special_tokens, ids)
        return ids

    async def encode_async(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Like encode; long segments are encoded off the event loop."""
        cached = self._l0_lookup(text, add_special_tokens)
        if cached is not None:
            return cached
        plan = self._plan(text, add_special_tokens)
        encode = self.tokenizer.encode_async
        if plan is None:
            ids = await encode(text, add_special_tokens)
        else:
            pieces = [await encode(text[s:e], flag) for s, e, flag in plan.segments]
            ids = self._commit(plan, pieces)
        if self.l0 is not None:
            self.l0.put(text, add_special_tokens, ids)
        return ids

    def _l0_lookup(self, text: str, add_special_tokens: bool) -> list[int] | None:
        if self.l0 is None:
            return None
        ids = self.l0.get(text, add_special_tokens)
        if ids is None:
            self.stats.l0_misses += 1
        else:
            self.stats.l0_hits += 1
            self.stats.l0_reused_bytes += len(text.encode())
        return ids

    def _plan(self, text: str, add_special_tokens: bool) -> _Plan | None:
        """What is cached, and which segments still need encoding; None: encode the text whole."""
        l1 = self.l1
        if l1 is None or not self._l1_flags[add_special_tokens]:
            return None
        boundaries = l1.boundaries(text)
        if not boundaries:
            self.stats.l1_misses += 1  # nothing L1 could reuse (SMG counts it a miss too)
            return None
        keys = l1.keys(text, add_special_tokens, boundaries)
        for i in range(len(keys) - 1, -1, -1):
            prefix = l1.get(keys[i])
            if prefix is not None:
                self.stats.l1_hits += 1
                self.stats.l1_tokens_reused += len(prefix)
                start = boundaries[i]
                self.stats.l1_reused_bytes += len(text[:start].encode())
                rest = boundaries[i + 1:]
                segments = [(s, e, False) for s, e in zip([start, *rest], [*rest, len(text)], strict=True)]
                return _Plan(prefix, segments, keys[i + 1:])
        self.stats.l1_misses += 1
        starts = [0, *boundaries]
        segments = [(s, e, add_special_tokens and s == 0) for s, e in zip(starts, [*boundaries, len(text)],
                                                                           strict=True)]
        return _Plan(None, segments, keys)

    def _commit(self, plan: _Plan, pieces: list[list[int]]) -> list[int]:
        """Concatenate the pieces after the cached prefix; remember each new boundary's ids."""
        l1 = self.l1
        assert l1 is not None
        cumulative = array("I", plan.prefix) if plan.prefix is not None else array("I")
        for key, piece in zip(plan.new_keys, pieces, strict=False):  # the last piece ends at no boundary
            cumulative.extend(piece)
            l1.put(key, array("I", cumulative))
        ids = cumulative.tolist()
        ids += pieces[-1]
        return ids

    def totals(self) -> dict[str, int]:
        """This encoder's share of the COUNTER_TOTALS and GAUGE_TOTALS."""
        stats, l0, l1 = self.stats, self.l0, self.l1
        return {"l0_hits": stats.l0_hits, "l0_misses": stats.l0_misses, "l1_hits": stats.l1_hits,
                "l1_misses": stats.l1_misses, "l0_reused_bytes": stats.l0_reused_bytes,
                "l1_reused_bytes": stats.l1_reused_bytes,
                "l0_evictions": l0.evictions if l0 is not None else 0,
                "l1_evictions": l1.evictions if l1 is not None else 0,
                "l0_entries": len(l0) if l0 is not None else 0, "l1_entries": len(l1) if l1 is not None else 0,
                "l0_memory_bytes": l0.memory if l0 is not None else 0,
                "l1_memory_bytes": l1.memory if l1 is not None else 0}

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"l0_enabled": self.l0 is not None, "l1_enabled": self.l1 is not None,
                                **self.stats.to_dict()}
        if self.l0 is not None:
            info.update(l0_entries=len(self.l0), l0_max_entries=self.l0.max_entries, l0_memory_bytes=self.l0.memory,
                        l0_max_memory=self.l0.max_memory, l0_evictions=self.l0.evictions)
        if self.l1 is not None:
            info.update(l1_entries=len(self.l1), l1_memory_bytes=self.l1.memory,
                        l1_max_memory=self.l1.max_memory, l1_evictions=self.l1.evictions)
        return info


class _Plan:
    __slots__ = ("prefix", "segments", "new_keys")

    def __init__(self, prefix: array[int] | None, segments: list[tuple[int, int, bool]], new_keys: list[bytes]) -> None:
        self.prefix = prefix
        self.segments = segments  # (start, end, add_special_tokens) still to encode, in order
        self.new_keys = new_keys  # one per segment that ends at a boundary
