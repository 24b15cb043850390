"""The gateway runs MCP tools on Chat Completions end to end: the official openai SDK as client, the
simulator as the model (it calls a tool the user names and answers from its result), real MCP
servers over stdio and streamable HTTP."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import openai
import orjson
import pytest
import yaml

from shepherd.testing import Gateway, GrpcSim, Sim, free_ports, wait_until
from tests.integration.test_mcp_servers import HttpServer, stdio_entry
from tests.integration.test_observability import _OtlpReceiver

MODEL = "mock-model"


def write_config(tmp_path: Path, servers: list[dict[str, object]], **top: object) -> str:
    path = tmp_path / "mcp.yaml"
    path.write_text(yaml.safe_dump({"servers": servers, **top}))
    return str(path)


@pytest.fixture
def sim() -> Iterator[Sim]:
    s = Sim(1, "--model", MODEL, "--output-tokens", "8")
    yield s
    s.stop()


@pytest.fixture
def remote() -> Iterator[HttpServer]:
    server = HttpServer("streamable")
    yield server
    server.stop()


@pytest.fixture
def gateway(sim: Sim, remote: HttpServer, tmp_path: Path) -> Iterator[Gateway]:
    config = write_config(tmp_path, [
        stdio_entry("local", call_timeout_secs=3, denied_tools=["seen_headers"]),
        {"name": "remote", "protocol": "streamable", "url": remote.url, "allowed_tools": ["seen_headers"]},
    ], max_tool_calls=3)
    gw = Gateway(sim.urls, "--mcp-config-path", config, "--api-key", "gateway-key",
                 env={"OPENAI_API_KEY": "gateway-env-secret"})
    yield gw
    gw.stop()


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="gateway-key", max_retries=0)


def test_chat_runs_an_mcp_tool_and_answers_from_its_result(gateway: Gateway) -> None:
    reply = client(gateway).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "what is the weather in Paris"}])
    assert reply.choices[0].message.content == "Tool result: sunny, 21C in Paris"
    assert reply.choices[0].finish_reason == "stop"
    calls = reply.model_extra["mcp_calls"]
    assert [(c["server_label"], c["name"], c["status"]) for c in calls] == [("local", "weather", "completed")]
    assert orjson.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert reply.usage.prompt_tokens > 0
    assert gateway.metric("smg_mcp_tool_calls_total", server="local", tool="weather", status="success") == 1


def test_chat_streamed_tool_loop(gateway: Gateway) -> None:
    stream = client(gateway).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "what is the weather in Oslo"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Tool result: sunny, 21C in Oslo"
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)  # the gateway's calls stay inside
    reported = [i for c in chunks for i in (c.model_extra or {}).get("mcp_calls", [])]
    assert [(i["name"], i["status"]) for i in reported] == [("weather", "completed")]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_the_clients_own_tool_call_goes_back_to_it(gateway: Gateway) -> None:
    tool = {"type": "function", "function": {"name": "lookup_order", "description": "find an order",
                                             "parameters": {"type": "object", "properties": {"id": {"type": "string"}},
                                                            "required": ["id"]}}}
    reply = client(gateway).chat.completions.create(
        model=MODEL, tools=[tool], messages=[{"role": "user", "content": "lookup_order A17"}])
    assert reply.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in reply.choices[0].message.tool_calls] == ["lookup_order"]
    assert reply.model_extra["mcp_calls"] == []


def test_failing_and_slow_tools_come_back_as_failed_results(gateway: Gateway) -> None:
    reply = client(gateway).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "please explode"}])
    assert reply.choices[0].message.content.startswith("Tool result: Error:")
    assert reply.model_extra["mcp_calls"][0]["status"] == "failed"
    slow = client(gateway).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "sleep"}])  # the sim passes 1.5 s: within 3 s
    assert slow.model_extra["mcp_calls"][0]["status"] == "completed"


def test_no_key_reaches_an_mcp_server(gateway: Gateway) -> None:
    env = client(gateway).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "show seen_env"}]).choices[0].message.content
    assert env.startswith("Tool result:") and "PATH" in env
    assert "gateway-env-secret" not in env and "gateway-key" not in env
    headers = client(gateway).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "show seen_headers"}]).choices[0].message.content
    assert headers.startswith("Tool result:") and "host" in headers
    assert "gateway-key" not in headers and "authorization" not in headers


def test_an_unreachable_server_leaves_chat_working(sim: Sim, tmp_path: Path) -> None:
    config = write_config(tmp_path, [stdio_entry("local"),
                                     {"name": "down", "protocol": "streamable", "url": "http://127.0.0.1:9/mcp",
                                      "connect_timeout_secs": 1}])
    gw = Gateway(sim.urls, "--mcp-config-path", config)
    try:
        reply = client(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "what is the weather in Rome"}])
        assert reply.choices[0].message.content == "Tool result: sunny, 21C in Rome"
    finally:
        gw.stop()


def test_a_required_server_that_is_down_stops_the_launch(sim: Sim, tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"name": "down", "protocol": "streamable", "url": "http://127.0.0.1:9/mcp",
                                      "connect_timeout_secs": 1, "required": True}])
    with pytest.raises(AssertionError, match="required MCP server 'down'"):
        Gateway(sim.urls, "--mcp-config-path", config)


def test_a_bad_config_file_is_a_clear_launch_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"name": "x", "protocol": "carrier-pigeon"}])
    with pytest.raises(AssertionError, match="'protocol' must be one of"):
        Gateway([], "--mcp-config-path", config)


def test_a_stdio_server_does_not_outlive_a_killed_gateway(sim: Sim, tmp_path: Path) -> None:
    gw = Gateway(sim.urls, "--mcp-config-path", write_config(tmp_path, [stdio_entry("local")]))
    try:
        text = client(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "pid"}]).choices[0].message.content
        pid = int(re.findall(r"\d+", text)[0])
        assert Path(f"/proc/{pid}").exists()
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait()
        wait_until(lambda: _gone(pid), 10, message=f"MCP server {pid} to exit")
    finally:
        gw.stop()


def _gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return True





@pytest.fixture(scope="module")
def grpc_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    engine = GrpcSim(1, "--model", "qwen3-tools")
    try:
        gw = Gateway(engine.targets, "--mcp-config-path",
                     write_config(tmp_path_factory.mktemp("grpc"), [stdio_entry("local")]))
        yield gw
        gw.stop()
    finally:
        engine.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_the_loop_on_a_grpc_engine(grpc_gateway: Gateway, stream: bool) -> None:
    """A gRPC engine: the gateway renders the MCP tools into the Qwen3 template, parses the engine's
    `<tool_call>` text back into calls, runs them, and renders the results for the next turn."""
    ask = {"model": "qwen3-tools", "messages": [{"role": "user", "content": "what is the weather in Lima"}]}
    if stream:
        chunks = list(client(grpc_gateway).chat.completions.create(**ask, stream=True))  # type: ignore[call-overload]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client(grpc_gateway).chat.completions.create(**ask).choices[0].message.content  # type: ignore[call-overload]
    assert text == "Tool result: sunny, 21C in Lima"


def test_each_mcp_call_is_a_span_in_the_requests_trace(sim: Sim, tmp_path: Path) -> None:
    port = free_ports(1)[0]
    receiver = ThreadingHTTPServer(("127.0.0.1", port), _OtlpReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    gw = Gateway(sim.urls, "--mcp-config-path", write_config(tmp_path, [stdio_entry("local")]), "--enable-trace",
                 "--otlp-traces-endpoint", f"http://127.0.0.1:{port}/v1/traces")
    try:
        trace = "1af7651916cd43dd8448eb211c80319d"
        client(gw).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "what is the weather in Bern"}],
            extra_headers={"traceparent": f"00-{trace}-b7ad6b7169203331-01"})

        def mcp_spans() -> list:
            return [s for s in _OtlpReceiver.spans if s.trace_id.hex() == trace and s.name.startswith("mcp.")]

        wait_until(lambda: mcp_spans(), 10, message="the MCP span to be exported")
        span = mcp_spans()[0]
        attributes = {a.key: a.value.string_value for a in span.attributes}
        assert span.name == "mcp.call weather" and span.kind == span.SPAN_KIND_CLIENT
        assert attributes == {"mcp.server": "local", "mcp.tool": "weather", "mcp.status": "completed"}
    finally:
        gw.stop()
        receiver.shutdown()
