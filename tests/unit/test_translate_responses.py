"""Whole-response translation in both directions: chat.completion <-> message."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shepherd.routers.external.translate.anthropic_to_openai import message_to_chat_completion
from shepherd.routers.external.translate.openai_to_anthropic import chat_completion_to_message


def completion(message: dict[str, Any], finish: str, **choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37,
                      "prompt_tokens_details": {"cached_tokens": 10}}}


def test_chat_completion_to_message_text() -> None:
    message = chat_completion_to_message(completion({"role": "assistant", "content": "Hello!"}, "stop"))
    assert message == {"id": "msg_abc", "type": "message", "role": "assistant", "model": "gpt-x",
                       "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn",
                       "stop_sequence": None,
                       "usage": {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 10,
                                 "cache_creation_input_tokens": 0}}


def test_chat_completion_to_message_reasoning_text_and_tool_calls() -> None:
    message = chat_completion_to_message(completion({
        "role": "assistant", "content": "Let me look.", "reasoning_content": "need weather",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"c":"P"}'}},
                       {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": "not json"}}],
    }, "tool_calls"))
    assert message["content"] == [
        {"type": "thinking", "thinking": "need weather", "signature": ""},
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "P"}},
        {"type": "tool_use", "id": "toolu_2", "name": "w", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(("finish", "extra", "stop_reason", "stop_sequence"), [
    ("stop", {}, "end_turn", None),
    ("length", {}, "max_tokens", None),
    ("content_filter", {}, "refusal", None),
    ("stop", {"matched_stop": "END"}, "stop_sequence", "END"),
    ("stop", {"matched_stop": "OTHER"}, "end_turn", None),  # not one the client asked for
])
def test_chat_completion_to_message_stop_reasons(finish: str, extra: dict[str, Any], stop_reason: str,
                                                 stop_sequence: str | None) -> None:
    message = chat_completion_to_message(completion({"role": "assistant", "content": "x"}, finish, **extra),
                                         stop_sequences=["END"])
    assert (message["stop_reason"], message["stop_sequence"]) == (stop_reason, stop_sequence)


def test_chat_completion_to_message_always_has_a_content_block() -> None:
    message = chat_completion_to_message(completion({"role": "assistant", "content": None}, "stop"))
    assert message["content"] == [{"type": "text", "text": ""}]


def test_chat_completion_without_choices_is_an_upstream_error() -> None:
    with pytest.raises(ValueError):
        chat_completion_to_message({"id": "x", "choices": []})


def anthropic_message(content: list[dict[str, Any]], stop_reason: str) -> dict[str, Any]:
    return {"id": "msg_01XYZ", "type": "message", "role": "assistant", "model": "claude-x-20250101",
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 8,
                      "cache_creation_input_tokens": 2}}


def test_message_to_chat_completion_text() -> None:
    chat = message_to_chat_completion(anthropic_message([{"type": "text", "text": "Hi "},
                                                         {"type": "text", "text": "there"}], "end_turn"), created=7)
    assert chat == {"id": "chatcmpl-01XYZ", "object": "chat.completion", "created": 7, "model": "claude-x-20250101",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                                 "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 22, "completion_tokens": 5, "total_tokens": 27,
                              "prompt_tokens_details": {"cached_tokens": 8}}}


def test_message_to_chat_completion_tool_use_and_thinking() -> None:
    chat = message_to_chat_completion(anthropic_message([
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}], "tool_use"), created=0)
    reply = chat["choices"][0]["message"]
    assert reply["content"] is None and reply["reasoning_content"] == "hmm"
    assert reply["tool_calls"][0]["id"] == "toolu_1"
    assert orjson.loads(reply["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert chat["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop")])
def test_message_to_chat_completion_finish_reasons(stop_reason: str, finish: str) -> None:
    chat = message_to_chat_completion(anthropic_message([{"type": "text", "text": "x"}], stop_reason), created=0)
    assert chat["choices"][0]["finish_reason"] == finish
