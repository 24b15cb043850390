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

from shepherd.mcp.connection import McpConnection, McpUnavailable, ToolInfo

Observe = Callable[[str, str, str, float], None]  # (server label, tool, status, seconds)
StartSpan = Callable[[str, str], Any]  # (server label, tool) -> an OpenTelemetry span, ended after the call


@dataclass(frozen=True)
class ToolBinding:
    exposed: str
    label: str
    tool: ToolInfo
    connection: McpConnection


@dataclass
class McpCallRecord:
    id: str
    server_label: str
    name: str
    arguments: str
    output: str | None = None
    error: str | None = None
    status: str = "completed"  # completed | failed | incomplete (not run: the call budget was spent)

    def as_item(self) -> dict[str, Any]:
        return {"id": self.id, "type": "mcp_call", "server_label": self.server_label, "name": self.name,
                "arguments": self.arguments, "output": self.output, "error": self.error, "status": self.status}

    @property
    def model_text(self) -> str:
        """What the model reads as this call's result."""
        if self.error is not None:
            return f"Error: {self.error}"
        return self.output or ""


@dataclass
class ToolSession:
    bindings: dict[str, ToolBinding] = field(default_factory=dict)
    observe: Observe | None = None
    start_span: StartSpan | None = None

    @classmethod
    async def build(cls, servers: Iterable[tuple[str, McpConnection]], taken: Iterable[str],
                    observe: Observe | None = None, allowed: Mapping[str, frozenset[str] | None] | None = None,
                    ) -> tuple[ToolSession, list[tuple[str, str]]]:
        """Bindings for every reachable server's tools (only `allowed[label]` where given: a request's
        own narrowing of what its config allows); also the (label, error) of those unreachable."""
        servers = list(servers)
        gathered = await asyncio.gather(*(c.tools() for _, c in servers), return_exceptions=True)
        limits = allowed or {}
        listed = [tools if isinstance(tools, BaseException) or limits.get(label) is None
                  else tuple(t for t in tools if t.name in (limits[label] or ()))
                  for (label, _), tools in zip(servers, gathered, strict=True)]
        session, failures = cls(observe=observe), []
        used = set(taken)
        counts: dict[str, int] = {}
        for (_, _), tools in zip(servers, listed, strict=True):
            if not isinstance(tools, BaseException):
                for tool in tools:
                    counts[tool.name] = counts.get(tool.name, 0) + 1
        for (label, connection), tools in zip(servers, listed, strict=True):
            if isinstance(tools, BaseException):
                failures.append((label, str(tools) or type(tools).__name__))
                continue
            for tool in tools:
                name = tool.name if counts[tool.name] == 1 and tool.name not in used else _qualified(label, tool.name)
                base, n = name, 0
                while name in used:
                    n += 1
                    name = f"{base}_{n}"
                used.add(name)
                session.bindings[name] = ToolBinding(name, label, tool, connection)
        return session, failures

    def __contains__(self, name: object) -> bool:
        return name in self.bindings

    def chat_tools(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {"name": b.exposed, "description": b.tool.description,
                                                  "parameters": b.tool.input_schema}}
                for b in self.bindings.values()]

    async def execute(self, call_id: str, name: str, arguments: str) -> McpCallRecord:
        binding = self.bindings[name]
        record = McpCallRecord(call_id, binding.label, binding.tool.name, arguments)
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
            self._observe(binding, "invalid_arguments", started)
            return record
        try:
            result = await binding.connection.call(binding.tool.name, parsed)
        except TimeoutError as exc:
            record.status, record.error = "failed", str(exc) or "the tool call timed out"
            self._observe(binding, "timeout", started)
        except McpUnavailable as exc:
            record.status, record.error = "failed", str(exc)
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
