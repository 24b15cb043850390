"""--health-check-port: the probe listener's own thread serves the readiness the gateway's loop publishes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from shepherd.probe_port import ProbeListener, Published, probe_answer

pytestmark = pytest.mark.unit


def test_probes_answer_from_the_latest_publication_while_it_is_fresh() -> None:
    ready = Published(at=100.0, status=200, body=b'{"status":"ready"}')
    assert probe_answer("/readiness", ready, 101.0, 10.0) == (200, b'{"status":"ready"}')
    assert probe_answer("/liveness", ready, 101.0, 10.0) == (200, b"OK")
    assert probe_answer("/health", ready._replace(status=503), 101.0, 10.0) == (200, b"OK")  # alive, not ready
    for path in ("/liveness", "/readiness", "/health"):
        status, body = probe_answer(path, ready, 111.0, 10.0)  # the gateway's loop stopped publishing
        assert status == 503 and b"event loop" in body


async def test_the_probe_port_serves_what_the_gateway_publishes() -> None:
    state: dict[str, Any] = {"answer": (503, {"status": "not ready", "reason": "no healthy workers"})}
    published_ready = asyncio.Event()

    def readiness() -> tuple[int, dict[str, Any]]:
        if state["answer"][0] == 200:
            published_ready.set()
        return state["answer"]  # type: ignore[no-any-return]

    listener = ProbeListener("127.0.0.1", 0, readiness, header_timeout=5.0)
    await listener.start()
    try:
        url = f"http://127.0.0.1:{listener.port}"
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            first = await client.get("/readiness")
            assert first.status_code == 503 and first.json()["reason"] == "no healthy workers"
            assert (await client.get("/liveness")).text == "OK"
            state["answer"] = (200, {"status": "ready"})
            await asyncio.wait_for(published_ready.wait(), 10)  # the next publication (every PUBLISH_SECS)
            assert (await client.get("/readiness")).json() == {"status": "ready"}
            assert (await client.get("/v1/models")).status_code == 404  # probes only
    finally:
        await listener.stop()


async def test_a_port_in_use_fails_the_start() -> None:
    first = ProbeListener("127.0.0.1", 0, lambda: (200, {}), header_timeout=5.0)
    await first.start()
    try:
        assert first.port is not None
        second = ProbeListener("127.0.0.1", first.port, lambda: (200, {}), header_timeout=5.0)
        with pytest.raises(OSError):
            await second.start()
    finally:
        await first.stop()
