"""The tool loop over a scripted model (any callable that answers a chat body), against a real
stdio MCP server: parallel calls in one turn, the max_tool_calls bound, failures as tool results,
the client's own calls going back, and the same on the streamed loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from shepherd.mcp.chat_loop import run_chat, stream_chat
from shepherd.mcp.config import McpConfigError, parse_mcp_config
from shepherd.mcp.connection import McpConnection
from shepherd.mcp.session import ToolSession
from tests.integration.test_mcp_servers import stdio_entry


def call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}}


class ScriptedModel:
    """Answers turn by turn from a script; records each body it was given."""

    def __init__(self, turns: list[list[dict[str, Any]]], stream: bool = False, preamble: str | None = None) -> None:
        self.turns, self.stream, self.bodies = turns, stream, []  # type: ignore[var-annotated]
        self.preamble = preamble  # text the model writes before its calls, in each turn that calls

    async def __call__(self, body: dict[str, Any]) -> Any:
        self.bodies.append(orjson.loads(orjson.dumps(body)))
        calls = self.turns[len(self.bodies) - 1] if len(self.bodies) <= len(self.turns) else []
        text = "done: " + " | ".join(m["content"] for m in body["messages"] if m.get("role") == "tool")
        if not self.stream:
            message = {"role": "assistant", "content": (self.preamble and f"{self.preamble} {len(self.bodies)}. ")
                       if calls else text}
            if calls:
                message["tool_calls"] = calls
            return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}
        return self._chunks(calls, text, len(self.bodies))

    async def _chunks(self, calls: list[dict[str, Any]], text: str, turn: int) -> AsyncIterator[dict[str, Any]]:
        base = {"id": f"chatcmpl-{turn}", "object": "chat.completion.chunk"}
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        if calls and self.preamble:
            yield {**base, "choices": [{"index": 0, "delta": {"content": f"{self.preamble} {turn}. "}}]}
        for i, c in enumerate(calls):
            args = c["function"]["arguments"]
            yield {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "id": c["id"], "type": "function", "function": {"name": c["function"]["name"],
                                                                             "arguments": args[:3]}}]}}]}
            yield {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "function": {"arguments": args[3:]}}]}}]}
        if not calls:
            yield {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}]}
        yield {**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}


async def session_for(**extra: Any) -> tuple[ToolSession, McpConnection]:
    conn = McpConnection(parse_mcp_config({"servers": [stdio_entry(call_timeout_secs=2, **extra)]}).servers[0], 300)
    session, failures = await ToolSession.build([("local", conn)], taken=["lookup"])
    assert not failures
    return session, conn


def test_parallel_calls_in_one_turn_and_failures_as_results() -> None:
    async def run() -> None:
        session, conn = await session_for()
        try:
            model = ScriptedModel([[call("c1", "rendezvous", {"parties": 2}), call("c2", "rendezvous", {"parties": 2}),
                                    call("c3", "explode", {}), call("c4", "sleep", {"seconds": 30}),
                                    {"id": "c5", "type": "function", "function": {"name": "add", "arguments": "[1"}}]])
            answer = await run_chat(model, {"model": "m", "messages": [{"role": "user", "content": "go"}]},
                                    session, 10)
            statuses = [(c["id"], c["status"]) for c in answer["mcp_calls"]]
            assert statuses == [("c1", "completed"), ("c2", "completed"), ("c3", "failed"), ("c4", "failed"),
                                ("c5", "failed")]
            assert "timed out" in answer["mcp_calls"][3]["error"]
            tool_messages = [m for m in model.bodies[1]["messages"] if m["role"] == "tool"]
            assert [m["tool_call_id"] for m in tool_messages] == ["c1", "c2", "c3", "c4", "c5"]
            assert tool_messages[2]["content"].startswith("Error:")
            assert [c["output"] for c in answer["mcp_calls"][:2]] == ["met", "met"]  # both ran at once
            assert answer["choices"][0]["message"]["content"].startswith(
                "done: met | met | Error: Error executing tool explode: tool failed: boom")
            assert answer["usage"]["prompt_tokens"] == 20
            offered = {t["function"]["name"] for t in model.bodies[0]["tools"]}
            assert {"add", "sleep", "explode"} <= offered
        finally:
            await conn.close()
    asyncio.run(run())


def test_max_tool_calls_bounds_the_loop_and_the_last_turn_gets_no_tools() -> None:
    async def run() -> None:
        session, conn = await session_for()
        try:
            forever = [[call(f"c{i}", "add", {"a": i, "b": 1})] for i in range(10)]
            model = ScriptedModel(forever)
            answer = await run_chat(model, {"model": "m", "messages": [{"role": "user", "content": "go"}]},
                                    session, 2)
            assert [c["status"] for c in answer["mcp_calls"]] == ["completed", "completed", "incomplete"]
            assert model.bodies[-1]["tool_choice"] == "none"
            assert len(model.bodies) == 3
            assert "tool_calls" not in answer["choices"][0]["message"]
        finally:
            await conn.close()
    asyncio.run(run())


def test_the_clients_calls_end_the_turn_and_names_do_not_clash() -> None:
    async def run() -> None:
        session, conn = await session_for()
        try:
            model = ScriptedModel([[call("c1", "add", {"a": 1, "b": 2}), call("c2", "lookup", {"q": "x"})]])
            answer = await run_chat(model, {"model": "m", "messages": [{"role": "user", "content": "go"}],
                                            "tools": [{"type": "function", "function": {"name": "lookup"}}]},
                                    session, 10)
            message = answer["choices"][0]["message"]
            assert [c["id"] for c in message["tool_calls"]] == ["c2"]
            assert answer["choices"][0]["finish_reason"] == "tool_calls"
            assert [c["output"] for c in answer["mcp_calls"]] == ["3"]
            assert len(model.bodies) == 1
        finally:
            await conn.close()
    asyncio.run(run())


def test_streamed_loop_passes_text_and_client_calls_only() -> None:
    async def run() -> None:
        session, conn = await session_for()
        try:
            model = ScriptedModel([[call("c1", "add", {"a": 1, "b": 2})],
                                   [call("c2", "weather", {"city": "Oslo"}), call("c3", "lookup", {"q": "y"})]],
                                  stream=True)
            chunks = [c async for c in stream_chat(
                model, {"model": "m", "messages": [{"role": "user", "content": "go"}], "stream": True,
                        "stream_options": {"include_usage": True},
                        "tools": [{"type": "function", "function": {"name": "lookup"}}]}, session, 10)]
            assert {c["id"] for c in chunks} == {"chatcmpl-1"}
            client_deltas = [tc for c in chunks if c["choices"]
                             for tc in c["choices"][0]["delta"].get("tool_calls", [])]
            assert {tc["index"] for tc in client_deltas} == {0}
            assert "".join(tc["function"].get("arguments", "") for tc in client_deltas) == '{"q":"y"}'
            reported = [i["name"] for c in chunks for i in c.get("mcp_calls", [])]
            assert reported == ["add", "weather"]
            finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]
                        and c["choices"][0].get("finish_reason")]
            assert finishes == ["tool_calls"]
            assert chunks[-1]["usage"]["prompt_tokens"] == 20
        finally:
            await conn.close()
    asyncio.run(run())


def test_a_whole_answer_has_the_text_of_every_turn_as_the_stream_does() -> None:
    async def run() -> None:
        session, conn = await session_for()
        try:
            turns = [[call("c1", "add", {"a": 1, "b": 2})], [call("c2", "add", {"a": 3, "b": 4})]]
            body = {"model": "m", "messages": [{"role": "user", "content": "go"}]}
            whole = await run_chat(ScriptedModel(turns, preamble="Adding"), body, session, 10)
            chunks = [c async for c in stream_chat(ScriptedModel(turns, stream=True, preamble="Adding"),
                                                   {**body, "stream": True}, session, 10)]
            streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            assert whole["choices"][0]["message"]["content"] == streamed == "Adding 1. Adding 2. done: 3 | 7"
            assert [i["name"] for i in whole["mcp_calls"]] == ["add", "add"]
        finally:
            await conn.close()
    asyncio.run(run())


def test_allow_and_deny_lists_shape_what_the_model_sees() -> None:
    async def run() -> None:
        session, conn = await session_for(allowed_tools=["add", "explode"], denied_tools=["explode"])
        try:
            assert [t["function"]["name"] for t in session.chat_tools()] == ["add"]
        finally:
            await conn.close()
    asyncio.run(run())


@pytest.mark.parametrize("bad", [
    {"servers": [{"name": "a", "protocol": "stdio"}]},
    {"servers": [{"name": "a", "protocol": "streamable", "url": "ftp://x"}]},
    {"servers": [{"name": "a", "protocol": "stdio", "command": "x", "colour": "blue"}]},
    {"servers": [{"name": "a", "protocol": "stdio", "command": "x"}, {"name": "a", "protocol": "stdio",
                                                                       "command": "y"}]},
    {"max_tool_calls": 0},
    {"request_servers": {"allow_private_networks": "yes"}},
])
def test_config_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(McpConfigError):
        parse_mcp_config(bad)
