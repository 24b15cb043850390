"""The Responses API executed by the gateway, with the official openai SDK, against HTTP engines,
gRPC engines and an Anthropic provider (all through their chat paths), and passed through to an
OpenAI-compatible provider's own Responses API; state lives in the gateway's history store."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from shepherd.testing import Gateway, GrpcSim, Sim, wait_until

ANTHROPIC_KEY = "sk-ant-sim-responses"
OPENAI_KEY = "sk-openai-sim-responses"
MODELS = {"http": "sim-http", "grpc": "qwen3-sim", "anthropic": "claude-sim-20250101", "openai": "gpt-sim"}
CHAT_BACKENDS = ("http", "grpc", "anthropic")  # executed by the gateway over Chat Completions
WEATHER = [{"type": "function", "name": "get_weather", "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@dataclass
class Deployment:
    gateway: Gateway
    http: Sim
    grpc: GrpcSim
    anthropic: Sim
    openai: Sim
    slow: Sim  # 40 ms a token: a long answer takes seconds

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.url + "/v1", api_key="client-key", max_retries=0)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    http = Sim(1, "--model", MODELS["http"])
    grpc = GrpcSim(1, "--model", MODELS["grpc"])
    claude = Sim(1, "--provider", "anthropic", "--api-key", ANTHROPIC_KEY, "--model", MODELS["anthropic"])
    gpt = Sim(1, "--provider", "openai", "--api-key", OPENAI_KEY, "--model", MODELS["openai"])
    slow = Sim(1, "--model", "sim-slow", "--decode-base-ms", "40")
    gateway = Gateway([*http.urls, *grpc.targets, *slow.urls],
                      "--external-provider", f"{claude.urls[0]}/v1=anthropic,key_env=SIM_ANTHROPIC_KEY",
                      "--external-provider", f"{gpt.urls[0]}=openai,key_env=SIM_OPENAI_KEY",
                      "--history-data-dir", str(tmp_path_factory.mktemp("history")),
                      expect_workers=5, env={"SIM_ANTHROPIC_KEY": ANTHROPIC_KEY, "SIM_OPENAI_KEY": OPENAI_KEY})
    yield Deployment(gateway, http, grpc, claude, gpt, slow)
    for process in (gateway, http, grpc, claude, gpt, slow):
        process.stop()


def _last_body(sim: Sim) -> dict[str, Any]:
    return json.loads(sim.requests()[-1]["body"])


@pytest.mark.parametrize("backend", [*CHAT_BACKENDS, "openai"])
def test_create_retrieve_list_inputs_delete(deployment: Deployment, backend: str) -> None:
    client = deployment.client()
    created = client.responses.create(model=MODELS[backend], input="Say something short", instructions="Be brief.",
                                      max_output_tokens=16, metadata={"case": backend})
    assert created.id.startswith("resp_") and created.object == "response"
    assert created.status in ("completed", "incomplete") and created.output_text
    assert created.instructions == "Be brief." and created.metadata == {"case": backend} and created.store is True
    assert created.usage is not None and created.usage.output_tokens > 0

    again = client.responses.retrieve(created.id)
    assert again.output_text == created.output_text and again.status == created.status

    items = client.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].content[0].text == "Say something short"  # type: ignore[union-attr]
    assert items.first_id == items.data[0].id and items.has_more is False

    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


@pytest.mark.parametrize("backend", [*CHAT_BACKENDS, "openai"])
def test_streamed_chain_follows_the_event_grammar(deployment: Deployment, backend: str) -> None:
    client = deployment.client()
    first = client.responses.create(model=MODELS[backend], input="My name is Ada.", max_output_tokens=12)
    stream = client.responses.create(model=MODELS[backend], input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=12, stream=True)
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "response.output_text.delta" in kinds
    if backend != "openai":  # the gateway's own grammar, item by item
        message = kinds.index("response.output_item.added")
        assert kinds[message:message + 3] == ["response.output_item.added", "response.content_part.added",
                                              "response.output_text.delta"]
        assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done",
                                "response.output_item.done"]
    final = events[-1].response  # type: ignore[union-attr]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert final.output_text == text and final.previous_response_id == first.id
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == text and stored.previous_response_id == first.id
    # The chain reached the model: both user turns and the first answer, in order.
    if backend == "http":
        messages = _last_body(deployment.http)["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        assert messages[1]["content"] == first.output_text
    if backend == "openai":  # the provider gets the expanded input, and keeps nothing itself
        body = _last_body(deployment.openai)
        assert body["store"] is False and "previous_response_id" not in body
        assert [item.get("role") for item in body["input"]] == ["user", "assistant", "user"]


def test_instructions_are_not_inherited_and_formats_and_limits_are_passed(deployment: Deployment) -> None:
    client = deployment.client()
    first = client.responses.create(model=MODELS["http"], input="Hi", instructions="Answer in French.")
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    second = client.responses.create(model=MODELS["http"], input="Again", previous_response_id=first.id,
                                     max_output_tokens=7, temperature=0.3,
                                     text={"format": {"type": "json_schema", "name": "reply", "schema": schema,
                                                      "strict": True}})
    body = _last_body(deployment.http)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]  # no system: not inherited
    assert body["max_tokens"] == 7 and body["temperature"] == 0.3
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "reply", "schema": schema, "strict": True}}
    assert second.instructions is None and second.text.format.type == "json_schema"  # type: ignore[union-attr]
    client.responses.create(model=MODELS["http"], input="json please", text={"format": {"type": "json_object"}},
                            include=["message.output_text.logprobs"], top_logprobs=2)
    body = _last_body(deployment.http)
    assert body["response_format"] == {"type": "json_object"} and body["logprobs"] is True
    assert body["top_logprobs"] == 2


def test_a_client_leaving_a_stream_stops_the_engine(deployment: Deployment) -> None:
    sim = deployment.slow
    with httpx.Client(base_url=deployment.gateway.url, timeout=30) as http, http.stream(
            "POST", "/v1/responses", json={"model": "sim-slow", "input": "long", "stream": True,
                                           "max_output_tokens": 500}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if "response.output_text.delta" in line:
                assert sim.stats()["in_flight"] == 1  # (leaving iter_lines closes the response)
                break
    wait_until(lambda: sim.stats()["in_flight"] == 0, 10, message="the engine request to be dropped")


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("backend", CHAT_BACKENDS)
def test_function_call_round_trip(deployment: Deployment, backend: str, streaming: bool) -> None:
    client = deployment.client()
    model = MODELS[backend]
    if streaming:
        events = list(client.responses.create(model=model, input="Use get_weather for Paris", tools=WEATHER,
                                              stream=True))
        kinds = [e.type for e in events]
        assert "response.function_call_arguments.delta" in kinds
        assert "response.function_call_arguments.done" in kinds
        assert [e.sequence_number for e in events] == list(range(len(events)))
        response = events[-1].response  # type: ignore[union-attr]
    else:
        response = client.responses.create(model=model, input="Use get_weather for Paris", tools=WEATHER)
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"} and calls[0].call_id
    answer = client.responses.create(model=model, previous_response_id=response.id, tools=WEATHER,
                                     input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                             "output": "18C and sunny"}])
    assert "18C and sunny" in answer.output_text


@pytest.mark.parametrize("backend", CHAT_BACKENDS)
def test_conversation_collects_every_turn(deployment: Deployment, backend: str) -> None:
    client = deployment.client()
    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "Hello!"}])
    first = client.responses.create(model=MODELS[backend], conversation=conversation.id, input="First question",
                                    max_output_tokens=8)
    second = client.responses.create(model=MODELS[backend], conversation={"id": conversation.id},
                                     input="Second question", max_output_tokens=8)
    assert first.conversation is not None and first.conversation.id == conversation.id
    items = list(client.conversations.items.list(conversation.id, order="asc"))
    assert [(item.type, getattr(item, "role", None)) for item in items] == [
        ("message", "user"), ("message", "user"), ("message", "assistant"), ("message", "user"),
        ("message", "assistant")]
    assert items[2].content[0].text == first.output_text  # type: ignore[union-attr]
    assert items[4].content[0].text == second.output_text  # type: ignore[union-attr]
    if backend == "http":
        assert len(_last_body(deployment.http)["messages"]) == 4  # hello, q1, a1, q2
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODELS[backend], conversation=conversation.id, previous_response_id=first.id,
                                input="both")


def test_store_false_and_errors(deployment: Deployment) -> None:
    client = deployment.client()
    unstored = client.responses.create(model=MODELS["http"], input="keep nothing", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=MODELS["http"], input="x", previous_response_id="resp_missing")
    assert missing.value.body["code"] == "previous_response_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODELS["http"], input="x", include=["no.such.thing"])  # type: ignore[list-item]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODELS["http"], input=[{"type": "nonsense"}])  # type: ignore[list-item]
    foreground = client.responses.create(model=MODELS["http"], input="done already")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(foreground.id)  # only background responses can be cancelled


def test_input_items_are_paginated(deployment: Deployment) -> None:
    client = deployment.client()
    inputs = [{"type": "message", "role": "user", "content": f"part {i}"} for i in range(5)]
    created = client.responses.create(model=MODELS["http"], input=inputs, max_output_tokens=4)  # type: ignore[arg-type]
    pages = client.responses.input_items.list(created.id, limit=2, order="asc")
    assert len(pages.data) == 2 and pages.has_more is True
    everything = list(client.responses.input_items.list(created.id, limit=2, order="asc"))
    assert [item.content[0].text for item in everything] == [f"part {i}" for i in range(5)]  # type: ignore[union-attr]
    newest = client.responses.input_items.list(created.id, limit=3)
    assert [item.id for item in newest.data] == [item.id for item in everything[::-1][:3]]


# -- background ------------------------------------------------------------------------------------

def test_background_response_is_polled_to_completion(deployment: Deployment) -> None:
    client = deployment.client()
    queued = client.responses.create(model=MODELS["http"], input="work in the background", background=True,
                                     max_output_tokens=6)
    assert queued.status == "queued" and queued.background is True and queued.output == []
    done = wait_until(lambda: (r := client.responses.retrieve(queued.id)).status == "completed" and r
                      or r.status == "incomplete" and r, 20, message="the background response to finish")
    assert done.output_text and done.background is True
    with pytest.raises(openai.BadRequestError) as finished:
        client.responses.cancel(queued.id)
    assert finished.value.body["code"] == "response_already_completed"  # type: ignore[index]


@pytest.mark.parametrize("follower", ["original", "get"])
def test_cancelling_a_background_response_ends_its_streams(deployment: Deployment, follower: str) -> None:
    client = deployment.client()
    sim = deployment.slow
    if True:
        kinds: list[str] = []
        ended = threading.Event()
        response_id: list[str] = []

        def follow() -> None:
            if follower == "original":
                stream = client.responses.create(model="sim-slow", input="a long background answer",
                                                 background=True, stream=True, max_output_tokens=200)
            else:
                queued = client.responses.create(model="sim-slow", input="a long background answer",
                                                 background=True, max_output_tokens=200)
                response_id.append(queued.id)
                stream = client.responses.retrieve(queued.id, stream=True)
            for event in stream:
                kinds.append(event.type)
                if event.type == "response.created":
                    response_id.append(event.response.id)  # type: ignore[union-attr]
            ended.set()

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        wait_until(lambda: "response.output_text.delta" in kinds, 20, message="the stream to start")
        cancelled = client.responses.cancel(response_id[0])
        assert cancelled.status == "cancelled"
        assert ended.wait(10), "the stream of a cancelled response did not end"
        assert "response.completed" not in kinds
        assert client.responses.retrieve(response_id[0]).status == "cancelled"
        assert client.responses.cancel(response_id[0]).status == "cancelled"  # cancelling again: the same answer
        wait_until(lambda: sim.stats()["in_flight"] == 0, 10, message="the engine request to be dropped")


# -- part 5: a chain stays where its prefix is cached ------------------------------------------------

def test_a_chain_stays_on_the_worker_holding_its_prefix() -> None:
    sims = Sim(3, "--model", "affinity-model")
    gateway = Gateway(sims.urls, "--policy", "cache_aware", "--history-backend", "memory")
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        previous = None
        routed = set()
        opening = " ".join(f"context{i}" for i in range(200))
        for turn in range(5):
            raw = client.responses.with_raw_response.create(
                model="affinity-model", input=opening if turn == 0 else f"turn {turn} question",
                previous_response_id=previous, max_output_tokens=8)
            routed.add(raw.headers["x-smg-routed-worker-id"])
            previous = raw.parse().id
        assert len(routed) == 1
        served = sorted(len(sims.requests(i)) for i in range(3))
        assert served == [0, 0, 5]  # the other two workers never saw the chain
    finally:
        gateway.stop()
        sims.stop()


# -- storage ---------------------------------------------------------------------------------------

def test_responses_survive_a_restart_on_sqlite(tmp_path: Any) -> None:
    sim = Sim(1, "--model", "restart-model")
    flags = ("--history-backend", "sqlite", "--history-data-dir", str(tmp_path))
    first = Gateway(sim.urls, *flags)
    try:
        client = openai.OpenAI(base_url=first.url + "/v1", api_key="unused", max_retries=0)
        before = client.responses.create(model="restart-model", input="Remember the number 42.", max_output_tokens=8)
    finally:
        first.stop()
    second = Gateway(sim.urls, *flags)
    try:
        client = openai.OpenAI(base_url=second.url + "/v1", api_key="unused", max_retries=0)
        assert client.responses.retrieve(before.id).output_text == before.output_text
        after = client.responses.create(model="restart-model", input="Which number?", previous_response_id=before.id,
                                        max_output_tokens=8)
        messages = json.loads(sim.requests()[-1]["body"])["messages"]
        assert [m["content"] for m in messages] == ["Remember the number 42.", before.output_text, "Which number?"]
        assert client.responses.retrieve(after.id).previous_response_id == before.id
    finally:
        second.stop()
        sim.stop()


def test_a_history_store_that_is_down_answers_503() -> None:
    sim = Sim(1, "--model", "down-model")
    port = httpx_free_port()
    gateway = Gateway(sim.urls, "--history-backend", "redis", "--redis-url", f"redis://127.0.0.1:{port}/0",
                      "--redis-op-timeout-secs", "0.5")
    try:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
        for call in (lambda: client.responses.create(model="down-model", input="hi"),
                     lambda: client.responses.create(model="down-model", input="hi", stream=True),
                     lambda: client.responses.retrieve("resp_x")):
            with pytest.raises(openai.InternalServerError) as down:
                call()
            assert down.value.status_code == 503 and down.value.body["code"] == "storage_unavailable"  # type: ignore[index]
        unstored = client.responses.create(model="down-model", input="hi", store=False)  # needs no store
        assert unstored.output_text
        assert httpx.get(gateway.url + "/liveness", timeout=5).status_code == 200
    finally:
        gateway.stop()
        sim.stop()


def httpx_free_port() -> int:
    from shepherd.testing import free_ports

    return free_ports(1)[0]


# -- the openai-agents SDK: a two-turn agent with a function tool, on its default (Responses) model ----

@pytest.mark.parametrize("backend", CHAT_BACKENDS)
async def test_an_agent_uses_a_tool_and_continues_its_chain(deployment: Deployment, backend: str) -> None:
    import agents

    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"18C and sunny in {city}"

    client = openai.AsyncOpenAI(base_url=deployment.gateway.url + "/v1", api_key="client-key", max_retries=0)
    agents.set_default_openai_client(client, use_for_tracing=False)
    agent = agents.Agent(name="weather", instructions="Answer weather questions.", tools=[get_weather],
                         model=MODELS[backend])
    first = await agents.Runner.run(agent, "Use get_weather for Paris")
    assert calls == ["Paris"]
    assert "18C and sunny in Paris" in str(first.final_output)
    second = await agents.Runner.run(agent, "Thanks! Anything else?", previous_response_id=first.last_response_id)
    assert second.final_output and calls == ["Paris"]
    stored = await client.responses.retrieve(str(second.last_response_id))
    assert stored.previous_response_id == first.last_response_id
    await client.close()
