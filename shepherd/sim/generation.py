"""One simulated generation: its words, token accounting and the stream of newly produced tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from shepherd.sim.engine import Engine, SimRequest
from shepherd.sim.structured import split_text
from shepherd.sim.text import output_words, token_texts, word_token_id


class Generation:
    """The answer to one sequence. `stream()` yields how many new tokens became visible."""

    def __init__(
        self,
        prompt_ids: list[int],
        max_new: int,
        seed: int,
        finish_reason: str,
        engine: Engine | None,
        canned_delay_secs: float = 0.0,
        prefilled: bool = False,
    ) -> None:
        self.words = output_words(seed, max_new)
        self.pieces = token_texts(self.words)
        self.token_ids = [word_token_id(w) for w in self.words]
        self.prompt_ids = prompt_ids
        self.prompt_tokens = len(prompt_ids)
        self.finish_reason = finish_reason
        self.reported_cached: int | None = None  # PD decode: the prefill side's hits, reported as cached
        self._canned_delay = canned_delay_secs
        self._request: SimRequest | None = None
        if engine is not None:
            self._request = engine.submit(prompt_ids, max_new, self.token_ids, prefilled=prefilled)

    def replace_text(self, text: str) -> None:
        """Answer with `text` (a structured-output document) over the same tokens; it is complete, so the
        sequence ends with "stop"."""
        self.pieces = split_text(text, len(self.words))
        self.finish_reason = "stop"

    @property
    def completion_tokens(self) -> int:
        return len(self.words)

    @property
    def cached_tokens(self) -> int:
        if self.reported_cached is not None:
            return self.reported_cached
        return self._request.cached_tokens if self._request is not None else 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    async def stream(self) -> AsyncIterator[int]:
        if self._request is None:
            if self._canned_delay:
                await asyncio.sleep(self._canned_delay)
            if self.words:
                yield len(self.words)
            return
        async for count in self._request.stream():
            yield count

    async def wait(self) -> None:
        async for _ in self.stream():
            pass

    def abandon(self) -> None:
        """The client went away: the engine drops the sequence at its next step."""
        if self._request is not None:
            self._request.disconnected = True
