"""External providers end to end: the official SDKs, through the gateway, against simulated OpenAI-
and Anthropic-compatible providers (strict about keys and conversation shape), next to a local engine.

The deployment: `local-model` on a plain simulated engine; `gpt-sim` on two OpenAI-compatible
providers (one from the command line, one added with POST /workers); `claude-sim-20250101` on an
Anthropic-compatible provider (also reachable as `claude-sim`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest

from shepherd.testing import Gateway, Sim, wait_until

OPENAI_A_KEY = "sk-oa-test-4b1d7c0e55"
OPENAI_B_KEY = "sk-ob-test-9f3e2a1177"
ANTHROPIC_KEY = "sk-ant-test-77aa01bc33"
KEYS = (OPENAI_A_KEY, OPENAI_B_KEY, ANTHROPIC_KEY)
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ANTHROPIC_TOOLS: list[Any] = [{"name": "get_weather", "description": "Current weather", "input_schema": WEATHER}]
OPENAI_TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                                             "parameters": WEATHER}}]
IMAGE_URL = "https://example.com/cat.png"


@dataclass
class Deployment:
    gateway: Gateway
    local: Sim
    openai_a: Sim
    openai_b: Sim
    anthropic: Sim

    def anthropic_client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gateway.url, api_key="client-key", max_retries=0)

    def openai_client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.url + "/v1", api_key="client-key", max_retries=0)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    canned = ("--engine", "canned")
    local = Sim(1, "--model", "local-model", *canned)
    openai_a = Sim(1, "--provider", "openai", "--api-key", OPENAI_A_KEY, "--model", "gpt-sim", *canned)
    openai_b = Sim(1, "--provider", "openai", "--api-key", OPENAI_B_KEY, "--model", "gpt-sim", *canned)
    claude = Sim(1, "--provider", "anthropic", "--api-key", ANTHROPIC_KEY, "--model", "claude-sim-20250101", *canned)
    gateway = Gateway(local.urls,
                      "--external-provider", f"{openai_a.urls[0]}=openai,key_env=SIM_OPENAI_KEY",
                      "--external-provider", f"{claude.urls[0]}/v1=anthropic,key_env=SIM_ANTHROPIC_KEY",
                      "--external-model-refresh-secs", "60",
                      expect_workers=3, env={"SIM_OPENAI_KEY": OPENAI_A_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY})
    added = httpx.post(gateway.url + "/workers", json={"url": openai_b.urls[0], "runtime_type": "external",
                                                       "provider": "openai", "api_key": OPENAI_B_KEY}, timeout=5)
    assert added.status_code == 202, added.text
    wait_until(lambda: len(gateway.workers()) == 4, message="the POSTed provider to register")
    yield Deployment(gateway, local, openai_a, openai_b, claude)
    for process in (gateway, local, openai_a, openai_b, claude):
        process.stop()


def received(*sims: Sim) -> dict[str, Any]:
    """The latest request any of `sims` received: path, headers (lower-case names), parsed body."""
    latest = max((entry for sim in sims for entry in sim.requests()), key=lambda entry: entry["time"])
    return {"path": latest["path"], "headers": {k.lower(): v for k, v in latest["headers"].items()},
            "body": json.loads(latest["body"]), "raw": latest["body"]}


# -- the deployment ---------------------------------------------------------------------------------

def test_models_lists_local_and_provider_models(deployment: Deployment) -> None:
    models = {m.id: m for m in deployment.openai_client().models.list().data}
    assert set(models) == {"local-model", "gpt-sim", "claude-sim-20250101"}
    assert models["gpt-sim"].owned_by == "openai" and models["claude-sim-20250101"].owned_by == "anthropic"
    assert models["claude-sim-20250101"].model_extra["aliases"] == ["claude-sim"]  # type: ignore[index]
    listing = httpx.get(deployment.gateway.url + "/workers", timeout=5).text
    workers = json.loads(listing)["workers"]
    assert sorted((w["runtime_type"], w["provider"]) for w in workers) == [
        ("external", "anthropic"), ("external", "openai"), ("external", "openai"), ("sglang", None)]
    assert not any(key in listing for key in KEYS)  # keys are write-only


def test_requests_are_routed_by_model_name(deployment: Deployment) -> None:
    client = deployment.openai_client()
    routed = {}
    for model in ("local-model", "gpt-sim", "claude-sim-20250101"):
        raw = client.chat.completions.with_raw_response.create(model=model, max_tokens=2,
                                                              messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().choices[0].message.content
        routed[model] = raw.headers["x-smg-routed-worker-id"]
    assert routed["local-model"] == deployment.local.urls[0]
    assert routed["gpt-sim"] in (deployment.openai_a.urls[0], deployment.openai_b.urls[0])
    assert routed["claude-sim-20250101"] == deployment.anthropic.urls[0]
    metrics = httpx.get(deployment.gateway.metrics_url, timeout=5).text
    assert ('smg_worker_requests_total{model="claude-sim-20250101",status_code="200",'
            f'worker="{deployment.anthropic.urls[0]}"}}') in metrics
    assert 'router_type="external"' in metrics and 'router_type="http"' in metrics


# -- Anthropic SDK against OpenAI-compatible providers --------------------------------------------

def test_anthropic_sdk_against_an_openai_provider(deployment: Deployment) -> None:
    message = deployment.anthropic_client().messages.create(
        model="gpt-sim", max_tokens=8, system="You are terse.",
        messages=[{"role": "user", "content": "Describe a picture"},
                  {"role": "assistant", "content": "Which picture?"},
                  {"role": "user", "content": [{"type": "text", "text": "This one"},
                                               {"type": "image", "source": {"type": "url", "url": IMAGE_URL}}]}])
    assert message.type == "message" and message.role == "assistant" and message.model == "gpt-sim"
    assert message.content[0].type == "text" and len(message.content[0].text.split()) == 8
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 8 and message.usage.input_tokens > 0
    sent = received(deployment.openai_a, deployment.openai_b)
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] in (f"Bearer {OPENAI_A_KEY}", f"Bearer {OPENAI_B_KEY}")
    assert "x-api-key" not in sent["headers"]  # the client's key stays at the gateway
    body = sent["body"]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "You are terse."
    assert body["messages"][3]["content"][1] == {"type": "image_url", "image_url": {"url": IMAGE_URL}}
    assert body["max_completion_tokens"] == 8


def test_anthropic_sdk_streaming_against_an_openai_provider(deployment: Deployment) -> None:
    client = deployment.anthropic_client()
    ask: dict[str, Any] = {"model": "gpt-sim", "max_tokens": 6,
                           "messages": [{"role": "user", "content": "stream this please"}]}
    whole = client.messages.create(**ask)
    events = [event.type for event in client.messages.create(**ask, stream=True)]
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    assert events[1] == "content_block_start" and "content_block_delta" in events and "content_block_stop" in events
    with client.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 6 and final.usage.input_tokens == 3


@pytest.mark.parametrize("streaming", [False, True])
def test_anthropic_sdk_tool_round_trip_against_an_openai_provider(deployment: Deployment, streaming: bool) -> None:
    client = deployment.anthropic_client()
    conversation: list[Any] = [{"role": "user", "content": "Please use get_weather for Paris"}]
    ask: dict[str, Any] = {"model": "gpt-sim", "max_tokens": 64, "tools": ANTHROPIC_TOOLS}
    if streaming:
        with client.messages.stream(**ask, messages=conversation) as stream:
            reply = stream.get_final_message()
    else:
        reply = client.messages.create(**ask, messages=conversation)
    calls = [block for block in reply.content if block.type == "tool_use"]
    assert reply.stop_reason == "tool_use" and len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].input == {"city": "Paris"}
    conversation += [{"role": "assistant", "content": reply.content},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,
                                                   "content": "sunny, 21C"}]}]
    # the provider is strict: a tool result that answers no tool call would be a 400
    if streaming:
        with client.messages.stream(**ask, messages=conversation) as stream:
            answer = stream.get_final_message()
    else:
        answer = client.messages.create(**ask, messages=conversation)
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].type == "text" and answer.content[0].text == "Tool result: sunny, 21C"
    sent = received(deployment.openai_a, deployment.openai_b)["body"]
    assert sent["tools"] == OPENAI_TOOLS
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21C"}


# -- OpenAI SDK against an Anthropic-compatible provider ------------------------------------------

def test_openai_sdk_against_an_anthropic_provider(deployment: Deployment) -> None:
    reply = deployment.openai_client().chat.completions.create(
        model="claude-sim", max_tokens=5,  # an alias of the provider's dated id
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Describe a picture"},
                  {"role": "assistant", "content": "Which picture?"},
                  {"role": "user", "content": [{"type": "text", "text": "This one"},
                                               {"type": "image_url", "image_url": {"url": IMAGE_URL}}]}])
    assert reply.object == "chat.completion" and reply.model == "claude-sim-20250101"
    assert reply.choices[0].finish_reason == "length" and len(reply.choices[0].message.content.split()) == 5
    assert reply.usage is not None and reply.usage.completion_tokens == 5 and reply.usage.prompt_tokens > 0
    sent = received(deployment.anthropic)
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == ANTHROPIC_KEY and sent["headers"]["anthropic-version"]
    assert "authorization" not in sent["headers"]
    body = sent["body"]
    assert body["model"] == "claude-sim-20250101" and body["system"] == "You are terse." and body["max_tokens"] == 5
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"][1] == {"type": "image", "source": {"type": "url", "url": IMAGE_URL}}


def test_openai_sdk_streaming_against_an_anthropic_provider(deployment: Deployment) -> None:
    client = deployment.openai_client()
    ask: dict[str, Any] = {"model": "claude-sim", "max_tokens": 6,
                           "messages": [{"role": "user", "content": "stream this please"}]}
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    with httpx.stream("POST", deployment.gateway.url + "/v1/chat/completions", json={**ask, "stream": True},
                      timeout=10) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        body = raw.read().decode()
    assert body.endswith("data: [DONE]\n\n") and "event:" not in body


@pytest.mark.parametrize("streaming", [False, True])
def test_openai_sdk_tool_round_trip_against_an_anthropic_provider(deployment: Deployment, streaming: bool) -> None:
    client = deployment.openai_client()
    conversation: list[Any] = [{"role": "user", "content": "Please use get_weather for Paris"}]
    ask: dict[str, Any] = {"model": "claude-sim", "max_tokens": 64, "tools": OPENAI_TOOLS}
    if streaming:
        content, calls, finish = _accumulate(client.chat.completions.create(**ask, messages=conversation,
                                                                            stream=True))
    else:
        choice = client.chat.completions.create(**ask, messages=conversation).choices[0]
        content, finish = choice.message.content or "", choice.finish_reason
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in choice.message.tool_calls or []]
    assert finish == "tool_calls" and content == "Calling get_weather."
    assert len(calls) == 1 and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    conversation += [{"role": "assistant", "content": content, "tool_calls": [
                         {"id": calls[0]["id"], "type": "function",
                          "function": {"name": calls[0]["name"], "arguments": calls[0]["arguments"]}}]},
                     {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny, 21C"}]
    if streaming:
        content, calls, finish = _accumulate(client.chat.completions.create(**ask, messages=conversation,
                                                                            stream=True))
    else:
        choice = client.chat.completions.create(**ask, messages=conversation).choices[0]
        content, finish, calls = choice.message.content or "", choice.finish_reason, []
    assert finish == "stop" and content == "Tool result: sunny, 21C" and calls == []
    sent = received(deployment.anthropic)["body"]
    assert sent["tools"] == ANTHROPIC_TOOLS
    assert sent["messages"][-1]["content"] == [{"type": "tool_result", "tool_use_id": conversation[1]["tool_calls"][0]
                                                ["id"], "content": "sunny, 21C"}]


def _accumulate(stream: Any) -> tuple[str, list[dict[str, str]], str | None]:
    content, finish = "", None
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
    return content, [calls[i] for i in sorted(calls)], finish


# -- pass-through, retries, errors ----------------------------------------------------------------

def test_a_provider_speaking_the_clients_api_gets_the_exact_bytes(deployment: Deployment) -> None:
    raw = b'{"model": "claude-sim-20250101",   "max_tokens": 3, "messages": [{"role": "user", "content": "as is"}]}'
    answer = httpx.post(deployment.gateway.url + "/v1/messages", content=raw, timeout=10,
                        headers={"content-type": "application/json", "x-api-key": "client-key",
                                 "anthropic-version": "2023-06-01"})
    assert answer.status_code == 200 and answer.json()["type"] == "message"
    sent = received(deployment.anthropic)
    assert sent["raw"] == raw.decode() and sent["headers"]["x-api-key"] == ANTHROPIC_KEY
    raw = b'{"model":"gpt-sim","max_tokens":3,"messages":[{"role":"user","content":"as is"}],  "seed": 7}'
    answer = httpx.post(deployment.gateway.url + "/v1/chat/completions", content=raw, timeout=10,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 200 and answer.json()["object"] == "chat.completion"
    assert received(deployment.openai_a, deployment.openai_b)["raw"] == raw.decode()


def test_a_rate_limited_provider_hands_the_request_to_another(deployment: Deployment) -> None:
    a, b = deployment.openai_a, deployment.openai_b
    a.reset()
    b.reset()
    client = deployment.anthropic_client()
    ask: dict[str, Any] = {"model": "gpt-sim", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    try:
        a.faults(error_rate=1.0, error_status=429)
        for _ in range(4):
            assert client.messages.create(**ask).stop_reason == "max_tokens"
        assert a.stats()["errors_injected"] >= 1  # round robin sent some requests to the limited provider
        assert b.stats()["completed"] == 4
        b.faults(error_rate=1.0, error_status=429)  # every provider of the model is limited now
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(**ask)
        assert caught.value.body == {"type": "error",
                                     "error": {"type": "rate_limit_error", "message": "injected fault"}}
    finally:
        a.reset()
        b.reset()


def test_a_failing_provider_is_taken_out_by_its_circuit_breaker(deployment: Deployment) -> None:
    a, b = deployment.openai_a, deployment.openai_b
    gateway = Gateway((), "--cb-failure-threshold", "2", "--policy", "round_robin",
                      "--external-provider", f"{a.urls[0]}=openai,key_env=SIM_OPENAI_KEY",
                      "--external-provider", f"{b.urls[0]}=openai,key_env=SIM_OPENAI_B_KEY",
                      expect_workers=2, env={"SIM_OPENAI_KEY": OPENAI_A_KEY, "SIM_OPENAI_B_KEY": OPENAI_B_KEY})
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="client-key", max_retries=0)
    try:
        a.reset()
        b.reset()
        a.faults(error_rate=1.0, error_status=500)
        for _ in range(6):
            client.chat.completions.create(model="gpt-sim", max_tokens=2, messages=[{"role": "user", "content": "x"}])
        assert a.stats()["errors_injected"] == 2  # two failures open its breaker; then it gets no more traffic
        assert b.stats()["completed"] == 6
        states = {w["url"]: w["circuit_breaker"]["state"] for w in gateway.workers()}
        assert states == {a.urls[0]: "open", b.urls[0]: "closed"}
    finally:
        gateway.stop()
        a.reset()
        b.reset()


def test_provider_errors_arrive_in_the_clients_api(deployment: Deployment) -> None:
    try:
        deployment.anthropic.faults(error_rate=1.0, error_status=529)
        with pytest.raises(openai.InternalServerError) as openai_error:  # OpenAI clients know no 529
            deployment.openai_client().chat.completions.create(
                model="claude-sim", messages=[{"role": "user", "content": "hi"}])
        assert openai_error.value.status_code == 503
        assert openai_error.value.body["message"] == "injected fault"  # type: ignore[index]
        with pytest.raises(anthropic.APIStatusError) as anthropic_error:
            deployment.anthropic_client().messages.create(model="claude-sim", max_tokens=3,
                                                          messages=[{"role": "user", "content": "hi"}])
        assert anthropic_error.value.status_code == 529
    finally:
        deployment.anthropic.reset()
    with pytest.raises(anthropic.BadRequestError) as unsupported:
        deployment.anthropic_client().messages.create(
            model="gpt-sim", max_tokens=3, messages=[{"role": "user", "content": "search"}],
            tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert "web_search" in unsupported.value.body["error"]["message"]  # type: ignore[index]


def test_a_stream_that_breaks_ends_with_an_error_in_the_clients_grammar(deployment: Deployment) -> None:
    url = deployment.gateway.url
    ask = {"max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "a long story"}]}
    try:
        for sim in (deployment.openai_a, deployment.openai_b, deployment.anthropic):
            sim.faults(drop_after_chunks=3)
        with httpx.stream("POST", url + "/v1/messages", json={**ask, "model": "gpt-sim"}, timeout=10) as raw:
            anthropic_body = raw.read().decode()
        with httpx.stream("POST", url + "/v1/chat/completions", json={**ask, "model": "claude-sim"},
                          timeout=10) as raw:
            openai_body = raw.read().decode()
    finally:
        for sim in (deployment.openai_a, deployment.openai_b, deployment.anthropic):
            sim.reset()
    assert anthropic_body.startswith("event: message_start")
    assert anthropic_body.endswith('event: error\ndata: {"type":"error","error":{"type":"api_error","message":'
                                   '"The openai provider failed mid-stream"}}\n\n')
    assert "message_stop" not in anthropic_body
    assert '"error":{"message":"The anthropic provider failed mid-stream"' in openai_body
    assert openai_body.endswith("data: [DONE]\n\n") and '"finish_reason":"length"' not in openai_body


def test_an_unknown_model_refreshes_the_provider_lists_at_most_once(deployment: Deployment) -> None:
    a = deployment.openai_a
    listed = a.stats()["model_lists"]
    httpx.post(a.urls[0] + "/sim/models", json={"models": ["gpt-sim-new"]}, timeout=5)
    client = deployment.openai_client()
    try:
        raw = client.chat.completions.with_raw_response.create(model="gpt-sim-new", max_tokens=2,
                                                              messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-smg-routed-worker-id"] == a.urls[0]
        assert a.stats()["model_lists"] == listed + 1
        assert "gpt-sim-new" in {m.id for m in client.models.list().data}
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
        assert a.stats()["model_lists"] == listed + 1  # refreshed recently: not asked again
    finally:
        httpx.post(a.urls[0] + "/sim/models", json={"models": []}, timeout=5)


def test_a_wrong_provider_key_is_a_clean_error_and_never_logged(deployment: Deployment) -> None:
    wrong = "sk-wrong-key-5eb8d0c3a1f2"
    gateway_key = "gw-serving-key-31c9"  # what clients present to the gateway; must never reach a provider
    admin_key = "gw-admin-key-77aa"
    admin = {"Authorization": f"Bearer {admin_key}"}
    gateway = Gateway((), "--log-level", "debug", "--api-key", gateway_key,
                      "--control-plane-api-keys", f"ops:Ops:admin:{admin_key}",
                      "--external-provider", f"{deployment.anthropic.urls[0]}=anthropic,key_env=BAD_KEY,"
                                             "model=claude-sim-20250101",
                      expect_workers=1, admin_key=admin_key, env={"BAD_KEY": wrong})
    try:
        added = httpx.post(gateway.url + "/workers", headers=admin, timeout=5, json={
            "url": deployment.openai_a.urls[0], "runtime_type": "external", "provider": "openai", "api_key": wrong})
        assert added.status_code == 202
        listing = wait_until(lambda: _failed_job(gateway, admin), message="the discovery with a wrong key to fail")
        assert "401" in listing and wrong not in listing
        openai_client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway_key, max_retries=0)
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as caught:
                openai_client.chat.completions.create(model="claude-sim", stream=stream,
                                                      messages=[{"role": "user", "content": "hi"}])
            assert caught.value.status_code == 502
            assert "rejected the gateway's credentials" in caught.value.message
            assert wrong not in json.dumps(caught.value.body)
        with pytest.raises(anthropic.APIStatusError) as native:
            anthropic.Anthropic(base_url=gateway.url, api_key=gateway_key, max_retries=0).messages.create(
                model="claude-sim-20250101", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
        assert native.value.status_code == 502 and native.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        assert received(deployment.anthropic)["headers"]["x-api-key"] == wrong  # the worker's key, not the client's
    finally:
        gateway.stop()
    log = gateway.output()
    assert "rejected the gateway's credentials" in log and "was not registered" in log  # the events were logged
    assert wrong not in log
    seen_by_providers = json.dumps([sim.requests() for sim in (deployment.anthropic, deployment.openai_a)])
    assert gateway_key not in seen_by_providers


def _failed_job(gateway: Gateway, headers: dict[str, str]) -> str | None:
    text = httpx.get(gateway.url + "/workers", headers=headers, timeout=5).text
    return text if any(job["status"] == "failed" for job in json.loads(text)["pending"]) else None
