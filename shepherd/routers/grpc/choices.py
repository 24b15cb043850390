"""Per-choice decoding state and token accounting over a Generate stream (any of the n choices).

Stream chunks carry only new token ids; their counts are running totals on SGLang and deltas on
vLLM. The gateway's own stop decoder may end a choice before the engine does (a stop string that
spans tokens); its verdict then wins over the engine's finish reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shepherd.tokenizer.stop import StopDecoder


class Choice:
    __slots__ = ("index", "decoder", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
                 "finish_reason", "matched_stop", "done", "saw_chunk")

    def __init__(self, index: int, decoder: StopDecoder) -> None:
        self.index = index
        self.decoder = decoder
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.reasoning_tokens = 0
        self.finish_reason: str | None = None
        self.matched_stop: int | str | None = None
        self.done = False
        self.saw_chunk = False

    def count_chunk(self, chunk: Any, deltas: bool) -> None:
        if deltas:
            self.prompt_tokens += chunk.prompt_tokens
            self.completion_tokens += chunk.completion_tokens
            self.cached_tokens += chunk.cached_tokens
        else:
            self.prompt_tokens = chunk.prompt_tokens
            self.completion_tokens = chunk.completion_tokens
            self.cached_tokens = chunk.cached_tokens
            self.reasoning_tokens = chunk.reasoning_tokens
        self.saw_chunk = True

    def count_complete(self, complete: Any, deltas: bool) -> None:
        if not deltas or not self.saw_chunk:
            self.prompt_tokens = complete.prompt_tokens
            self.completion_tokens = complete.completion_tokens
            self.cached_tokens = complete.cached_tokens
            self.reasoning_tokens = getattr(complete, "reasoning_tokens", 0)

    def stop_locally(self) -> None:
        """The gateway's stop decoder fired: that is the finish, whatever the engine says later."""
        self.finish_reason = "stop"
        self.matched_stop = self.decoder.matched
        self.done = True

    def finish(self, complete: Any) -> None:
        if self.decoder.stopped:
            self.stop_locally()
            return
        self.finish_reason = complete.finish_reason or "stop"
        which = complete.WhichOneof("matched_stop")
        self.matched_stop = getattr(complete, which) if which else None
        self.done = True


def new_choices(n: int, make_decoder: Callable[[], StopDecoder]) -> list[Choice]:
    return [Choice(i, make_decoder()) for i in range(n)]


def token_counts(choices: Sequence[Choice]) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens: the prompt is shared (max over choices), completions add up."""
    return (max((c.prompt_tokens for c in choices), default=0), sum(c.completion_tokens for c in choices),
            max((c.cached_tokens for c in choices), default=0))


def usage(choices: Sequence[Choice]) -> dict[str, Any]:
    """OpenAI's usage object."""
    prompt, completion, cached = token_counts(choices)
    reasoning = sum(c.reasoning_tokens for c in choices)
    body: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion}
    if cached:
        body["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return body
