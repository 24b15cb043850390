"""Anthropic Messages with `mcp_servers` (the MCP connector): the tool loop run by the gateway.

The request becomes a Chat Completions body (the providers' translation), the MCP tool loop
(chat_loop.py, the one every API uses) runs it through the normal router, and the answer goes back
as a Message (or its event stream) in which each call the gateway ran is an `mcp_tool_use` block
followed by its `mcp_tool_result` block, before the model's final content. Earlier turns' mcp blocks
that a client sends back are replayed to the model as the tool call and result they were.

Every named server must list its tools: one that cannot is a 502 `mcp_connection_failed` (there is
no block to report it in); after that, failures are `mcp_tool_result` blocks with `is_error`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

import orjson
from aiohttp import web

from shepherd.errors import GatewayError
from shepherd.mcp.chat_loop import CallsDone, run_loop, stream_loop
from shepherd.mcp.request_tools import McpToolRefused, parse_mcp_servers
from shepherd.mcp.session import McpCallRecord, ToolSession
from shepherd.routers.common.model_call import call_model
from shepherd.routers.common.sse import end_stream, send, start_sse
from shepherd.routers.external.translate.anthropic_to_openai import messages_request_to_chat
from shepherd.routers.external.translate.common import TranslationError
from shepherd.routers.external.translate.openai_to_anthropic import chat_completion_to_message, lenient_arguments
from shepherd.routers.external.translate.stream_openai_to_anthropic import ChatStreamToMessages

MCP_BLOCKS = frozenset({"mcp_tool_use", "mcp_tool_result"})


def use_id(record: McpCallRecord) -> str:
    return "mcptoolu_" + record.id.removeprefix("call_").removeprefix("toolu_")


def blocks(record: McpCallRecord) -> list[dict[str, Any]]:
    """A call the gateway ran, as Anthropic's pair of blocks."""
    text = record.output if record.error is None else record.error
    return [{"type": "mcp_tool_use", "id": use_id(record), "name": record.name, "server_name": record.server_label,
             "input": lenient_arguments(record.arguments)},
            {"type": "mcp_tool_result", "tool_use_id": use_id(record), "is_error": record.error is not None,
             "content": [{"type": "text", "text": text or ""}]}]


def _turn_blocks(reasoning: str | None, text: str | None) -> list[dict[str, Any]]:
    """What the model wrote in a turn before its calls, as a stream shows it."""
    out: list[dict[str, Any]] = []
    if reasoning:
        out.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if text:
        out.append({"type": "text", "text": text})
    return out


async def handle_messages(service: Any, context: Any, request: web.Request,
                          body: Mapping[str, Any]) -> web.StreamResponse:
    try:
        specs = parse_mcp_servers(body.get("mcp_servers"))
    except McpToolRefused as exc:
        raise GatewayError(400, "invalid_request_error", str(exc), param="mcp_servers") from None
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise GatewayError(400, "invalid_request_error", "'tools' must be a list", param="tools")
    if any(isinstance(t, dict) and t.get("type") == "mcp_toolset" for t in tools):
        raise GatewayError(400, "invalid_request_error", "mcp_toolset tools are not supported; configure each "
                           "server's tools in mcp_servers[].tool_configuration", param="tools")
    taken = [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    session, failures = await service.request_session(specs, taken)
    if failures:
        label, error = failures[0]
        raise GatewayError(502, "mcp_connection_failed", f"MCP server {label!r} could not list its tools: {error}")
    service.trace(context, request, session)
    model_name = str(body.get("model") or "")
    rest = {k: v for k, v in body.items() if k != "mcp_servers"}
    rest["messages"] = replayed(body.get("messages"), session)
    try:
        chat = messages_request_to_chat(rest, model_name)
    except TranslationError as exc:
        raise GatewayError(400, "invalid_request_error", exc.message, param=exc.param) from None
    stops = tuple(s for s in body.get("stop_sequences") or [] if isinstance(s, str))

    async def model(chat_body: dict[str, Any]) -> Any:
        return await call_model(context, request, chat_body)

    limit = service.config.max_tool_calls
    if not body.get("stream"):
        result = await run_loop(model, chat, session, limit)
        message = chat_completion_to_message(result.answer, stop_sequences=stops)
        ran = [b for step in result.steps
               for b in [*_turn_blocks(step.reasoning, step.text), *(b for r in step.records for b in blocks(r))]]
        content = [b for b in message["content"] if b != {"type": "text", "text": ""}] if ran else message["content"]
        return web.json_response({**message, "model": model_name, "content": [*ran, *content]},
                                 dumps=lambda v: orjson.dumps(v).decode())
    translator = ChatStreamToMessages(model=model_name, stop_sequences=stops)
    events = _frames(stream_loop(model, chat, session, limit), translator)
    try:
        first = await anext(events)  # an error before the first event is still a plain error answer
        response = await start_sse(request, {})
        await send(response, first)
        try:
            async for frame in events:
                await send(response, frame)
        except GatewayError as exc:  # mid-stream: the stream's own error event
            await send(response, translator.fail(exc.message))
    finally:
        await events.aclose()
    await end_stream(response)
    return response


async def _frames(loop: AsyncGenerator[Any, None], translator: ChatStreamToMessages) -> AsyncGenerator[bytes, None]:
    try:
        async for event in loop:
            if isinstance(event, dict):
                frames = translator.feed_chunk(event)
            elif isinstance(event, CallsDone):
                frames = b"".join(translator.whole_block(b) for r in event.records for b in blocks(r))
            else:
                continue
            if frames:
                yield frames
        yield translator.finish()
    finally:
        await loop.aclose()


def replayed(messages: Any, session: ToolSession) -> Any:
    """The conversation with earlier mcp_tool_use / mcp_tool_result blocks as the model saw them: a
    tool_use in the assistant's turn and a tool_result in a user turn after it."""
    if not isinstance(messages, list):
        return messages
    out: list[Any] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list) or message.get("role") != "assistant" or not any(
                isinstance(b, dict) and b.get("type") in MCP_BLOCKS for b in content):
            out.append(message)
            continue
        turn: list[Any] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "mcp_tool_use":
                name = session.exposed_name(str(block.get("server_name")), str(block.get("name")))
                turn.append({"type": "tool_use", "id": block.get("id"), "name": name or block.get("name"),
                             "input": block.get("input") or {}})
            elif kind == "mcp_tool_result":
                out.append({"role": "assistant", "content": turn})
                out.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.get("tool_use_id"),
                                                         "content": block.get("content"),
                                                         "is_error": bool(block.get("is_error"))}]})
                turn = []
            else:
                turn.append(block)
        if turn:
            out.append({"role": "assistant", "content": turn})
    return out
