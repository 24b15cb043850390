"""Worker overload protection end to end: an engine whose own load report shows a queue at the threshold is
left out of routing while the other serves; with both over it, --worker-overload-shed answers 503 at once
(no retry on another worker). The threshold is one waiting request, so three slow requests sent straight to
an engine with one running slot overload it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest

from shepherd.testing import Gateway, Sim, wait_until

pytestmark = pytest.mark.integration

SLOW = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40,
        "ignore_eos": True}
CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Sim, Gateway]]:
    sim = Sim(2, "--max-running", "1", "--decode-base-ms", "100")
    gw = Gateway(sim.urls, "--load-monitor-interval", "0.2", "--worker-overload-waiting-requests", "1",
                 "--worker-overload-shed", "--retry-max-retries", "3")
    try:
        yield sim, gw
    finally:
        gw.stop()
        sim.stop()


def _overload(pool: ThreadPoolExecutor, url: str) -> list[Future[httpx.Response]]:
    return [pool.submit(httpx.post, url + "/v1/chat/completions", json=SLOW, timeout=60) for _ in range(3)]


def test_an_overloaded_engine_is_skipped_then_all_overloaded_sheds(cluster: tuple[Sim, Gateway]) -> None:
    sim, gw = cluster
    busy, calm = sim.urls
    with ThreadPoolExecutor(6) as pool:
        first = _overload(pool, busy)
        wait_until(lambda: _served_by(gw) == calm, 10, 0.1, message="routing away from the overloaded engine")
        assert {_served_by(gw) for _ in range(4)} == {calm}
        second = _overload(pool, calm)
        wait_until(lambda: _shed(sim, gw), 10, 0.1, message="a shed with both engines overloaded")
        for future in first + second:
            assert future.result(timeout=60).status_code == 200
    assert gw.metric("smg_worker_overload_shed_total", stage="selection") >= 1
    wait_until(lambda: {_served_by(gw) for _ in range(4)} == {busy, calm}, 20, 0.2,
               message="both engines back in rotation once their queues drained")


def _served_by(gw: Gateway) -> str | None:
    try:  # short, as in _shed: a probe that went to the queued engine before a load report is given up
        response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=1)
    except httpx.TimeoutException:
        return None
    return response.headers.get("x-smg-routed-worker-id") if response.status_code == 200 else None


def _shed(sim: Sim, gw: Gateway) -> bool:
    before = len(sim.requests(0)) + len(sim.requests(1))
    try:
        # Short: a probe sent before the gateway's next load report still goes to an engine, and
        # waits there behind the slow requests; the next probe comes after that report.
        response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=1)
    except httpx.TimeoutException:
        return False
    if response.status_code != 503:
        return False
    assert response.json()["error"]["code"] == "worker_overload_protection_shed"
    assert int(response.headers["Retry-After"]) >= 1
    assert len(sim.requests(0)) + len(sim.requests(1)) == before  # no worker was tried, none retried
    return True
