"""The MCP tools one request may use, under the names the model sees, and how one call is run.

A name that is unique keeps the tool's own name; one that clashes (with the client's own tools or
another server's) becomes `mcp_<label>_<tool>`. A call to a name outside the session is never sent
to any server. Every failure (bad arguments, a tool's error, a timeout, an unreachable server)
becomes a failed call record whose text the model gets as the tool result: nothing here raises.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from mcp.types import CONNECTION_CLOSED, INVALID_PARAMS, REQUEST_TIMEOUT

from shepherd.mcp.connection import McpConnection, McpUnavailable, ToolInfo

Observe = Callable[[str, str, str, float], None]  # (server label, tool, status, seconds)
StartSpan = Callable[[str, str], Any]  # (server label, tool) -> an OpenTelemetry span, ended after the call


@dataclass(frozen=True)
class ToolBinding:
    exposed: str
    label: str
    tool: ToolInfo
    connection: McpConnection
    needs_approval: bool = False  # the client must approve each call first (Responses require_approval)


@dataclass
class McpCallRecord:
    id: str
    server_label: str
    name: str
    arguments: str
    output: str | None = None
    error: str | None = None
    # completed | failed | incomplete (not run: the call budget was spent) | in_progress (running)
    # | awaiting_approval (held for the client's approval)
    status: str = "completed"
    error_code: int | None = None  # a protocol failure's JSON-RPC code (None with an error: the tool's own)
    exposed: str = ""  # the name the model called

    def as_item(self) -> dict[str, Any]:
        return {"id": self.id, "type": "mcp_call", "server_label": self.server_label, "name": self.name,
                "arguments": self.arguments, "output": self.output, "error": self.error, "status": self.status}

    @property
    def model_text(self) -> str:
        """What the model reads as this call's result."""
        if self.error is not None:
            return f"Error: {self.error}"
        return self.output or ""


ToolCheck = Callable[[ToolInfo], bool]


@dataclass
class ToolSession:
    bindings: dict[str, ToolBinding] = field(default_factory=dict)
    observe: Observe | None = None
    start_span: StartSpan | None = None
    listed: dict[str, tuple[ToolInfo, ...]] = field(default_factory=dict)  # label -> the tools it offers here

    @classmethod
    async def build(cls, servers: Iterable[tuple[str, McpConnection]], taken: Iterable[str],
                    observe: Observe | None = None, select: Mapping[str, ToolCheck] | None = None,
                    approval: Mapping[str, ToolCheck] | None = None,
                    ) -> tuple[ToolSession, list[tuple[str, str]]]:
        """Bindings for every reachable server's tools (only those `select[label]` accepts, where given:
        a request's own narrowing of what its config allows; `approval[label]` says which need the
        client's approval); also the (label, error) of those unreachable."""
        servers = list(servers)
        gathered = await asyncio.gather(*(c.tools() for _, c in servers), return_exceptions=True)
        chosen, asks = select or {}, approval or {}
        listed = [tools if isinstance(tools, BaseException) or label not in chosen
                  else tuple(t for t in tools if chosen[label](t))
                  for (label, _), tools in zip(servers, gathered, strict=True)]
        session, failures = cls(observe=observe), []
        used = set(taken)
        counts: dict[str, int] = {}
        for tools in listed:
            if not isinstance(tools, BaseException):
                for tool in tools:
                    counts[tool.name] = counts.get(tool.name, 0) + 1
        for (label, connection), tools in zip(servers, listed, strict=True):
            if isinstance(tools, BaseException):
                failures.append((label, str(tools) or type(tools).__name__))
                continue
            session.listed[label] = tools
            for tool in tools:
                name = tool.name if counts[tool.name] == 1 and tool.name not in used else _qualified(label, tool.name)
                base, n = name, 0
                while name in used:
                    n += 1
                    name = f"{base}_{n}"
                used.add(name)
                needs = label in asks and asks[label](tool)
                session.bindings[name] = ToolBinding(name, label, tool, connection, needs)
        return session, failures

    def exposed_name(self, label: str, tool: str) -> str | None:
        """The name the model sees for a server's tool (None: not in this session)."""
        return next((b.exposed for b in self.bindings.values() if b.label == label and b.tool.name == tool), None)

    def needs_approval(self, name: str) -> bool:
        return self.bindings[name].needs_approval

    def __contains__(self, name: object) -> bool:
        return name in self.bindings

    def chat_tools(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {"name": b.exposed, "description": b.tool.description,
                                                  "parameters": b.tool.input_schema}}
                for b in self.bindings.values()]

    def record(self, call_id: str, name: str, arguments: str, status: str = "in_progress") -> McpCallRecord:
        """The record of a call to `name` (one of the session's), not run yet."""
        binding = self.bindings[name]
        return McpCallRecord(call_id, binding.label, binding.tool.name, arguments, status=status, exposed=name)

    async def execute(self, call_id: str, name: str, arguments: str) -> McpCallRecord:
        return await self.run(self.record(call_id, name, arguments))

    async def run(self, record: McpCallRecord) -> McpCallRecord:
        """Run a recorded call; the record is filled in (and returned)."""
        binding = self.bindings[record.exposed]
        record.status = "completed"
        span = self.start_span(binding.label, binding.tool.name) if self.start_span is not None else None
        try:
            return await self._execute(binding, record)
        finally:
            if span is not None:
                span.set_attribute("mcp.status", record.status)
                span.end()

    async def _execute(self, binding: ToolBinding, record: McpCallRecord) -> McpCallRecord:
        arguments = record.arguments
        started = time.perf_counter()
        try:
            parsed = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            record.status, record.error = "failed", "the arguments are not a JSON object"
            record.error_code = INVALID_PARAMS
            self._observe(binding, "invalid_arguments", started)
            return record
        try:
            result = await binding.connection.call(binding.tool.name, parsed)
        except TimeoutError as exc:
            record.status, record.error = "failed", str(exc) or "the tool call timed out"
            record.error_code = REQUEST_TIMEOUT
            self._observe(binding, "timeout", started)
        except McpUnavailable as exc:
            record.status, record.error, record.error_code = "failed", str(exc), CONNECTION_CLOSED
            self._observe(binding, "unavailable", started)
        else:
            if result.is_error:
                record.status, record.error = "failed", result.text or "the tool failed"
                self._observe(binding, "tool_error", started)
            else:
                record.output = result.text
                self._observe(binding, "success", started)
        return record

    def _observe(self, binding: ToolBinding, status: str, started: float) -> None:
        if self.observe is not None:
            self.observe(binding.label, binding.tool.name, status, time.perf_counter() - started)


def _qualified(label: str, tool: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"mcp_{label}_{tool}")[:64]
