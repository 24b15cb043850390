"""One live connection to one MCP server, through the official SDK.

The SDK's transports and session are anyio context managers that must be entered and left in one
task, so each connection owns a task that holds them open until closed. Calls come from request
tasks. When a call finds the connection gone (a restarted server, a dropped stream), the connection
is rebuilt once and the call retried; a tool's own error is never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import mcp_types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from shepherd.mcp.config import ServerSpec

log = logging.getLogger(__name__)

_TRANSPORT_ERRORS = (OSError, EOFError, httpx2.HTTPError, ConnectionError)


class McpUnavailable(Exception):
    """The server cannot be reached (connect failed, or the connection broke and did not come back)."""


@dataclass(frozen=True)
class ToolInfo:
    name: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None = None  # the server's hints (readOnlyHint, destructiveHint, ...)

    @property
    def read_only(self) -> bool:
        return bool((self.annotations or {}).get("readOnlyHint"))


@dataclass(frozen=True)
class ToolResult:
    text: str
    is_error: bool


class McpConnection:
    def __init__(self, spec: ServerSpec, tool_list_ttl_secs: float) -> None:
        self.spec = spec
        self._ttl = tool_list_ttl_secs
        self._session: ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._lock = asyncio.Lock()  # one (re)connect at a time
        self._tools: tuple[ToolInfo, ...] | None = None
        self._tools_at = 0.0
        self.generation = 0  # bumped on every new session; a failed call reconnects only its own

    @property
    def connected(self) -> bool:
        return self._session is not None and self._runner is not None and not self._runner.done()

    async def connect(self) -> ClientSession:
        async with self._lock:
            if self.connected and self._session is not None:
                return self._session
            await self._shutdown()
            ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._runner = asyncio.create_task(self._hold(ready, self._stop), name=f"mcp:{self.spec.name}")
            try:
                session = await asyncio.wait_for(asyncio.shield(ready), self.spec.connect_timeout_secs)
            except (TimeoutError, Exception) as exc:
                await self._shutdown()
                raise McpUnavailable(f"MCP server {self.spec.name!r} unreachable: {_describe(exc)}") from exc
            self._session, self._tools = session, None
            self.generation += 1
            return session

    async def _hold(self, ready: asyncio.Future[ClientSession], stop: asyncio.Event) -> None:
        try:
            async with self._open() as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                ready.set_result(session)
                await stop.wait()
        except BaseException as exc:  # the session ended: report it to a waiting connect, else log it
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else McpUnavailable("cancelled"))
            elif not isinstance(exc, asyncio.CancelledError):
                log.info("MCP server %r connection ended: %s", self.spec.name, _describe(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _open(self) -> contextlib.AbstractAsyncContextManager[Any]:
        spec = self.spec
        if spec.transport == "stdio":
            assert spec.command is not None
            params = StdioServerParameters(
                command=sys.executable,
                args=["-m", "shepherd.mcp.child", str(os.getpid()), spec.command, *spec.args],
                env=dict(spec.env))
            return stdio_client(params)
        assert spec.url is not None
        timeout = httpx2.Timeout(spec.connect_timeout_secs, read=max(spec.call_timeout_secs, 300.0))
        if spec.transport == "sse":
            return sse_client(spec.url, headers=dict(spec.headers), timeout=spec.connect_timeout_secs)
        return _streamable(spec.url, create_mcp_http_client(headers=dict(spec.headers), timeout=timeout))

    async def tools(self, refresh: bool = False) -> tuple[ToolInfo, ...]:
        """The server's tools the config lets through; cached for the TTL and re-read after a reconnect."""
        if not refresh and self._tools is not None and time.monotonic() - self._tools_at < self._ttl \
                and self.connected:
            return self._tools
        listed = await self._with_reconnect(self._list_all)
        self._tools = tuple(t for t in listed if self.spec.exposes(t.name))
        self._tools_at = time.monotonic()
        return self._tools

    async def _list_all(self, session: ClientSession) -> list[ToolInfo]:
        found: list[ToolInfo] = []
        cursor: str | None = None
        for _ in range(100):  # a server that pages forever cannot hold us
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await asyncio.wait_for(session.list_tools(params=params), self.spec.call_timeout_secs)
            found.extend(ToolInfo(t.name, t.description or "", dict(t.input_schema or {"type": "object"}),
                                  t.annotations.model_dump(exclude_none=True, by_alias=True) if t.annotations else None)
                         for t in page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        return found

    async def call(self, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """Run one tool. A tool's failure is a ToolResult with is_error; raises McpUnavailable or TimeoutError."""
        limit = self.spec.call_timeout_secs

        async def run(session: ClientSession) -> ToolResult:
            try:
                result = await asyncio.wait_for(
                    session.call_tool(tool, arguments, read_timeout_seconds=limit), limit + 1.0)
            except MCPError as exc:
                if exc.code == mcp_types.REQUEST_TIMEOUT:
                    raise TimeoutError(f"tool {tool!r} timed out after {limit:g}s") from exc
                if _session_lost(exc):
                    raise
                return ToolResult(f"MCP error {exc.code}: {exc.message}", True)
            if not isinstance(result, mcp_types.CallToolResult):
                return ToolResult("the server asked for input the gateway cannot give", True)
            return ToolResult(_result_text(result), bool(result.is_error))

        return await self._with_reconnect(run)

    async def _with_reconnect(self, op: Any) -> Any:
        session = await self.connect()
        generation = self.generation
        try:
            return await op(session)
        except TimeoutError:  # an OSError, but the server is there: the call was just slow
            raise
        except MCPError as exc:
            if not _session_lost(exc):
                raise McpUnavailable(f"MCP server {self.spec.name!r}: {exc.message}") from exc
        except _TRANSPORT_ERRORS:
            pass
        # The connection broke under us: rebuild it (unless another caller already did) and retry once.
        async with self._lock:
            if self.generation == generation:
                await self._shutdown()
        try:
            return await op(await self.connect())
        except TimeoutError:
            raise
        except MCPError as exc:
            raise McpUnavailable(f"MCP server {self.spec.name!r}: {exc.message}") from exc
        except _TRANSPORT_ERRORS as exc:
            await self._shutdown()
            raise McpUnavailable(f"MCP server {self.spec.name!r}: {_describe(exc)}") from exc

    async def _shutdown(self) -> None:
        runner, stop = self._runner, self._stop
        self._session, self._runner, self._stop = None, None, None
        if runner is None:
            return
        if stop is not None:
            stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(runner), 5.0)
        except (TimeoutError, Exception):
            runner.cancel()
            with contextlib.suppress(BaseException):
                await runner

    async def close(self) -> None:
        async with self._lock:
            await self._shutdown()


@contextlib.asynccontextmanager
async def _streamable(url: str, client: httpx2.AsyncClient) -> AsyncIterator[Any]:
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams


def _result_text(result: mcp_types.CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        else:
            parts.append(block.model_dump_json(exclude_none=True))
    if not parts and result.structured_content is not None:
        import orjson
        return orjson.dumps(result.structured_content).decode()
    return "\n".join(parts)


def _session_lost(exc: MCPError) -> bool:
    """The connection is gone (closed, or a restarted HTTP server that no longer knows our session)."""
    return exc.code == mcp_types.CONNECTION_CLOSED or (
        exc.code == mcp_types.INVALID_REQUEST and "session not found" in exc.message.lower())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
