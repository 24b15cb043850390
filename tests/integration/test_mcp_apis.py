"""MCP tools named by the request, end to end: the Responses API (the official openai SDK) and
Anthropic Messages `mcp_servers` (the official anthropic SDK), with the simulator (HTTP, and a gRPC
engine) as the model and real MCP servers: the SDK-built test server over streamable HTTP as a
per-request server, and over stdio as a configured one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import orjson
import pytest

from shepherd.testing import Gateway, GrpcSim, Sim, wait_until
from tests.integration.test_mcp_chat import write_config
from tests.integration.test_mcp_servers import HttpServer, stdio_entry

MODEL = "mock-model"


@pytest.fixture(scope="module")
def remote() -> Iterator[HttpServer]:
    server = HttpServer("streamable")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(remote: HttpServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    sim = Sim(1, "--model", MODEL, "--output-tokens", "8")
    try:
        config = write_config(tmp_path_factory.mktemp("mcp"), [stdio_entry("local")], max_tool_calls=3,
                              request_servers={"allow_private_networks": True, "call_timeout_secs": 1})
        gw = Gateway(sim.urls, "--mcp-config-path", config)
        yield gw
        gw.stop()
    finally:
        sim.stop()


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)


def remote_tool(server: HttpServer, **extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": "remote", "server_url": server.url, "require_approval": "never", **extra}


def dump(item: Any) -> dict[str, Any]:
    return item.model_dump() if hasattr(item, "model_dump") else dict(item)


def test_a_per_request_server_runs_and_the_answer_uses_its_result(gateway: Gateway, remote: HttpServer) -> None:
    response = client(gateway).responses.create(model=MODEL, input="what is the weather in Paris",
                                                tools=[remote_tool(remote, authorization="secret-token")])  # type: ignore[list-item]
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    listed, call, _ = response.output
    assert listed.server_label == "remote" and "weather" in {t.name for t in listed.tools}  # type: ignore[union-attr]
    assert (call.name, call.server_label, call.status, call.output) == (  # type: ignore[union-attr]
        "weather", "remote", "completed", "sunny, 21C in Paris")
    assert orjson.loads(call.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert response.output_text == "Tool result: sunny, 21C in Paris"
    assert response.status == "completed" and response.usage is not None and response.usage.input_tokens > 0
    stored = client(gateway).responses.retrieve(response.id)
    assert [item.type for item in stored.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert "secret-token" not in stored.model_dump_json()  # the server's credentials are not kept


def test_streamed_events_follow_openais_mcp_grammar(gateway: Gateway) -> None:
    events = list(client(gateway).responses.create(
        model=MODEL, input="what is the weather in Oslo", stream=True,
        tools=[{"type": "mcp", "server_label": "local", "require_approval": "never"}]))  # configured server
    kinds = [e.type for e in events]
    mcp_kinds = [k for k in kinds if "mcp" in k]
    assert mcp_kinds == ["response.mcp_list_tools.in_progress", "response.mcp_list_tools.completed",
                         "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
                         "response.mcp_call.in_progress", "response.mcp_call.completed"]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e.item.type for e in events if e.type == "response.output_item.added"]  # type: ignore[union-attr]
    assert added == ["mcp_list_tools", "mcp_call", "message"]
    final = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in final.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert final.output[1].output == "sunny, 21C in Oslo"  # type: ignore[union-attr]
    assert final.output_text == "Tool result: sunny, 21C in Oslo"
    assert client(gateway).responses.retrieve(final.id).output[1].status == "completed"  # type: ignore[union-attr]


def test_a_background_response_runs_its_mcp_tools(gateway: Gateway, remote: HttpServer) -> None:
    queued = client(gateway).responses.create(model=MODEL, input="what is the weather in Bern", background=True,
                                              tools=[remote_tool(remote)])  # type: ignore[list-item]
    wait_until(lambda: client(gateway).responses.retrieve(queued.id).status == "completed", 30,
               message="the background response to complete")
    done = client(gateway).responses.retrieve(queued.id)
    assert [item.type for item in done.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert done.output_text == "Tool result: sunny, 21C in Bern"


@pytest.mark.parametrize("tool", [
    {"type": "mcp", "server_label": "x", "server_url": "ftp://example.com/mcp"},
    {"type": "mcp", "server_label": "x", "server_url": "http://user:pw@example.com/mcp"},
    {"type": "mcp", "server_label": "nobody"},
    {"type": "mcp", "server_label": "x", "server_url": "http://example.com", "require_approval": "sometimes"},
])
def test_a_refused_mcp_tool_is_a_400(gateway: Gateway, tool: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway).responses.create(model=MODEL, input="hi", tools=[tool])  # type: ignore[list-item]
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_a_server_that_is_down_is_a_failed_listing_not_a_failed_response(gateway: Gateway) -> None:
    down = {"type": "mcp", "server_label": "down", "server_url": "http://127.0.0.1:9/mcp", "require_approval": "never"}
    response = client(gateway).responses.create(model=MODEL, input="what is the weather in Rome",
                                                tools=[down])  # type: ignore[list-item]
    assert response.status == "completed"
    assert response.output[0].type == "mcp_list_tools" and response.output[0].error  # type: ignore[union-attr]
    assert [item.type for item in response.output[1:]] == ["message"]  # the model answered without the tools


def test_a_tool_that_raises_or_times_out_is_a_failed_call_the_model_reads(gateway: Gateway,
                                                                         remote: HttpServer) -> None:
    raised = client(gateway).responses.create(model=MODEL, input="please explode", tools=[remote_tool(remote)])  # type: ignore[list-item]
    call = dump(raised.output[1])
    assert call["status"] == "failed" and call["output"] is None
    assert call["error"]["type"] == "mcp_tool_execution_error" and "tool failed" in call["error"]["content"][0]["text"]
    assert raised.output_text.startswith("Tool result: Error:") and "tool failed" in raised.output_text
    slow = client(gateway).responses.create(model=MODEL, input="sleep", stream=True,
                                            tools=[remote_tool(remote)])  # type: ignore[list-item]
    events = list(slow)
    assert "response.mcp_call.failed" in [e.type for e in events]
    timed_out = dump(events[-1].response.output[1])  # type: ignore[union-attr]
    assert timed_out["error"]["type"] == "mcp_protocol_error" and "timed out" in timed_out["error"]["message"]


def test_approval_ends_the_turn_and_an_approval_resumes_it(gateway: Gateway, remote: HttpServer) -> None:
    tools = [{"type": "mcp", "server_label": "remote", "server_url": remote.url}]  # approval: "always" by default
    asked = client(gateway).responses.create(model=MODEL, input="what is the weather in Lima", tools=tools)  # type: ignore[arg-type]
    assert [item.type for item in asked.output] == ["mcp_list_tools", "mcp_approval_request"]
    request = asked.output[1]
    assert (request.name, request.server_label, orjson.loads(request.arguments)) == (  # type: ignore[union-attr]
        "weather", "remote", {"city": "Lima"})
    approved = client(gateway).responses.create(
        model=MODEL, previous_response_id=asked.id, tools=tools,  # type: ignore[arg-type]
        input=[{"type": "mcp_approval_response", "approve": True, "approval_request_id": request.id}])
    assert [item.type for item in approved.output] == ["mcp_call", "message"]  # listed already in the chain
    assert approved.output[0].approval_request_id == request.id  # type: ignore[union-attr]
    assert approved.output_text == "Tool result: sunny, 21C in Lima"
    with pytest.raises(openai.BadRequestError, match="already answered"):
        client(gateway).responses.create(
            model=MODEL, previous_response_id=approved.id, tools=tools,  # type: ignore[arg-type]
            input=[{"type": "mcp_approval_response", "approve": True, "approval_request_id": request.id}])


def test_a_denied_call_is_told_to_the_model_and_filters_exempt_tools(gateway: Gateway, remote: HttpServer) -> None:
    tools = [{"type": "mcp", "server_label": "remote", "server_url": remote.url}]
    asked = client(gateway).responses.create(model=MODEL, input="what is the weather in Kyiv", tools=tools,  # type: ignore[arg-type]
                                             stream=True)
    final = list(asked)[-1].response  # type: ignore[union-attr]
    request = final.output[-1]
    assert request.type == "mcp_approval_request"
    denied = client(gateway).responses.create(
        model=MODEL, previous_response_id=final.id, tools=tools, stream=True,  # type: ignore[arg-type]
        input=[{"type": "mcp_approval_response", "approve": False, "approval_request_id": request.id}])
    done = list(denied)[-1].response  # type: ignore[union-attr]
    assert [item.type for item in done.output] == ["message"]
    assert done.output_text == "Tool result: Error: the user denied this tool call"
    exempt = [{"type": "mcp", "server_label": "remote", "server_url": remote.url,
               "require_approval": {"never": {"tool_names": ["weather"]}}}]
    ran = client(gateway).responses.create(model=MODEL, input="what is the weather in Baku", tools=exempt)  # type: ignore[arg-type]
    assert [item.type for item in ran.output] == ["mcp_list_tools", "mcp_call", "message"]


MCP_BETA = ["mcp-client-2025-04-04"]


def claude(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="none", max_retries=0)


def servers(remote: HttpServer, **config: Any) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {"type": "url", "url": remote.url, "name": "remote"}
    if config:
        entry["tool_configuration"] = config
    return [entry]


def test_messages_mcp_servers_run_and_come_back_as_mcp_blocks(gateway: Gateway, remote: HttpServer) -> None:
    ask: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "betas": MCP_BETA, "mcp_servers": servers(remote),
                           "messages": [{"role": "user", "content": "what is the weather in Paris"}]}
    message = claude(gateway).beta.messages.create(**ask)
    assert [b.type for b in message.content] == ["mcp_tool_use", "mcp_tool_result", "text"]
    use, result, text = message.content
    assert (use.name, use.server_name, use.input) == ("weather", "remote", {"city": "Paris"})  # type: ignore[union-attr]
    assert result.tool_use_id == use.id and result.is_error is False  # type: ignore[union-attr]
    assert result.content[0].text == "sunny, 21C in Paris"  # type: ignore[union-attr,index]
    assert text.text == "Tool result: sunny, 21C in Paris"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    with claude(gateway).beta.messages.stream(**ask) as stream:
        streamed = stream.get_final_message()
    assert [b.type for b in streamed.content] == ["mcp_tool_use", "mcp_tool_result", "text"]
    assert streamed.content[2].text == "Tool result: sunny, 21C in Paris"  # type: ignore[union-attr]
    follow_up = claude(gateway).beta.messages.create(**{**ask, "messages": [
        *ask["messages"], {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {"role": "user", "content": "thanks"}]})
    assert follow_up.content and follow_up.content[0].type == "text"  # the earlier mcp blocks were replayed


def test_messages_tool_failures_and_a_server_that_is_down(gateway: Gateway, remote: HttpServer) -> None:
    failed = claude(gateway).beta.messages.create(
        model=MODEL, max_tokens=64, betas=MCP_BETA, mcp_servers=servers(remote),  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "please explode"}])
    assert failed.content[1].type == "mcp_tool_result" and failed.content[1].is_error  # type: ignore[union-attr]
    assert failed.content[2].text.startswith("Tool result: Error:")  # type: ignore[union-attr]
    narrowed = claude(gateway).beta.messages.create(
        model=MODEL, max_tokens=64, betas=MCP_BETA, mcp_servers=servers(remote, allowed_tools=["add"]),  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "what is the weather in Rome"}])
    assert [b.type for b in narrowed.content] == ["text"]  # weather is not offered: the model just answers
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(gateway).beta.messages.create(
            model=MODEL, max_tokens=64, betas=MCP_BETA,
            mcp_servers=[{"type": "url", "url": "http://127.0.0.1:9/mcp", "name": "down"}],
            messages=[{"role": "user", "content": "what is the weather in Rome"}])
    assert caught.value.status_code == 502 and "down" in str(caught.value)
    with pytest.raises(anthropic.BadRequestError):
        claude(gateway).beta.messages.create(
            model=MODEL, max_tokens=64, betas=MCP_BETA,
            mcp_servers=[{"type": "url", "url": "file:///etc/passwd", "name": "x"}],
            messages=[{"role": "user", "content": "hi"}])


@pytest.fixture(scope="module")
def grpc_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    engine = GrpcSim(1, "--model", "qwen3-tools")
    try:
        gw = Gateway(engine.targets, "--mcp-config-path",
                     write_config(tmp_path_factory.mktemp("grpc"), [stdio_entry("local")],
                                  request_servers={"allow_private_networks": True}))
        yield gw
        gw.stop()
    finally:
        engine.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_the_responses_loop_on_a_grpc_engine(grpc_gateway: Gateway, stream: bool) -> None:
    ask: dict[str, Any] = {"model": "qwen3-tools", "input": "what is the weather in Quito",
                           "tools": [{"type": "mcp", "server_label": "local", "require_approval": "never"}]}
    if stream:
        response = list(client(grpc_gateway).responses.create(**ask, stream=True))[-1].response  # type: ignore[union-attr]
    else:
        response = client(grpc_gateway).responses.create(**ask)
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert response.output_text == "Tool result: sunny, 21C in Quito"


def test_messages_mcp_on_a_grpc_engine(grpc_gateway: Gateway, remote: HttpServer) -> None:
    with claude(grpc_gateway).beta.messages.stream(
            model="qwen3-tools", max_tokens=64, betas=MCP_BETA, mcp_servers=servers(remote),  # type: ignore[arg-type]
            messages=[{"role": "user", "content": "what is the weather in Lima"}]) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["mcp_tool_use", "mcp_tool_result", "text"]
    assert message.content[2].text == "Tool result: sunny, 21C in Lima"  # type: ignore[union-attr]
