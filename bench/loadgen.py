"""Closed-loop HTTP load generation: wrk when installed, a Python fallback otherwise.

Both report requests per second and latency percentiles for one (URL, body, concurrency). wrk is
preferred because its own CPU cost is small, so the numbers describe the system under test rather
than the load generator; the Python fallback uses the gateway's own lean client for the same reason.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass

from shepherd.transport.lean import LeanTransport


@dataclass
class LoadResult:
    requests_per_sec: float
    p50_ms: float
    p99_ms: float
    errors: int
    bytes_per_request: float = 0.0
    requests: int = 0  # completed in the run (for per-request costs)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(url: str, body: bytes, concurrency: int, seconds: float, use_wrk: bool | None = None,
             headers: Mapping[str, str] | None = None) -> LoadResult:
    """`headers`: extra request headers, beside Content-Type."""
    if use_wrk is None:
        use_wrk = have_wrk()
    extra = dict(headers or {})
    if use_wrk:
        return _run_wrk(url, body, concurrency, seconds, extra)
    return asyncio.run(_run_python(url, body, concurrency, seconds, extra))


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("%s", "rb"):read("*a")
"""
_WRK_HEADER = 'wrk.headers["%s"] = "%s"\n'



def _parse_duration_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def _run_wrk(url: str, body: bytes, concurrency: int, seconds: float, headers: dict[str, str]) -> LoadResult:
    with tempfile.TemporaryDirectory() as tmp:
        body_path = os.path.join(tmp, "body.json")
        with open(body_path, "wb") as handle:
            handle.write(body)
        script = os.path.join(tmp, "post.lua")
        with open(script, "w") as handle:
            handle.write(_WRK_SCRIPT % body_path)
            for name, value in headers.items():
                handle.write(_WRK_HEADER % (name, value))
        output = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--latency", "-s", script, url],
            capture_output=True, text=True, check=True,
        ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    read = re.search(r"requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB) read", output)
    scale = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
    total_bytes = float(read.group(1)) * scale[read.group(2)] if read else 0.0
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    error_count = int(errors.group(1)) if errors else 0
    if socket_errors:
        error_count += sum(int(g) for g in socket_errors.groups())
    return LoadResult(
        requests_per_sec=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        p50_ms=_parse_duration_ms(percentiles["50"]),
        p99_ms=_parse_duration_ms(percentiles["99"]),
        errors=error_count,
        bytes_per_request=total_bytes / requests if requests else 0.0,
        requests=requests,
    )


async def _run_python(url: str, body: bytes, concurrency: int, seconds: float, extra: dict[str, str]) -> LoadResult:
    pool = LeanTransport(connect_timeout=5, idle_timeout=30)
    base, _, path = url.partition("://")[2].partition("/")
    base_url = url[: url.index("://") + 3] + base
    latencies: list[float] = []
    errors = 0
    received = 0
    deadline = time.monotonic() + seconds
    headers = {"content-type": "application/json", **{k.lower(): v for k, v in extra.items()}}

    async def client() -> None:
        nonlocal errors, received
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                response = await pool.request("POST", base_url, "/" + path, headers, body, 60)
                async for chunk in response.iter_chunks():
                    received += len(chunk)
                if response.status >= 400:
                    errors += 1
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    await pool.close()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0

    return LoadResult(len(latencies) / elapsed, pct(0.5), pct(0.99), errors,
                      received / len(latencies) if latencies else 0.0, len(latencies))
