"""Tool calls and reasoning through the gRPC pipeline, with the official openai SDK, plain and streaming.

The simulated engine answers with what a Qwen3 model writes (encoded by the real Qwen3 tokenizer); the
gateway's parsers, detected from the model name, turn it into `reasoning_content` and `tool_calls`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from shepherd.testing import Gateway, GrpcSim

MODEL = "qwen3-tools"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]}}}, {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}]
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]
THINK = "<think>\nThe user wants weather and time; call both tools.\n</think>\n\n"
CALLS = ('Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
         '\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "Europe/Paris"}}\n</tool_call>')


@pytest.fixture(scope="module")
def sim() -> Iterator[GrpcSim]:
    process = GrpcSim(1, "--model", MODEL)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(sim: GrpcSim) -> Iterator[openai.OpenAI]:
    gateway = Gateway(sim.targets)
    yield openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    gateway.stop()


@pytest.fixture(autouse=True)
def _answer(sim: GrpcSim) -> Iterator[None]:
    sim.faults(response_text=THINK + CALLS)
    yield
    sim.reset()


def test_tool_calls_and_reasoning_in_one_answer(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.model_extra["reasoning_content"] == "The user wants weather and time; call both tools."
    assert choice.message.content == "Let me look that up."
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert json.loads(calls[1].function.arguments) == {"zone": "Europe/Paris"}
    assert all(c.id.startswith("call_") and c.type == "function" for c in calls) and calls[0].id != calls[1].id


def test_streamed_tool_calls_arrive_as_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, stream=True)
    reasoning, content, finish = [], [], []
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
        content.append(delta.content or "")
        for item in delta.tool_calls or []:
            call = calls.setdefault(item.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = item.id or call["id"]
            if item.function is not None:
                call["name"] += item.function.name or ""
                call["arguments"] += item.function.arguments or ""
        if chunk.choices[0].finish_reason:
            finish.append(chunk.choices[0].finish_reason)
    assert "".join(reasoning) == "The user wants weather and time; call both tools."
    assert "".join(content) == "Let me look that up."
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert json.loads(calls[1]["arguments"]) == {"zone": "Europe/Paris"}
    assert finish == ["tool_calls"]


def test_the_tool_result_round_trip(client: openai.OpenAI, sim: GrpcSim) -> None:
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS).choices[0].message
    sim.faults(response_text="It is 18 degrees and 14:05 in Paris.")
    history = [*ASK, first.model_dump(exclude_none=True, exclude={"model_extra"}),
               {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": '{"temp": 18}'},
               {"role": "tool", "tool_call_id": first.tool_calls[1].id, "content": '{"time": "14:05"}'}]
    final = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS).choices[0]
    assert final.finish_reason == "stop" and final.message.content == "It is 18 degrees and 14:05 in Paris."
    prompt = sim.requests()[-1]["tokenized"]["original_text"]  # the chat template rendered the results
    assert prompt.count("<tool_response>") == 2 and '{"temp": 18}' in prompt and "get_weather" in prompt


def test_without_tools_the_markup_stays_content(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=ASK)
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.tool_calls is None
    assert "<tool_call>" in reply.choices[0].message.content


def test_tool_choice_required_constrains_the_engine(client: openai.OpenAI, sim: GrpcSim) -> None:
    sim.faults(response_text='[{"name": "get_time", "parameters": {"zone": "UTC"}}]')
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required")
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {"zone": "UTC"}
    sampling = sim.requests()[-1]["sampling_params"]
    assert "get_time" in sampling.get("json_schema", "")
