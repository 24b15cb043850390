"""Anthropic Messages and embeddings on backends that do not speak them natively, with the official SDKs.

* gRPC workers: the gateway's own template/tokenize/parse pipeline serves /v1/messages (plain,
  streamed, tool use round trip, thinking), counts tokens itself, and embeds through the Embed RPC.
* An HTTP engine without /v1/messages: its 404 is learned and the request is translated to chat.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from shepherd.testing import Gateway, GrpcSim, Sim

MODEL = "qwen3-messages"
TOOLS = [{"name": "get_weather", "description": "Current weather",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
THINK = "<think>\nThe user wants the weather; call the tool.\n</think>\n\n"
CALL = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def grpc_sim() -> Iterator[GrpcSim]:
    process = GrpcSim(1, "--model", MODEL)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def grpc_gateway(grpc_sim: GrpcSim) -> Iterator[Gateway]:
    gateway = Gateway(grpc_sim.targets)
    yield gateway
    gateway.stop()


@pytest.fixture(autouse=True)
def _reset(grpc_sim: GrpcSim) -> Iterator[None]:
    yield
    grpc_sim.reset()


def _claude(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)


def test_grpc_messages_plain_and_streamed(grpc_gateway: Gateway, grpc_sim: GrpcSim) -> None:
    grpc_sim.faults(response_text="Bonjour from the engine.")
    client = _claude(grpc_gateway)
    message = client.messages.create(model=MODEL, max_tokens=64, system="Answer in French.",
                                     messages=[{"role": "user", "content": "Say hello"}],
                                     thinking={"type": "disabled"},
                                     extra_body={"top_k": 5, "temperature": 0.2})
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Bonjour from the engine."
    assert message.stop_reason == "end_turn" and message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    sent = grpc_sim.requests()[-1]
    assert "Answer in French." in sent["tokenized"]["original_text"]  # the system prompt reached the template
    assert sent["sampling_params"]["top_k"] == 5
    with client.messages.stream(model=MODEL, max_tokens=64, thinking={"type": "disabled"},
                                messages=[{"role": "user", "content": "Say hello"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "message_delta" in kinds
    assert final.content[0].text == "Bonjour from the engine." and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == message.usage.output_tokens


def test_grpc_messages_stop_sequence_and_max_tokens(grpc_gateway: Gateway, grpc_sim: GrpcSim) -> None:
    grpc_sim.faults(response_text="one two three STOP four five")
    client = _claude(grpc_gateway)
    stopped = client.messages.create(model=MODEL, max_tokens=64, stop_sequences=["STOP"],
                                     thinking={"type": "disabled"}, messages=[{"role": "user", "content": "count"}])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "STOP"
    assert stopped.content[0].text == "one two three "
    cut = client.messages.create(model=MODEL, max_tokens=2, thinking={"type": "disabled"},
                                 messages=[{"role": "user", "content": "count"}])
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2


@pytest.mark.parametrize("streaming", [False, True])
def test_grpc_messages_tool_use_round_trip_with_thinking(grpc_gateway: Gateway, grpc_sim: GrpcSim,
                                                         streaming: bool) -> None:
    grpc_sim.faults(response_text=THINK + CALL)
    client = _claude(grpc_gateway)
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    kwargs = {"model": MODEL, "max_tokens": 256, "tools": TOOLS, "messages": ask,
              "thinking": {"type": "enabled", "budget_tokens": 1024}}
    if streaming:
        with client.messages.stream(**kwargs) as stream:  # type: ignore[arg-type]
            events = list(stream)
            first = stream.get_final_message()
        assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
        assert any(e.type == "content_block_delta" and e.delta.type == "thinking_delta" for e in events)
    else:
        first = client.messages.create(**kwargs)  # type: ignore[arg-type]
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[0].thinking.strip() == "The user wants the weather; call the tool."
    call = first.content[2]
    assert call.name == "get_weather" and call.input == {"city": "Paris"} and call.id.startswith("toolu_")
    assert first.stop_reason == "tool_use"
    grpc_sim.faults(response_text="It is sunny in Paris.")
    follow = [*ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}]}]
    second = client.messages.create(model=MODEL, max_tokens=64, tools=TOOLS, messages=follow,
                                    thinking={"type": "disabled"})
    assert second.content[-1].text == "It is sunny in Paris." and second.stop_reason == "end_turn"
    prompt = grpc_sim.requests()[-1]["tokenized"]["original_text"]
    assert "sunny, 21C" in prompt and "get_weather" in prompt  # the result and the tool definitions were templated


def test_grpc_count_tokens_is_the_templated_prompt(grpc_gateway: Gateway, grpc_sim: GrpcSim) -> None:
    client = _claude(grpc_gateway)
    counted = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Say hello"}],
                                           thinking={"type": "disabled"})
    grpc_sim.faults(response_text="ok")
    message = client.messages.create(model=MODEL, max_tokens=8, thinking={"type": "disabled"},
                                     messages=[{"role": "user", "content": "Say hello"}])
    assert counted.input_tokens == message.usage.input_tokens == len(grpc_sim.requests()[-1]["input_ids"])
    with_tools = client.messages.count_tokens(model=MODEL, tools=TOOLS, thinking={"type": "disabled"},  # type: ignore[arg-type]
                                              messages=[{"role": "user", "content": "Say hello"}])
    assert with_tools.input_tokens > counted.input_tokens


def test_grpc_messages_errors_are_anthropic_shaped(grpc_gateway: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        _claude(grpc_gateway).messages.create(model=MODEL, max_tokens=8, messages=[
            {"role": "user", "content": [{"type": "server_tool_use", "id": "x", "name": "y", "input": {}}]}])
    assert caught.value.body["type"] == "error"  # type: ignore[index]


def test_grpc_embeddings_with_the_openai_sdk(grpc_gateway: Gateway, grpc_sim: GrpcSim) -> None:
    client = openai.OpenAI(base_url=grpc_gateway.url + "/v1", api_key="unused", max_retries=0)
    answer = client.embeddings.create(model=MODEL, input=["the quick fox", "a lazy dog"])  # base64 on the wire
    assert [d.index for d in answer.data] == [0, 1] and len(answer.data[0].embedding) == 64
    assert answer.data[0].embedding != answer.data[1].embedding
    again = client.embeddings.create(model=MODEL, input="the quick fox", encoding_format="float")
    assert again.data[0].embedding == pytest.approx(answer.data[0].embedding, rel=1e-6)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 0
    assert grpc_sim.stats()["embeds_total"] == 3
    grpc_sim.faults(embed=False)  # an engine serving a generation model: no embeddings
    with pytest.raises(openai.APIStatusError) as caught:
        client.embeddings.create(model=MODEL, input="x")
    assert caught.value.status_code == 501
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "embeddings_not_supported"
    assert "does not serve embeddings" in error["message"]


@pytest.fixture(scope="module")
def http_without_messages() -> Iterator[tuple[Sim, Gateway]]:
    sim = Sim(1, "--model", "mock-model", "--no-messages-api")
    gateway = Gateway(sim.urls)
    yield sim, gateway
    gateway.stop()
    sim.stop()


def test_http_engine_without_messages_is_translated_to_chat(http_without_messages: tuple[Sim, Gateway]) -> None:
    sim, gateway = http_without_messages
    client = _claude(gateway)
    message = client.messages.create(model="mock-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert message.type == "message" and message.content[0].type == "text" and message.usage.output_tokens == 8
    assert message.stop_reason == "max_tokens"
    paths = [r["path"] for r in sim.requests()]
    assert paths == ["/v1/chat/completions"]  # after the engine's 404 (not recorded: no such route), translated
    worker = httpx.get(gateway.url + "/workers", timeout=5).json()["workers"][0]
    assert worker["translated_apis"] == ["/v1/messages"]
    with client.messages.stream(model="mock-model", max_tokens=6,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and final.usage.output_tokens == 6
    assert sim.requests()[-1]["path"] == "/v1/chat/completions"  # learned: no second 404
    ask = [{"role": "user", "content": "Use get_weather for Paris"}]
    first = client.messages.create(model="mock-model", max_tokens=64, tools=TOOLS, messages=ask)  # type: ignore[arg-type]
    call = next(b for b in first.content if b.type == "tool_use")
    assert first.stop_reason == "tool_use" and call.input == {"city": "Paris"}
    second = client.messages.create(model="mock-model", max_tokens=64, tools=TOOLS, messages=[  # type: ignore[arg-type]
        *ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}])
    assert "sunny" in second.content[0].text  # type: ignore[union-attr]
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.count_tokens(model="mock-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 501 and caught.value.body["type"] == "error"  # type: ignore[index]


def test_http_engine_with_messages_keeps_its_own(tmp_path: object) -> None:
    sim = Sim(1, "--model", "mock-model")
    gateway = Gateway(sim.urls)
    try:
        client = _claude(gateway)
        client.messages.create(model="mock-model", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert client.messages.count_tokens(model="mock-model",
                                            messages=[{"role": "user", "content": "hi"}]).input_tokens > 0
        assert [r["path"] for r in sim.requests()] == ["/v1/messages", "/v1/messages/count_tokens"]
    finally:
        gateway.stop()
        sim.stop()
