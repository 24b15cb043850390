"""The chat parser hook: a ChoiceOutput plugged into an in-process gateway shapes the answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from shepherd.app import Gateway as InProcessGateway
from shepherd.config import GatewayConfig
from shepherd.routers.grpc.output import ChatOutputContext, ChoiceOutput, OutputDelta
from shepherd.testing import GrpcSim, free_ports, wait_until

MODEL = "qwen3-hook"
ANSWER = "<think>\nplan\n</think>\n\nHello <tool_call>"


class ThinkSplitter:
    """A toy parser: text up to </think> is reasoning; `<tool_call>` becomes a call."""

    def __init__(self) -> None:
        self.buffer = ""
        self.reasoning_done = False

    def feed(self, text: str) -> OutputDelta | None:
        self.buffer += text
        if not self.reasoning_done:
            if "</think>" not in self.buffer:
                return None
            reasoning, _, self.buffer = self.buffer.partition("</think>")
            self.reasoning_done = True
            return OutputDelta(reasoning_content=reasoning.replace("<think>", "").strip())
        return None

    def finish(self) -> OutputDelta | None:
        content, calls = self.buffer.strip(), []
        if "<tool_call>" in content:
            content = content.replace("<tool_call>", "").strip()
            calls = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        return OutputDelta(content=content, tool_calls=calls)

    def complete(self, text: str) -> OutputDelta:
        first = self.feed(text) or OutputDelta()
        rest = self.finish() or OutputDelta()
        calls = [{k: v for k, v in c.items() if k != "index"} for c in rest.tool_calls]
        return OutputDelta(content=rest.content, reasoning_content=first.reasoning_content, tool_calls=calls)


class SplitterFactory:
    def __init__(self) -> None:
        self.contexts: list[ChatOutputContext] = []

    def needs_special_tokens(self, context: ChatOutputContext) -> bool:
        return True

    def __call__(self, context: ChatOutputContext) -> ChoiceOutput:
        self.contexts.append(context)
        return ThinkSplitter()


@pytest.fixture(scope="module")
def sim() -> Iterator[GrpcSim]:
    process = GrpcSim(1, "--model", MODEL)
    process.faults(response_text=ANSWER)
    yield process
    process.stop()


@pytest.fixture()
async def gateway(sim: GrpcSim) -> AsyncIterator[tuple[InProcessGateway, SplitterFactory]]:
    port, metrics_port = free_ports(2)
    config = GatewayConfig(host="127.0.0.1", port=port, worker_urls=tuple(sim.targets),
                           worker_startup_check_interval_secs=0.2, prometheus_host="127.0.0.1",
                           prometheus_port=metrics_port)
    gateway = InProcessGateway(config)
    await gateway.start()
    assert gateway.context is not None
    factory = SplitterFactory()
    gateway.context.grpc.router.outputs = factory
    for _ in range(200):  # in process: the registry itself says when the worker is registered
        if len(gateway.context.registry):
            break
        await asyncio.sleep(0.05)
    yield gateway, factory
    await gateway.stop()


async def test_parser_hook_shapes_whole_and_streamed_answers(gateway: Any, sim: GrpcSim) -> None:
    server, factory = gateway
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "hi"}]
    completion = await client.chat.completions.create(model=MODEL, messages=messages, tools=tools)
    choice = completion.choices[0]
    assert choice.message.model_extra is not None and choice.message.model_extra["reasoning_content"] == "plan"
    assert choice.message.content == "Hello"
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None
    assert factory.contexts[0].tools == tools and factory.contexts[0].thinking is True
    wait_until(lambda: sim.requests(), 5)
    # The parser asked for special tokens (proto3 leaves a false out; the default path sends true).
    assert sim.requests()[-1]["sampling_params"].get("skip_special_tokens", False) is False

    stream = await client.chat.completions.create(model=MODEL, messages=messages, tools=tools, stream=True)
    deltas = [c.choices[0] async for c in stream if c.choices]
    reasoning = "".join((d.delta.model_extra or {}).get("reasoning_content", "") for d in deltas)
    content = "".join(d.delta.content or "" for d in deltas)
    assert (reasoning, content) == ("plan", "Hello")
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["tool_calls"]
    assert any(d.delta.tool_calls for d in deltas)
