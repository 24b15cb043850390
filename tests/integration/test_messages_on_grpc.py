"""Anthropic Messages against gRPC engines, with the official anthropic SDK.

The gateway translates Messages to its own Chat Completions pipeline (template, tokenizer, parsers)
and the answer back: plain messages, the event stream's grammar, tool use round trips, count_tokens
by the gateway's tokenizer, and Anthropic-shaped errors.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest

from shepherd.testing import Gateway, GrpcSim

MODEL = "qwen3-sim"
WEATHER = {"name": "get_weather", "description": "Current weather",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def sims() -> Iterator[GrpcSim]:
    sim = GrpcSim(2, "--model", MODEL, "--output-tokens", "12")
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def gateway(sims: GrpcSim) -> Iterator[Gateway]:
    gw = Gateway(sims.targets)
    yield gw
    gw.stop()


@pytest.fixture()
def client(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="client-key", max_retries=0)


def test_a_plain_message(client: anthropic.Anthropic, sims: GrpcSim) -> None:
    message = client.messages.create(model=MODEL, max_tokens=8, system="You are terse.",
                                     messages=[{"role": "user", "content": "Say something."}])
    assert message.type == "message" and message.role == "assistant" and message.model == MODEL
    assert message.content[0].type == "text" and message.content[0].text  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 8
    assert message.usage.input_tokens > 0
    assert message.id.startswith("msg_")
    # The system prompt reached the engine through the chat template.
    record = sims.requests()[-1]
    assert record["sampling_params"]["max_new_tokens"] == 8


def test_the_stream_follows_anthropics_grammar(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model=MODEL, max_tokens=20,
                                messages=[{"role": "user", "content": "Say something."}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds[1] == "content_block_start" and "content_block_delta" in kinds
    assert kinds.index("content_block_stop") < kinds.index("message_delta")
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    plain = client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "Say something."}])
    assert final.content[0].text == plain.content[0].text  # type: ignore[union-attr]  # the engine is deterministic


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streamed"])
def test_tool_use_round_trip(client: anthropic.Anthropic, streaming: bool) -> None:
    ask = [{"role": "user", "content": "Use get_weather for Paris"}]
    if streaming:
        with client.messages.stream(model=MODEL, max_tokens=64, tools=[WEATHER], messages=ask) as stream:  # type: ignore[list-item]
            kinds = [event.type for event in stream]
            message = stream.get_final_message()
        assert "input_json" in kinds  # the SDK's event for input_json_delta
    else:
        message = client.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER], messages=ask)  # type: ignore[list-item]
    uses = [block for block in message.content if block.type == "tool_use"]
    assert message.stop_reason == "tool_use" and len(uses) == 1
    use = uses[0]
    assert use.name == "get_weather" and use.input == {"city": "Paris"} and use.id  # type: ignore[union-attr]
    answer = client.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER], messages=[  # type: ignore[list-item]
        *ask, {"role": "assistant", "content": message.content},  # type: ignore[list-item]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C and sunny"}]}])
    assert "18C and sunny" in answer.content[0].text  # type: ignore[union-attr]


def test_count_tokens_by_the_gateways_tokenizer(client: anthropic.Anthropic) -> None:
    short = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    longer = client.messages.count_tokens(model=MODEL, system="You are terse.", tools=[WEATHER],  # type: ignore[list-item]
                                          messages=[{"role": "user", "content": "Hi"}])
    assert short.input_tokens > 0 and longer.input_tokens > short.input_tokens + 20  # system and tool schema count
    created = client.messages.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "Hi"}])
    assert created.usage.input_tokens == short.input_tokens  # the same prompt the engine got


def test_bad_requests_get_anthropic_errors(gateway: Gateway, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "Hi"}])
    assert "max_tokens" in str(caught.value)
    answer = httpx.post(gateway.url + "/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": "nope"})
    assert answer.status_code == 400
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"
    assert client.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "ok"}])  # serving
