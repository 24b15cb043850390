"""A small MCP server built with the official SDK, runnable over stdio, SSE or streamable HTTP.

Tests and the benchmark start it as a real process: `python -m shepherd.testing.mcp_server stdio`
or `... sse PORT` / `... streamable PORT`. Its tools cover what a tool loop meets: a plain answer
(`add`, `weather`), a tool that raises (`explode`), one that outlasts any sane timeout (`sleep`), and
two that report what reached the server (`seen_headers` over HTTP, `seen_env` over stdio), so a test
can prove no key leaked.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("shepherd-test")


READ_ONLY = ToolAnnotations(read_only_hint=True)


@server.tool(description="Add two integers.", annotations=READ_ONLY)
def add(a: int, b: int) -> str:
    return str(a + b)


@server.tool(description="Current weather in a city.", annotations=READ_ONLY)
def weather(city: str) -> str:
    return f"sunny, 21C in {city}"


@server.tool(description="Always fails.")
def explode(reason: str = "boom") -> str:
    raise ToolError(f"tool failed: {reason}")


@server.tool(description="Sleep for some seconds, then answer.")
async def sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


_arrived: list[int] = []
_all_here = asyncio.Event()


@server.tool(description="Wait (up to 5 s) until `parties` calls of this tool are running at once.")
async def rendezvous(parties: int) -> str:
    _arrived.append(1)
    if len(_arrived) >= parties:
        _all_here.set()
    try:
        await asyncio.wait_for(_all_here.wait(), 5)
    except TimeoutError:
        return "alone"
    return "met"


@server.tool(description="The HTTP request headers this server received (lower-cased names).")
def seen_headers(ctx: Context) -> dict[str, Any]:
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    return {"headers": {k.lower(): v for k, v in headers.items()} if headers is not None else {}}


@server.tool(description="The environment variables of this server process.")
def seen_env() -> dict[str, Any]:
    return {"env": dict(os.environ)}


@server.tool(description="The process id of this server.")
def pid() -> str:
    return str(os.getpid())


def main(argv: list[str]) -> None:
    transport = argv[0] if argv else "stdio"
    if transport == "stdio":
        server.run("stdio")
    elif transport == "sse":
        server.run("sse", host="127.0.0.1", port=int(argv[1]))
    elif transport == "streamable":
        server.run("streamable-http", host="127.0.0.1", port=int(argv[1]))
    else:
        raise SystemExit(f"unknown transport {transport!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
