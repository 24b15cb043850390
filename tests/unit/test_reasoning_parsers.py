"""Reasoning parsers: the corpus, tags split across deltas, and the thinking switches."""

from __future__ import annotations

import pytest

from shepherd.parsers.reasoning import (
    ReasoningDelta,
    ReasoningParser,
    create_reasoning_parser,
    detect_reasoning_parser,
)
from shepherd.parsers.tool import ContentDelta, UnknownParserError
from shepherd.testing.parser_corpus import REASONING_SAMPLES, ReasoningSample


@pytest.mark.parametrize("sample", REASONING_SAMPLES, ids=lambda s: s.id)
def test_one_shot_split_matches_the_corpus(sample: ReasoningSample) -> None:
    parser = create_reasoning_parser(sample.parser, chat_template_kwargs=sample.kwargs)
    if parser is None:  # thinking switched off: nothing is separated
        assert sample.reasoning == "" and sample.normal == sample.text
        return
    result = parser.parse(sample.text)
    assert (result.reasoning_text, result.normal_text) == (sample.reasoning, sample.normal)


def make(name: str = "qwen3", **kwargs: object) -> ReasoningParser:
    parser = create_reasoning_parser(name, **kwargs)  # type: ignore[arg-type]
    assert parser is not None
    return parser


def test_tags_split_across_deltas_never_leak() -> None:
    parser = make()
    assert parser.feed("<th") == [] and parser.in_reasoning is False
    assert parser.feed("ink>\nLet me") == [ReasoningDelta("Let me")] and parser.in_reasoning
    assert parser.feed(" see.</thi") == [ReasoningDelta(" see.")]
    assert parser.feed("nk>\n\nIt is 4.") == [ContentDelta("It is 4.")] and not parser.in_reasoning
    assert parser.finish() == []


def test_content_after_the_block_is_passed_on_without_buffering() -> None:
    parser = make()
    parser.feed("<think>a</think>b")
    assert parser.feed("</think> <think>") == [ContentDelta("</think> <think>")]


def test_a_model_that_starts_inside_reasoning() -> None:
    parser = make("deepseek_r1")
    assert parser.in_reasoning
    assert parser.feed("Hmm") == [ReasoningDelta("Hmm")]
    assert parser.feed(".</think>Yes") == [ReasoningDelta("."), ContentDelta("Yes")]


def test_a_tag_in_the_middle_of_an_answer_is_answer_text() -> None:
    result = make().parse("Use <think> tags like this: <think>x</think>")
    assert result.reasoning_text == "" and result.normal_text == "Use <think> tags like this: <think>x</think>"


def test_thinking_switches() -> None:
    assert create_reasoning_parser("qwen3", chat_template_kwargs={"enable_thinking": False}) is None
    assert create_reasoning_parser("deepseek_v31", chat_template_kwargs={"thinking": False}) is None
    assert make("deepseek_v31").in_reasoning is False
    assert make("deepseek_v31", chat_template_kwargs={"thinking": True}).in_reasoning is True
    assert make("qwen3", starts_in_reasoning=True).parse("a</think>b").reasoning_text == "a"


@pytest.mark.parametrize("model, parser", [
    ("deepseek-ai/DeepSeek-R1-0528", "deepseek_r1"),
    ("deepseek-ai/DeepSeek-V3.1", "deepseek_v31"),
    ("Qwen/Qwen3-235B-A22B-Thinking-2507", "qwen3_thinking"),
    ("Qwen/Qwen3-8B", "qwen3"),
    ("Qwen/QwQ-32B", "qwen3_thinking"),
    ("Qwen/Qwen3-Coder-30B-A3B-Instruct", None),
    ("zai-org/GLM-4.5-Air", "glm45"),
    ("moonshotai/Kimi-K2-Thinking", "kimi_thinking"),
    ("moonshotai/Kimi-VL-A3B-Thinking", "kimi"),
    ("stepfun-ai/step3", "step3"),
    ("MiniMaxAI/MiniMax-M2", "minimax"),
    ("meta-llama/Llama-3.1-8B-Instruct", None),
])
def test_detection_from_the_model_name(model: str, parser: str | None) -> None:
    assert detect_reasoning_parser(model) == parser


def test_registry_errors() -> None:
    assert create_reasoning_parser("passthrough", model="Qwen/Qwen3-8B") is None
    assert create_reasoning_parser(None, model="gpt2") is None
    with pytest.raises(UnknownParserError):
        create_reasoning_parser("nope")
