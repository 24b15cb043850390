"""Reasoning parsers by `--reasoning-parser` name, and which one a model name implies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from shepherd.parsers.reasoning.base import ReasoningParser
from shepherd.parsers.tool.registry import PASSTHROUGH, UnknownParserError

THINK = ("<think>", "</think>")


@dataclass(frozen=True)
class ThinkFormat:
    start: str
    end: str
    starts_in_reasoning: bool = False  # the chat template always opens the block in the prompt
    opens_when_enabled: bool = False  # ... only when thinking is switched on (DeepSeek V3.1)


REASONING_FORMATS: MappingProxyType[str, ThinkFormat] = MappingProxyType({
    "deepseek_r1": ThinkFormat(*THINK, starts_in_reasoning=True),
    "deepseek_v31": ThinkFormat(*THINK, opens_when_enabled=True),
    "qwen3": ThinkFormat(*THINK),
    "qwen3_thinking": ThinkFormat(*THINK, starts_in_reasoning=True),
    "glm45": ThinkFormat(*THINK),
    "kimi": ThinkFormat("◁think▷", "◁/think▷"),
    "kimi_thinking": ThinkFormat(*THINK, starts_in_reasoning=True),
    "step3": ThinkFormat(*THINK, starts_in_reasoning=True),
    "minimax": ThinkFormat(*THINK, starts_in_reasoning=True),
    "minimax_m2": ThinkFormat(*THINK, starts_in_reasoning=True),  # SMG's name for the same MiniMax-M2 format
    "base": ThinkFormat(*THINK),  # SMG's generic <think>...</think> parser
    "cohere_cmd": ThinkFormat("<|START_THINKING|>", "<|END_THINKING|>"),
    "nano_v3": ThinkFormat(*THINK),
})

REASONING_PARSER_NAMES: tuple[str, ...] = (*REASONING_FORMATS, PASSTHROUGH)

# Every substring must occur in the lower-cased model name; the first matching row wins.
_MODEL_PATTERNS: tuple[tuple[tuple[str, ...], str | None], ...] = (
    (("deepseek-r1",), "deepseek_r1"),
    (("deepseek-v3.1",), "deepseek_v31"),
    (("deepseek-v3.2",), "deepseek_v31"),
    (("qwen3-coder",), None),  # no thinking mode
    (("qwen3", "thinking"), "qwen3_thinking"),
    (("qwq",), "qwen3_thinking"),
    (("qwen3",), "qwen3"),
    (("glm-4.5",), "glm45"), (("glm-4.6",), "glm45"), (("glm-4.7",), "glm45"), (("glm-5",), "glm45"),
    (("glm-z1",), "glm45"),
    (("kimi-k2", "thinking"), "kimi_thinking"),
    (("kimi", "thinking"), "kimi"),
    (("step3",), "step3"), (("step-3",), "step3"),
    (("minimax-m2",), "minimax"), (("minimax-m1",), "minimax"),
    (("command-a-reasoning",), "cohere_cmd"),
    (("nemotron-nano",), "nano_v3"), (("nemotron-3",), "nano_v3"),
)

_THINKING_KEYS = ("enable_thinking", "thinking")


def detect_reasoning_parser(model: str | None) -> str | None:
    if not model:
        return None
    lowered = model.lower()
    for parts, parser in _MODEL_PATTERNS:
        if all(part in lowered for part in parts):
            return parser
    return None


def resolve_reasoning_parser(name: str | None, model: str | None = None) -> str | None:
    if name:
        if name != PASSTHROUGH and name not in REASONING_FORMATS:
            raise UnknownParserError(
                f"unknown reasoning parser {name!r}; known: {', '.join(sorted(REASONING_PARSER_NAMES))}")
        return None if name == PASSTHROUGH else name
    return detect_reasoning_parser(model)


def thinking_switch(chat_template_kwargs: Mapping[str, Any] | None) -> bool | None:
    """The request's explicit thinking switch (`enable_thinking` or `thinking`), or None if unset."""
    if not chat_template_kwargs:
        return None
    for key in _THINKING_KEYS:
        value = chat_template_kwargs.get(key)
        if isinstance(value, bool):
            return value
    return None


def create_reasoning_parser(name: str | None, *, model: str | None = None,
                            chat_template_kwargs: Mapping[str, Any] | None = None,
                            starts_in_reasoning: bool | None = None) -> ReasoningParser | None:
    """A fresh parser for one output, or None when the output has no reasoning to separate.

    None also when the request switched thinking off (`enable_thinking: false`): the template then
    closes the block in the prompt and everything the model writes is the answer.
    `starts_in_reasoning` overrides the family default, for a caller that knows the rendered
    prompt ends inside the block.
    """
    resolved = resolve_reasoning_parser(name, model)
    if resolved is None:
        return None
    switch = thinking_switch(chat_template_kwargs)
    if switch is False:
        return None
    fmt = REASONING_FORMATS[resolved]
    if starts_in_reasoning is None:
        starts_in_reasoning = fmt.starts_in_reasoning or (fmt.opens_when_enabled and switch is True)
    return ReasoningParser(fmt.start, fmt.end, in_reasoning=starts_in_reasoning)
