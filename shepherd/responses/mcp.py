"""MCP tools on the Responses API: the request's servers as one tool session, run by the MCP tool
loop (shepherd/mcp/chat_loop.py, the same loop Chat Completions uses), and OpenAI's items for it.

A response starts with one `mcp_list_tools` item per server not listed earlier in its chain (with
`error` for a server that could not list its tools: the model goes on without them), then its
`mcp_call` items (output, or error: a tool's own error or a protocol failure), then the answer. A
call that needs approval is not run: the response ends with an `mcp_approval_request`, and a later
request with `previous_response_id` and an `mcp_approval_response` input item resumes it: the
approved call runs first (its mcp_call carries `approval_request_id`), a denied one is shown to the
model as a denied call; then the loop goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from shepherd.errors import GatewayError
from shepherd.mcp.chat_loop import CallsDone, CallsHeld, CallsStarting, LoopResult
from shepherd.mcp.session import McpCallRecord, ToolSession
from shepherd.responses.output import EventStream, turn_items
from shepherd.responses.request import ResponseRequest
from shepherd.storage.base import new_item_id


@dataclass
class McpRun:
    session: ToolSession
    limit: int  # MCP calls this response may run (the request's max_tool_calls, at most the config's)
    list_items: list[dict[str, Any]]
    resumed: list[dict[str, Any]]  # mcp_call items of the approved calls run before the model's turn
    _items: dict[str, dict[str, Any]] = field(default_factory=dict)  # record id -> its mcp_call item

    @property
    def spent(self) -> int:
        return len(self.resumed)

    def mcp_name(self, label: str, tool: str) -> str:
        return self.session.exposed_name(label, tool) or tool

    def call_item(self, record: McpCallRecord) -> dict[str, Any]:
        """The record's mcp_call item (the same item, updated, for every state of the call)."""
        item = self._items.get(record.id)
        if item is None:
            item = self._items[record.id] = {"id": new_item_id("mcp_call"), "type": "mcp_call"}
        item.update(mcp_call_item(record, item["id"]))
        return item

    def output(self, result: LoopResult) -> list[dict[str, Any]]:
        """The items of a whole response before the answer's own, in a stream's order: each turn's
        reasoning and text, then the calls it made."""
        items = [*self.list_items, *self.resumed]
        for step in result.steps:
            items += turn_items(step.reasoning, step.text)
            items += [self.call_item(r) for r in step.records]
        return [*items, *(approval_item(r) for r in result.held)]


def mcp_call_item(record: McpCallRecord, item_id: str, approval_request_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id, "type": "mcp_call", "server_label": record.server_label, "name": record.name,
            "arguments": record.arguments, "output": record.output, "error": _error(record),
            "status": record.status, "approval_request_id": approval_request_id}


def _error(record: McpCallRecord) -> dict[str, Any] | None:
    if record.error is None or record.status == "in_progress":
        return None
    if record.error_code is None and record.status == "failed":  # the tool's own error
        return {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": record.error}]}
    return {"type": "mcp_protocol_error", "code": record.error_code or -32000, "message": record.error}


def approval_item(record: McpCallRecord) -> dict[str, Any]:
    return {"id": new_item_id("mcp_approval_request"), "type": "mcp_approval_request",
            "server_label": record.server_label, "name": record.name, "arguments": record.arguments}


def _list_item(label: str, session: ToolSession, error: str | None) -> dict[str, Any]:
    tools = [{"name": t.name, "description": t.description, "input_schema": t.input_schema,
              "annotations": t.annotations} for t in session.listed.get(label, ())]
    return {"id": new_item_id("mcp_list_tools"), "type": "mcp_list_tools", "server_label": label, "tools": tools,
            "error": error}


async def prepare_mcp(context: Any, request: web.Request, parsed: ResponseRequest,
                      history: list[dict[str, Any]]) -> McpRun | None:
    """The request's MCP session (None without mcp tools); answers its approvals (running the approved calls)."""
    if not parsed.mcp_tools:
        if parsed.approvals:
            raise GatewayError(400, "invalid_value", "An mcp_approval_response needs its server's mcp tool in "
                               "'tools'", param="input")
        return None
    service = context.mcp_service()
    taken = [t["name"] for t in parsed.body.get("tools") or [] if t.get("type") == "function"]
    session, failures = await service.request_session(parsed.mcp_tools, taken)
    service.trace(context, request, session)
    errors = dict(failures)
    listed_before = {item.get("server_label") for item in history
                     if item.get("type") == "mcp_list_tools" and not item.get("error")}
    list_items = [_list_item(spec.label, session, errors.get(spec.label)) for spec in parsed.mcp_tools
                  if spec.label not in listed_before or spec.label in errors]
    configured = service.config.max_tool_calls
    limit = min(parsed.body.get("max_tool_calls") or configured, configured)
    resumed = await _answer_approvals(session, parsed.approvals, history)
    return McpRun(session, limit, list_items, resumed)


async def _answer_approvals(session: ToolSession, approvals: list[dict[str, Any]],
                            history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the approved calls (at once); the mcp_call items they make. A denied call makes no item."""
    requests = {item["id"]: item for item in history if item.get("type") == "mcp_approval_request"}
    answered = {item.get("approval_request_id") for item in history
                if item.get("type") in ("mcp_approval_response", "mcp_call")}
    approved: list[tuple[dict[str, Any], McpCallRecord]] = []
    for approval in approvals:
        request_id = approval["approval_request_id"]
        pending = requests.get(request_id)
        if pending is None:
            raise GatewayError(400, "invalid_value", f"No approval request '{request_id}' in the response chain",
                               param="input")
        if request_id in answered:
            raise GatewayError(400, "invalid_value", f"Approval request '{request_id}' was already answered",
                               param="input")
        answered.add(request_id)
        if not approval["approve"]:
            continue
        exposed = session.exposed_name(pending["server_label"], pending["name"])
        if exposed is None:
            record = McpCallRecord(request_id, pending["server_label"], pending["name"], pending["arguments"],
                                   status="failed", error_code=-32601,
                                   error=f"tool {pending['name']!r} is not offered by this request's mcp tools")
        else:
            record = session.record(request_id, exposed, pending["arguments"])
        approved.append((pending, record))
    await asyncio.gather(*(session.run(r) for _, r in approved if r.status == "in_progress"))
    return [mcp_call_item(record, new_item_id("mcp_call"), pending["id"]) for pending, record in approved]


async def mcp_events(run: McpRun, loop: AsyncIterable[Any], builder: EventStream) -> AsyncIterator[dict[str, Any]]:
    """The events of a streamed response with MCP tools, up to (not including) the builder's finish."""
    for item in run.list_items:
        for event in builder.list_tools(item):
            yield event
    for item in run.resumed:
        for event in [*builder.call_started(item), *builder.call_finished(item)]:
            yield event
    async for event in loop:
        if isinstance(event, dict):
            out = builder.feed(event)
        elif isinstance(event, CallsStarting):
            out = [e for r in event.records for e in builder.call_started(run.call_item(r))]
        elif isinstance(event, CallsDone):
            out = [e for r in event.records for e in builder.call_finished(run.call_item(r))]
        elif isinstance(event, CallsHeld):
            out = [e for r in event.records for e in builder.whole_item(approval_item(r))]
        for e in out:
            yield e
