"""Streaming translation: exact event grammar on each side, and the same output however the
upstream's bytes are split into chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from shepherd.routers.common.sse import DONE_FRAME, SSEDecoder, SSEEvent, data_frame, event_frame
from shepherd.routers.external.translate.stream_anthropic_to_openai import MessagesStreamToChat
from shepherd.routers.external.translate.stream_openai_to_anthropic import ChatStreamToMessages

OPENAI_CHUNKS: list[dict[str, Any]] = [
    {"id": "chatcmpl-1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                        "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "thinking..."}}]},
    {"choices": [{"index": 0, "delta": {"content": "Héllo"}}]},
    {"choices": [{"index": 0, "delta": {"content": " wörld"}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "w", "arguments": ""}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 1, "id": "call_b", "type": "function",
         "function": {"name": "w", "arguments": '{"city":"Rome"}'}}]}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20}},
]
OPENAI_STREAM = b"".join(data_frame(chunk) for chunk in OPENAI_CHUNKS) + b": keep-alive\n\n" + DONE_FRAME

ANTHROPIC_EVENTS: list[dict[str, Any]] = [
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                                          "content": [], "stop_reason": None, "stop_sequence": None,
                                          "usage": {"input_tokens": 25, "cache_read_input_tokens": 5,
                                                    "output_tokens": 1}}},
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hé"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "llo"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2,
     "content_block": {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"ci'}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": 'ty": "P"}'}},
    {"type": "content_block_stop", "index": 2},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 14}},
    {"type": "message_stop"},
]
ANTHROPIC_STREAM = b"".join(event_frame(event["type"], event) for event in ANTHROPIC_EVENTS)


def frames(data: bytes) -> list[tuple[str | None, Any]]:
    decoder = SSEDecoder()
    events = decoder.feed(data) + decoder.finish()
    return [(e.event, e.data if e.data == "[DONE]" else orjson.loads(e.data)) for e in events]


def to_messages(stream: bytes, cuts: Sequence[int] = ()) -> bytes:
    return run(ChatStreamToMessages(model="requested"), stream, cuts)


def to_chat(stream: bytes, cuts: Sequence[int] = (), include_usage: bool = True) -> bytes:
    return run(MessagesStreamToChat(model="requested", include_usage=include_usage, created=1), stream, cuts)


def run(translator: ChatStreamToMessages | MessagesStreamToChat, stream: bytes, cuts: Sequence[int]) -> bytes:
    decoder = SSEDecoder()
    out = b""
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        for event in decoder.feed(stream[start:end]):
            out += translator.feed(event)
    for event in decoder.finish():
        out += translator.feed(event)
    return out + translator.finish()


# -- OpenAI chunks -> Anthropic events ------------------------------------------------------------

def test_chat_stream_becomes_the_exact_anthropic_event_sequence() -> None:
    events = frames(to_messages(OPENAI_STREAM))
    assert [(name, data["type"]) for name, data in events] == [(name, name) for name, _ in events]
    summary = [(data["type"], data.get("index"), (data.get("content_block") or data.get("delta") or {}).get("type"))
               for _, data in events]
    assert summary == [
        ("message_start", None, None),
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"), ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"), ("content_block_delta", 3, "input_json_delta"),
        ("content_block_stop", 3, None),
        ("message_delta", None, None), ("message_stop", None, None),
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_1" and start["model"] == "gpt-x" and start["content"] == []
    assert events[8][1]["content_block"] == {"type": "tool_use", "id": "toolu_a", "name": "w", "input": {}}
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"]["input_tokens"] == 11 and final["usage"]["output_tokens"] == 9
    assert accumulate_anthropic(events) == {0: "thinking...", 1: "Héllo wörld", 2: {"city": "Paris"},
                                            3: {"city": "Rome"}}


def accumulate_anthropic(events: list[tuple[str | None, Any]]) -> dict[int, Any]:
    """What a client rebuilds from the deltas: text per block, parsed JSON per tool block."""
    texts: dict[int, str] = {}
    tools: set[int] = set()
    for _, data in events:
        if data["type"] == "content_block_start" and data["content_block"]["type"] == "tool_use":
            tools.add(data["index"])
        if data["type"] == "content_block_delta":
            delta = data["delta"]
            piece = delta.get("text") or delta.get("thinking") or delta.get("partial_json") or ""
            texts[data["index"]] = texts.get(data["index"], "") + piece
    return {i: orjson.loads(t) if i in tools else t for i, t in texts.items()}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(OPENAI_STREAM)), max_size=40))
def test_chat_stream_translation_does_not_depend_on_chunking(cuts: list[int]) -> None:
    assert to_messages(OPENAI_STREAM, cuts) == to_messages(OPENAI_STREAM)


def test_chat_stream_with_crlf_line_endings() -> None:
    assert to_messages(OPENAI_STREAM.replace(b"\n", b"\r\n")) == to_messages(OPENAI_STREAM)


def test_chat_stream_text_only_ends_with_end_turn() -> None:
    stream = data_frame({"id": "chatcmpl-2", "choices": [{"index": 0, "delta": {"content": "ok"}}]}) + data_frame(
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}) + DONE_FRAME
    events = frames(to_messages(stream))
    assert [d["type"] for _, d in events] == ["message_start", "content_block_start", "content_block_delta",
                                              "content_block_stop", "message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"
    assert events[0][1]["message"]["model"] == "requested"  # the upstream did not name one


def test_chat_stream_cut_short_ends_with_an_anthropic_error_event() -> None:
    partial = data_frame(OPENAI_CHUNKS[0]) + data_frame(OPENAI_CHUNKS[2])
    events = frames(to_messages(partial))
    assert events[-1][0] == "error" and events[-1][1]["type"] == "error"
    assert "message_stop" not in [d["type"] for _, d in events]


def test_chat_stream_error_chunk_becomes_an_error_event() -> None:
    stream = data_frame(OPENAI_CHUNKS[0]) + data_frame({"error": {"message": "overloaded", "type": "server_error"}})
    events = frames(to_messages(stream))
    assert events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "overloaded"}})


# -- Anthropic events -> OpenAI chunks ------------------------------------------------------------

def test_messages_stream_becomes_openai_chunks_ending_with_done() -> None:
    out = frames(to_chat(ANTHROPIC_STREAM))
    assert out[-1] == (None, "[DONE]")
    chunks = [data for _, data in out[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"reasoning_content": "hmm"}
    assert "".join(d.get("content") or "" for d in deltas) == "Héllo"
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": ""}}
    assert orjson.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "P"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and set(finishes[:-1]) == {None}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 30, "completion_tokens": 14, "total_tokens": 44, "prompt_tokens_details": {"cached_tokens": 5}}


def test_messages_stream_without_usage_request_sends_no_usage_chunk() -> None:
    chunks = [data for _, data in frames(to_chat(ANTHROPIC_STREAM, include_usage=False))[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(ANTHROPIC_STREAM)), max_size=40))
def test_messages_stream_translation_does_not_depend_on_chunking(cuts: list[int]) -> None:
    assert to_chat(ANTHROPIC_STREAM, cuts) == to_chat(ANTHROPIC_STREAM)


def test_messages_stream_cut_short_ends_with_an_error_chunk_and_done() -> None:
    out = frames(to_chat(b"".join(event_frame(e["type"], e) for e in ANTHROPIC_EVENTS[:9])))
    assert out[-1] == (None, "[DONE]")
    assert out[-2][1]["error"]["message"].startswith("The provider ended the stream")


def test_messages_stream_error_event_becomes_an_openai_error() -> None:
    stream = event_frame("message_start", ANTHROPIC_EVENTS[0]) + event_frame(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    out = frames(to_chat(stream))
    assert out[-2][1] == {"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}}
    assert out[-1] == (None, "[DONE]")


def test_round_trip_through_both_stream_translators_keeps_the_content() -> None:
    """Anthropic events -> OpenAI chunks -> Anthropic events: the same text and tool input."""
    events = frames(to_messages(to_chat(ANTHROPIC_STREAM)))
    rebuilt = accumulate_anthropic(events)
    assert list(rebuilt.values()) == ["hmm", "Héllo", {"city": "P"}]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


# -- the SSE decoder ------------------------------------------------------------------------------

def test_sse_decoder_fields_comments_and_multiline_data() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b": comment\nevent: a\ndata: one\ndata: two\n\nid: 7\ndata:x\n\n\n")
    assert events == [SSEEvent("a", "one\ntwo"), SSEEvent(None, "x")]


def test_sse_decoder_finish_flushes_an_unterminated_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: last") == []
    assert decoder.finish() == [SSEEvent(None, "last")]
