"""What one MCP round trip costs through the gateway, as a ratio to calling the tool directly with
the mcp SDK in the same run.

    python -m bench.mcp_overhead [--requests 200]

One simulated engine (canned, no generation time) and one stdio MCP server (shepherd.testing.mcp_server)
behind a gateway. Sequential requests, medians:

* direct: `call_tool("weather")` on an SDK ClientSession over stdio to the same server program;
* plain: a chat through the gateway that calls no tool (one model turn);
* tool: a chat that makes the model call `weather` (two model turns and one MCP call).

The gateway's cost of the round trip is `tool - 2 * plain` (the tool call plus the loop's work around
it); the ratio is that over `direct`. 1.0 would mean the gateway adds nothing to the tool's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from mcp import ClientSession, StdioServerParameters, stdio_client

from shepherd.testing import Gateway, Sim

ROOT = str(Path(__file__).resolve().parents[1])
SERVER = [sys.executable, "-m", "shepherd.testing.mcp_server", "stdio"]


async def direct(requests: int) -> list[float]:
    params = StdioServerParameters(command=SERVER[0], args=SERVER[1:], env={"PYTHONPATH": ROOT})
    times = []
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        for _ in range(requests + 10):
            started = time.perf_counter()
            result = await session.call_tool("weather", {"city": "Paris"})
            times.append(time.perf_counter() - started)
            assert not result.is_error
    return times[10:]


def through_gateway(url: str, text: str, expect: str, requests: int) -> list[float]:
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(requests + 10):
            started = time.perf_counter()
            response = client.post("/v1/chat/completions", json={
                "model": "mock-model", "max_tokens": 4, "messages": [{"role": "user", "content": text}]})
            times.append(time.perf_counter() - started)
            answer = response.json()["choices"][0]["message"]["content"]
            assert response.status_code == 200 and answer.startswith(expect), answer
    return times[10:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="mcp-bench-"))
    config = folder / "mcp.yaml"
    config.write_text(yaml.safe_dump({"servers": [{
        "name": "local", "protocol": "stdio", "command": SERVER[0], "args": SERVER[1:],
        "env": {"PYTHONPATH": ROOT}, "connect_timeout_secs": 60}]}))
    sim = Sim(1, "--model", "mock-model", "--engine", "canned", "--gen-ms", "0")
    gateway = Gateway(sim.urls, "--mcp-config-path", str(config), "--log-level", "warn")
    try:
        direct_times = asyncio.run(direct(args.requests))
        plain = through_gateway(gateway.url, "hello there", "", args.requests)
        tool = through_gateway(gateway.url, "what is the weather in Paris", "Tool result: sunny", args.requests)
    finally:
        gateway.stop()
        sim.stop()
    d, p, t = (statistics.median(x) * 1000 for x in (direct_times, plain, tool))
    overhead = t - 2 * p
    print(f"direct MCP call (SDK, stdio):      {d:7.3f} ms")
    print(f"chat, no tool (gateway):           {p:7.3f} ms")
    print(f"chat, one MCP call (gateway):      {t:7.3f} ms")
    print(f"gateway cost of the MCP round trip: {overhead:7.3f} ms = {overhead / d:.2f}x the direct call")


if __name__ == "__main__":
    main()
