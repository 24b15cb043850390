"""MCP connections through the official SDK against real servers started here: the SDK-built test
server over stdio, SSE and streamable HTTP, and the published mcp-server-time over stdio."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shepherd.mcp.config import parse_mcp_config
from shepherd.mcp.connection import McpConnection, McpUnavailable
from shepherd.mcp.pool import McpPool, McpUrlRefused, check_url
from shepherd.mcp.request_tools import parse_mcp_tools
from shepherd.testing import free_ports, wait_until

ROOT = str(Path(__file__).resolve().parents[2])


def stdio_entry(name: str = "local", **extra: object) -> dict[str, object]:
    return {"name": name, "protocol": "stdio", "command": sys.executable,
            "args": ["-m", "shepherd.testing.mcp_server", "stdio"], "env": {"PYTHONPATH": ROOT},
            "connect_timeout_secs": 60, **extra}  # a loaded test machine starts Python slowly


class HttpServer:
    def __init__(self, transport: str, port: int | None = None) -> None:
        self.transport = transport
        self.port = port or free_ports(1)[0]
        self.proc = subprocess.Popen([sys.executable, "-m", "shepherd.testing.mcp_server", transport, str(self.port)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._listening, 20, message=f"MCP {transport} server on {self.port}")

    def _listening(self) -> bool:
        assert self.proc.poll() is None, "the MCP server exited"
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}" + ("/sse" if self.transport == "sse" else "/mcp")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(params=["sse", "streamable"])
def http_server(request: pytest.FixtureRequest) -> Iterator[HttpServer]:
    server = HttpServer(request.param)
    yield server
    server.stop()


def connection(entry: dict[str, object]) -> McpConnection:
    return McpConnection(parse_mcp_config({"servers": [entry]}).servers[0], 300)


async def exercise(conn: McpConnection) -> None:
    names = {t.name for t in await conn.tools()}
    assert {"add", "explode", "sleep"} <= names
    assert (await conn.call("add", {"a": 2, "b": 3})).text == "5"
    failed = await conn.call("explode", {})
    assert failed.is_error and "explode" in failed.text
    with pytest.raises(TimeoutError):
        await conn.call("sleep", {"seconds": 30})
    assert (await conn.call("add", {"a": 1, "b": 1})).text == "2"  # the connection survived the timeout


def test_stdio_server_calls_errors_timeouts_and_restart() -> None:
    async def run() -> None:
        conn = connection(stdio_entry(call_timeout_secs=4))
        try:
            await exercise(conn)
            pid = int((await conn.call("pid", {})).text)
            os.kill(pid, signal.SIGKILL)  # the server dies under an open connection
            wait_until(lambda: _gone(pid), 5)
            assert (await conn.call("add", {"a": 4, "b": 4})).text == "8"  # reconnected, retried
            assert int((await conn.call("pid", {})).text) != pid
        finally:
            await conn.close()
        assert _gone(pid)
    asyncio.run(run())


def _gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return True


def test_http_servers_calls_errors_timeouts_and_restart(http_server: HttpServer) -> None:
    async def run() -> None:
        conn = connection({"name": "remote", "protocol": http_server.transport, "url": http_server.url,
                           "call_timeout_secs": 4})
        try:
            await exercise(conn)
            port = http_server.port
            http_server.stop()
            restarted = HttpServer(http_server.transport, port)
            http_server.proc = restarted.proc  # the fixture stops the new one
            assert (await conn.call("add", {"a": 5, "b": 5})).text == "10"
        finally:
            await conn.close()
    asyncio.run(run())


def test_headers_from_config_reach_the_server_and_nothing_else(http_server: HttpServer) -> None:
    async def run() -> None:
        conn = connection({"name": "remote", "protocol": http_server.transport, "url": http_server.url,
                           "token": "server-token", "headers": {"X-Extra": "yes"}})
        try:
            import orjson
            seen = orjson.loads((await conn.call("seen_headers", {})).text)["headers"]
        finally:
            await conn.close()
        assert seen["authorization"] == "Bearer server-token"
        assert seen["x-extra"] == "yes"
    asyncio.run(run())


def test_unreachable_server_is_reported_not_hung() -> None:
    async def run() -> None:
        port = free_ports(1)[0]
        conn = connection({"name": "gone", "protocol": "streamable", "url": f"http://127.0.0.1:{port}/mcp",
                           "connect_timeout_secs": 2})
        with pytest.raises(McpUnavailable):
            await conn.tools()
        bad = connection({"name": "bad", "protocol": "stdio", "command": "/nonexistent/mcp-server"})
        with pytest.raises(McpUnavailable):
            await bad.tools()
    asyncio.run(run())


def test_stdio_server_gets_its_own_env_not_the_gateways() -> None:
    async def run() -> None:
        os.environ["SHEPHERD_TEST_SECRET"] = "gateway-secret"
        conn = connection(stdio_entry(env={"PYTHONPATH": ROOT, "GIVEN": "1"}))
        try:
            import orjson
            env = orjson.loads((await conn.call("seen_env", {})).text)["env"]
        finally:
            await conn.close()
            del os.environ["SHEPHERD_TEST_SECRET"]
        assert env["GIVEN"] == "1"
        assert "SHEPHERD_TEST_SECRET" not in env
    asyncio.run(run())


def test_published_mcp_server_time_over_stdio() -> None:
    async def run() -> None:
        exe = Path(sys.executable).with_name("mcp-server-time")
        conn = connection({"name": "time", "protocol": "stdio", "command": str(exe),
                           "args": ["--local-timezone", "UTC"]})
        try:
            names = {t.name for t in await conn.tools()}
            assert "get_current_time" in names
            result = await conn.call("get_current_time", {"timezone": "Europe/Paris"})
            assert not result.is_error and "Europe/Paris" in result.text
        finally:
            await conn.close()
    asyncio.run(run())


def test_pool_refuses_private_urls_and_bounds_its_size() -> None:
    async def run() -> None:
        with pytest.raises(McpUrlRefused):
            await check_url("http://127.0.0.1:1/mcp", allow_private=False)
        with pytest.raises(McpUrlRefused):
            await check_url("http://169.254.169.254/latest", allow_private=False)
        with pytest.raises(McpUrlRefused):
            await check_url("file:///etc/passwd", allow_private=True)
        with pytest.raises(McpUrlRefused):
            await check_url("http://user:pw@example.com/mcp", allow_private=True)
        pool = McpPool(parse_mcp_config({"request_servers": {"max_pooled": 2, "allow_private_networks": True}}))
        first = await pool.for_url("a", "http://127.0.0.1:1/mcp", {})
        assert await pool.for_url("a", "http://127.0.0.1:1/mcp", {}) is first  # reused
        assert await pool.for_url("a", "http://127.0.0.1:1/mcp", {"Authorization": "x"}) is not first
        await pool.for_url("b", "http://127.0.0.1:2/mcp", {})
        assert await pool.for_url("a", "http://127.0.0.1:1/mcp", {}) is not first  # evicted (LRU of 2)
        await pool.close()
    asyncio.run(run())


def test_per_request_servers_are_bounded_checked_and_narrowed() -> None:
    server = HttpServer("streamable")

    async def run() -> None:
        from shepherd.mcp.session import ToolSession
        pool = McpPool(parse_mcp_config({"servers": [stdio_entry("local")], "request_servers": {
            "max_per_request": 1, "allow_private_networks": True, "call_timeout_secs": 5}}))
        try:
            found = await pool.for_request(parse_mcp_tools([
                {"type": "function", "name": "ignored"},
                {"type": "mcp", "server_label": "local", "allowed_tools": ["add"]},
                {"type": "mcp", "server_label": "dyn", "server_url": server.url,
                 "allowed_tools": {"tool_names": ["weather", "explode"], "read_only": True}}]))
            assert [spec.label for spec, _ in found] == ["local", "dyn"]
            session, failures = await ToolSession.build(
                [(spec.label, conn) for spec, conn in found], [],
                select={spec.label: (lambda t, s=spec: s.exposes(t.name, t.read_only)) for spec, _ in found})
            assert not failures and sorted(session.bindings) == ["add", "weather"]  # explode is not read-only
            record = await session.execute("c1", "weather", '{"city": "Kyiv"}')
            assert record.output == "sunny, 21C in Kyiv" and record.server_label == "dyn"
            with pytest.raises(McpUrlRefused, match="at most 1"):
                await pool.for_request(parse_mcp_tools([
                    {"type": "mcp", "server_label": "a", "server_url": server.url},
                    {"type": "mcp", "server_label": "b", "server_url": server.url}]))
            with pytest.raises(McpUrlRefused, match="no configured MCP server"):
                await pool.for_request(parse_mcp_tools([{"type": "mcp", "server_label": "nobody"}]))
        finally:
            await pool.close()

        strict = McpPool(parse_mcp_config({}))
        with pytest.raises(McpUrlRefused, match="private or local"):
            await strict.for_request(parse_mcp_tools([{"type": "mcp", "server_label": "x", "server_url": server.url}]))
    try:
        asyncio.run(run())
    finally:
        server.stop()
