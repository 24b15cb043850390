"""Responses requests -> chat bodies, chat answers -> Response objects and events, and runs' followers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shepherd.errors import GatewayError
from shepherd.responses.output import EventStream, base_response, complete_from_chat
from shepherd.responses.request import ResponseRequest
from shepherd.responses.runs import BackgroundRuns


def _request(**body: Any) -> ResponseRequest:
    return ResponseRequest.parse({"model": "m", "input": "hi", **body})


def test_text_input_becomes_a_stored_user_message_and_the_chat_leads_with_instructions() -> None:
    request = _request(instructions="Be brief.", max_output_tokens=9, temperature=0.2)
    [item] = request.input_items
    assert item["type"] == "message" and item["role"] == "user" and item["id"].startswith("msg_")
    assert item["content"] == [{"type": "input_text", "text": "hi"}]
    chat = request.chat_body([], stream=True)
    assert chat["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert chat["max_tokens"] == 9 and chat["temperature"] == 0.2
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}


def test_function_calls_and_outputs_become_tool_calls_and_tool_messages() -> None:
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "t", "arguments": "{}"},
    ]
    request = _request(input=[{"type": "function_call_output", "call_id": "c1", "output": "18C"},
                              {"type": "function_call_output", "call_id": "c2", "output": "noon"}],
                       tools=[{"type": "function", "name": "w", "parameters": {"type": "object"}}],
                       tool_choice={"type": "function", "name": "w"})
    chat = request.chat_body(history, stream=False)
    assert chat["messages"] == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city":"Paris"}'}},
            {"id": "c2", "type": "function", "function": {"name": "t", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"}]
    assert chat["tools"] == [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "w"}}


@pytest.mark.parametrize(("fmt", "expected"), [
    ({"type": "text"}, None),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "json_schema", "name": "r", "schema": {"type": "object"}, "strict": True},
     {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": True}}),
])
def test_text_format_becomes_response_format(fmt: dict[str, Any], expected: Any) -> None:
    assert _request(text={"format": fmt}).chat_body([], False).get("response_format") == expected


@pytest.mark.parametrize("body", [
    {"tools": [{"type": "web_search"}]}, {"input": 5}, {"input": [{"type": "message", "role": "robot"}]},
    {"conversation": "conv_1", "previous_response_id": "resp_1"}, {"background": True, "store": False},
    {"include": ["nope"]}, {"text": {"format": {"type": "json_schema"}}}, {"model": 3},
])
def test_bad_requests_are_400(body: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as caught:
        _request(**body)
    assert caught.value.status == 400


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_chunks_become_openais_event_grammar() -> None:
    builder = EventStream(base_response(_request(), "resp_1", "in_progress"))
    events = builder.start()
    for chunk in (_chunk({"reasoning_content": "think"}), _chunk({"content": "Hel"}), _chunk({"content": "lo"}),
                  _chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "w", "arguments": ""}}]}),
                  _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
                  _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "tool_calls"),
                  {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}):
        events += builder.feed(chunk)
    events += builder.finish()
    events.append(builder.terminal())
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["output"][1]["content"][0]["text"] == "Hello"
    assert final["output"][2]["arguments"] == '{"a":1}' and final["output"][2]["call_id"] == "c1"
    assert final["usage"]["total_tokens"] == 7 and final["status"] == "completed"


def test_a_whole_completion_hitting_the_limit_is_incomplete() -> None:
    response = complete_from_chat(base_response(_request(), "resp_1", "in_progress"), {
        "choices": [{"message": {"role": "assistant", "content": "cut"}, "finish_reason": "length"}]})
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_followers_of_a_cancelled_run_end() -> None:
    runs = BackgroundRuns(limit=1)
    run = runs.admit("resp_1")
    run.append({"type": "response.created", "sequence_number": 0})

    async def work(_: Any) -> None:
        run.append({"type": "response.in_progress", "sequence_number": 1})
        await asyncio.sleep(60)

    runs.start(run, work)
    seen: list[str] = []

    async def follow() -> None:
        async for event in run.follow():
            seen.append(event["type"])

    follower = asyncio.ensure_future(follow())
    await asyncio.sleep(0.01)
    with pytest.raises(GatewayError):
        runs.admit("resp_2")  # the cap
    await runs.cancel(run)
    await asyncio.wait_for(follower, 1)
    assert seen == ["response.created", "response.in_progress"] and runs.get("resp_1") is None
