"""The Responses side of the MCP loop over a scripted model and a real stdio MCP server: the event
stream across several turns, the max_tool_calls bound, calls held for approval, and chain replay."""

from __future__ import annotations

import asyncio
from typing import Any

from shepherd.mcp.chat_loop import run_loop, stream_loop
from shepherd.mcp.config import parse_mcp_config
from shepherd.mcp.connection import McpConnection
from shepherd.mcp.session import ToolSession
from shepherd.responses.mcp import McpRun, mcp_events
from shepherd.responses.output import EventStream, complete_from_chat
from shepherd.responses.request import ResponseRequest, items_to_messages
from tests.integration.test_mcp_servers import stdio_entry
from tests.unit.test_mcp_loop import ScriptedModel, call

ASK = {"model": "m", "messages": [{"role": "user", "content": "go"}], "stream_options": {"include_usage": True}}


async def run_session(needs_approval: frozenset[str] = frozenset()) -> tuple[ToolSession, McpConnection]:
    conn = McpConnection(parse_mcp_config({"servers": [stdio_entry(call_timeout_secs=5)]}).servers[0], 300)
    session, failures = await ToolSession.build([("local", conn)], [],
                                                approval={"local": lambda t: t.name in needs_approval})
    assert not failures
    return session, conn


def response() -> dict[str, Any]:
    return {"id": "resp_1", "status": "in_progress", "output": [], "usage": None}


def test_the_event_stream_over_turns_and_the_call_budget() -> None:
    async def run() -> None:
        session, conn = await run_session()
        try:
            model = ScriptedModel([[call("c1", "add", {"a": 1, "b": 1}), call("c2", "add", {"a": 2, "b": 2})],
                                   [call("c3", "add", {"a": 3, "b": 3})], [call("c4", "add", {"a": 4, "b": 4})]],
                                  stream=True)
            mcp = McpRun(session, limit=3, list_items=[], resumed=[])
            builder = EventStream(response())
            events = [e async for e in mcp_events(mcp, stream_loop(model, ASK, session, 3), builder)]
            events += builder.finish()
            output = builder.response["output"]
            assert [(i["type"], i.get("status")) for i in output] == [
                ("mcp_call", "completed"), ("mcp_call", "completed"), ("mcp_call", "completed"),
                ("mcp_call", "incomplete")]  # told to stop (tool_choice none), the model still called: not run
            assert [i.get("output") for i in output[:3]] == ["2", "4", "6"]
            assert output[3]["error"]["type"] == "mcp_protocol_error"  # the budget was spent: not run
            assert len(model.bodies) == 3 and model.bodies[2]["tool_choice"] == "none"
            kinds = [e["type"] for e in events]
            assert kinds.count("response.mcp_call.completed") == 3 and kinds.count("response.mcp_call.failed") == 1
            assert [e["sequence_number"] for e in events] == list(range(len(events)))
            done = [e["item"]["id"] for e in events if e["type"] == "response.output_item.done"]
            assert done == [i["id"] for i in output]  # every item added once and finished once
            assert builder.response["usage"]["input_tokens"] == 30  # summed over the three turns
        finally:
            await conn.close()
    asyncio.run(run())


def test_a_call_needing_approval_is_held_and_the_others_of_its_turn_run() -> None:
    async def run() -> None:
        session, conn = await run_session(needs_approval=frozenset({"weather"}))
        try:
            turns = [[call("c1", "add", {"a": 1, "b": 2}), call("c2", "weather", {"city": "Oslo"})]]
            result = await run_loop(ScriptedModel(turns), ASK, session, 10)
            assert [(r.name, r.status) for r in result.records] == [("add", "completed")]
            assert [(r.name, r.status) for r in result.held] == [("weather", "awaiting_approval")]
            mcp = McpRun(session, limit=10, list_items=[], resumed=[])
            output = mcp.output(result)
            assert [i["type"] for i in output] == ["mcp_call", "mcp_approval_request"]
            # The chain as a later request replays it: the call that ran, then the answered request.
            approval = output[1]
            denied = {"type": "mcp_approval_response", "approval_request_id": approval["id"], "approve": False}
            messages = items_to_messages([{"type": "message", "role": "user", "content": "go"}, *output, denied],
                                         mcp.mcp_name)
            assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
            assert [c["function"]["name"] for c in messages[1]["tool_calls"]] == ["add", "weather"]
            assert messages[3]["content"] == "Error: the user denied this tool call"
        finally:
            await conn.close()
    asyncio.run(run())


def test_max_tool_calls_is_the_requests_within_the_configs() -> None:
    parsed = ResponseRequest.parse({"model": "m", "input": "hi", "max_tool_calls": 2,
                                    "tools": [{"type": "mcp", "server_label": "a", "server_url": "https://x/mcp",
                                               "allowed_tools": {"read_only": True},
                                               "require_approval": {"always": {"tool_names": ["rm"]}}}]})
    spec = parsed.mcp_tools[0]
    assert spec.exposes("anything", read_only=True) and not spec.exposes("anything", read_only=False)
    assert spec.approval.required("rm", False) and not spec.approval.required("ls", False)
    assert parsed.chat_body([], False).get("tools") is None  # the mcp entry is not a function for the model


def _texts_and_calls(output: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(i["type"], i["content"][0]["text"] if i["type"] == "message" else i["output"]) for i in output]


def test_a_whole_response_keeps_the_text_of_every_turn_in_a_streams_order() -> None:
    """What the model wrote before its calls is an item of its own before them, streamed or not."""
    async def run() -> None:
        session, conn = await run_session()
        try:
            turns = [[call("c1", "add", {"a": 1, "b": 1})], [call("c2", "add", {"a": 2, "b": 2})]]
            streamed_model = ScriptedModel(turns, stream=True, preamble="Adding")
            builder = EventStream(response())
            mcp = McpRun(session, limit=5, list_items=[], resumed=[])
            [e async for e in mcp_events(mcp, stream_loop(streamed_model, ASK, session, 5), builder)]
            builder.finish()
            streamed = _texts_and_calls(builder.response["output"])

            result = await run_loop(ScriptedModel(turns, preamble="Adding"), ASK, session, 5)
            whole = McpRun(session, limit=5, list_items=[], resumed=[]).output(result)
            whole += [i for i in complete_from_chat(response(), result.answer)["output"]]
            assert _texts_and_calls(whole) == streamed == [
                ("message", "Adding 1. "), ("mcp_call", "2"), ("message", "Adding 2. "), ("mcp_call", "4"),
                ("message", "done: 2 | 4")]
        finally:
            await conn.close()
    asyncio.run(run())
