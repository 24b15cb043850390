"""What the API layer uses: the MCP pool, per-call metrics and traces, and the Chat Completions loop.

Metric labels stay bounded: the server label of a configured server, `request` for every per-request
server, and tool names only while fewer than MAX_TOOL_LABELS were seen (then `other`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from aiohttp import web

from shepherd.config import ConfigError
from shepherd.errors import GatewayError
from shepherd.mcp.chat_loop import run_chat, stream_chat
from shepherd.mcp.config import McpConfig
from shepherd.mcp.connection import McpUnavailable, ToolInfo
from shepherd.mcp.pool import McpPool, McpUrlRefused
from shepherd.mcp.request_tools import McpToolSpec
from shepherd.mcp.session import ToolSession
from shepherd.observability.metrics import Metrics
from shepherd.observability.tracing import SpanKind
from shepherd.request_keys import SPAN
from shepherd.routers.common.model_call import call_model
from shepherd.routers.common.sse import (
    DONE_FRAME,
    ClientGone,
    data_frame,
    end_stream,
    send,
    start_sse,
    stream_error_frame,
)

log = logging.getLogger(__name__)
logging.getLogger("httpx2").setLevel(logging.WARNING)  # the SDK's client logs every MCP request at INFO

MAX_TOOL_LABELS = 256


class McpService:
    def __init__(self, config: McpConfig, metrics: Metrics | None) -> None:
        self.config = config
        self.pool = McpPool(config)
        self._metrics = metrics
        self._tool_labels: set[str] = set()

    async def start(self) -> None:
        try:
            await self.pool.start()
        except McpUnavailable as exc:
            await self.pool.close()
            raise ConfigError(str(exc)) from exc

    async def close(self) -> None:
        await self.pool.close()

    def observe(self, server: str, tool: str, status: str, seconds: float) -> None:
        log.info("mcp call server=%s tool=%s status=%s duration_ms=%.1f", server, tool, status, seconds * 1000)
        if self._metrics is None:
            return
        server_label = server if server in self.pool.static else "request"
        tool_label = tool
        if tool not in self._tool_labels:
            if len(self._tool_labels) < MAX_TOOL_LABELS:
                self._tool_labels.add(tool)
            else:
                tool_label = "other"
        self._metrics.mcp_calls(server_label, tool_label, status).inc()
        self._metrics.mcp_duration(server_label, tool_label).observe(seconds)

    async def chat_session(self, body: Mapping[str, Any]) -> ToolSession:
        taken = [t.get("function", {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
        session, failures = await ToolSession.build(self.pool.static.items(), [n for n in taken if n],
                                                    self.observe)
        for label, error in failures:
            log.warning("MCP server %r offers no tools to this request: %s", label, error)
        return session

    async def request_session(self, specs: list[McpToolSpec], taken: list[str],
                              ) -> tuple[ToolSession, list[tuple[str, str]]]:
        """The session of a request that names its MCP servers (Responses `mcp` tools, Messages
        `mcp_servers`), and the (label, error) of those that could not list their tools.
        A refused entry (unknown label, refused URL, too many servers) is a 400."""
        try:
            servers = await self.pool.for_request(specs)
        except McpUrlRefused as exc:
            raise GatewayError(400, "mcp_server_refused", str(exc), param="tools") from None
        return await ToolSession.build(
            [(spec.label, connection) for spec, connection in servers], taken, self.observe,
            select={spec.label: _check(spec.exposes) for spec, _ in servers},
            approval={spec.label: _check(spec.approval.required) for spec, _ in servers})

    @staticmethod
    def trace(context: Any, request: web.Request, session: ToolSession) -> None:
        """With tracing on, each of the session's calls is a client span under the request's."""
        parent = request.get(SPAN)
        tracing = context.tracing
        if tracing is None or parent is None:
            return

        def start_span(server: str, tool: str) -> Any:
            span = tracing.start_child(parent, f"mcp.call {tool}", SpanKind.CLIENT)
            span.set_attribute("mcp.server", server)
            span.set_attribute("mcp.tool", tool)
            return span
        session.start_span = start_span

    async def handle_messages(self, context: Any, request: web.Request, body: Mapping[str, Any]
                              ) -> web.StreamResponse:
        """Anthropic Messages with `mcp_servers` (shepherd/mcp/messages.py)."""
        from shepherd.mcp.messages import handle_messages
        return await handle_messages(self, context, request, body)

    async def handle_chat(self, context: Any, request: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
        """Chat Completions with the configured servers' tools run by the gateway."""
        if body.get("n") not in (None, 1):
            raise GatewayError(400, "invalid_value", "'n' must be 1 when MCP tools are offered", param="n")
        if not isinstance(body.get("messages"), list):
            raise GatewayError(400, "invalid_type", "'messages' must be a list", param="messages")
        session = await self.chat_session(body)
        self.trace(context, request, session)

        async def model(chat_body: dict[str, Any]) -> Any:
            return await call_model(context, request, chat_body)

        limit = self.config.max_tool_calls
        if not body.get("stream"):
            return web.json_response(await run_chat(model, body, session, limit), dumps=_dumps)
        chunks = stream_chat(model, body, session, limit)
        try:
            first = await anext(chunks)  # an error before the first chunk is still a plain error answer
        except StopAsyncIteration:
            first = None
        response = await start_sse(request, {})
        try:
            if first is not None:
                await send(response, data_frame(first))
            await _relay(response, chunks)
        except ClientGone:
            await chunks.aclose()
            raise
        except GatewayError as exc:
            await end_stream(response, stream_error_frame("openai", exc.message, code=exc.code))
            return response
        await end_stream(response, DONE_FRAME)
        return response


async def _relay(response: web.StreamResponse, chunks: AsyncGenerator[dict[str, Any], None]) -> None:
    async for chunk in chunks:
        await send(response, data_frame(chunk))


def _check(rule: Callable[[str, bool], bool]) -> Callable[[ToolInfo], bool]:
    return lambda tool: rule(tool.name, tool.read_only)


def _dumps(value: Any) -> str:
    import orjson
    return orjson.dumps(value).decode()
