"""Tokenizers by model id. The control plane loads and registers them; the data plane only reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from shepherd.tokenizer.cache import COUNTER_TOTALS, GAUGE_TOTALS, CacheConfig, CachedEncoder
from shepherd.tokenizer.tokenizer import Tokenizer


class TokenizerEntry:
    """A registered tokenizer plus its cache; `encode` goes through the cache when one is on."""

    __slots__ = ("model", "tokenizer", "cache", "origin", "created_at")

    def __init__(self, model: str, tokenizer: Tokenizer, cache: CachedEncoder | None, origin: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.cache = cache
        self.origin = origin  # "path", "worker" (GetTokenizer), "api"
        self.created_at = time.time()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self.cache is not None:
            return self.cache.encode(text, add_special_tokens)
        return self.tokenizer.encode(text, add_special_tokens)

    async def encode_async(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self.cache is not None:
            return await self.cache.encode_async(text, add_special_tokens)
        return await self.tokenizer.encode_async(text, add_special_tokens)

    def info(self) -> dict[str, Any]:
        info = {"model": self.model, "origin": self.origin, "created_at": int(self.created_at),
                **self.tokenizer.info()}
        if self.cache is not None:
            info["cache"] = self.cache.info()
        return info


class TokenizerRegistry:
    def __init__(self, cache_config: CacheConfig | None = None) -> None:
        self.cache_config = cache_config or CacheConfig()
        self._entries: dict[str, TokenizerEntry] = {}
        self._retired = dict.fromkeys(COUNTER_TOTALS, 0)  # counters of caches since dropped: totals never shrink

    def get(self, model: str | None) -> TokenizerEntry | None:
        """The model's tokenizer; with no model named, the only one registered (if exactly one)."""
        if model is not None:
            return self._entries.get(model)
        if len(self._entries) == 1:
            return next(iter(self._entries.values()))
        return None

    def __contains__(self, model: str) -> bool:
        return model in self._entries

    def entries(self) -> Iterable[TokenizerEntry]:
        return tuple(self._entries.values())

    def register(self, model: str, tokenizer: Tokenizer, origin: str) -> TokenizerEntry:
        cache = CachedEncoder(tokenizer, self.cache_config) if self.cache_config.enabled else None
        entry = TokenizerEntry(model, tokenizer, cache, origin)
        self._retire(self._entries.get(model))
        self._entries[model] = entry
        return entry

    def remove(self, model: str) -> TokenizerEntry | None:
        entry = self._entries.pop(model, None)
        self._retire(entry)
        return entry

    def cache_totals(self) -> dict[str, int]:
        """The tokenization caches' activity summed over every tokenizer (the smg_tokenizer_cache_* families)."""
        totals = dict(self._retired) | dict.fromkeys(GAUGE_TOTALS, 0)
        for entry in self._entries.values():
            if entry.cache is not None:
                for name, value in entry.cache.totals().items():
                    totals[name] += value
        return totals

    def _retire(self, entry: TokenizerEntry | None) -> None:
        if entry is not None and entry.cache is not None:
            counts = entry.cache.totals()
            for name in COUNTER_TOTALS:
                self._retired[name] += counts[name]

    async def load(self, model: str, source: str, chat_template_path: str | None = None,
                   origin: str = "path", extra_eos: Iterable[int] = ()) -> TokenizerEntry:
        """Load from local files on a thread (it takes a while) and register the result."""
        tokenizer = await asyncio.to_thread(Tokenizer.from_path, source, chat_template_path, tuple(extra_eos))
        return self.register(model, tokenizer, origin)
