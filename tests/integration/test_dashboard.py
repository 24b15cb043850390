"""The status page at /dashboard: admin-only, and live in a real headless Chromium."""

from __future__ import annotations

import base64
import os
import re
import threading
from collections.abc import Iterator

import httpx
import orjson
import pytest

from shepherd.testing import Gateway, Sim, free_ports, wait_until
from shepherd.testing.processes import ROOT
from tests.browser import Browser, find_chromium

MODEL = "mock-model"
ADMIN_KEY = "admin-secret"
SERVING_KEY = "serving-secret"
ARTIFACTS = os.path.join(ROOT, "test-artifacts")


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def fleet() -> Iterator[tuple[list[Sim], Gateway]]:
    """Three engines in separate processes (so one can be killed), behind a gateway with keys and quick
    health checks."""
    sims = [Sim(1, "--model", MODEL, "--output-tokens", "8") for _ in range(3)]
    gateway = Gateway([s.urls[0] for s in sims], "--policy", "round_robin", "--api-key", SERVING_KEY,
                      "--control-plane-api-keys", f"ops:ops:admin:{ADMIN_KEY}", "viewer:viewer:user:viewer-key",
                      "--health-check-interval-secs", "0.5", "--health-failure-threshold", "1",
                      "--load-monitor-interval", "1", "--worker-startup-timeout-secs", "1",
                      admin_key=ADMIN_KEY)
    yield sims, gateway
    gateway.stop()
    for sim in sims:
        sim.stop()


def _traffic(gateway: Gateway, stop: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {SERVING_KEY}"}
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            try:
                client.post(gateway.url + "/v1/chat/completions", headers=headers,
                            json={"model": MODEL, "messages": [{"role": "user", "content": "status page traffic"}],
                                  "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}})
            except httpx.HTTPError:
                pass
            stop.wait(0.05)


def test_dashboard_is_admin_only(fleet: tuple[list[Sim], Gateway]) -> None:
    _, gateway = fleet
    for path in ("/dashboard", "/dashboard/data"):
        anonymous = httpx.get(gateway.url + path, timeout=5)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Basic ")  # a browser asks for the key
        assert anonymous.json()["error"]["code"] == "missing_credentials"
        assert httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {SERVING_KEY}"},
                         timeout=5).status_code == 401
        assert httpx.get(gateway.url + path, headers=_basic("x", "viewer-key"), timeout=5).status_code == 403
        assert httpx.get(gateway.url + path, headers=_basic("x", "wrong"), timeout=5).status_code == 401
        assert httpx.get(gateway.url + path, headers=_basic("ops", ADMIN_KEY), timeout=5).status_code == 200
        assert httpx.get(gateway.url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                         timeout=5).status_code == 200
    page = httpx.get(gateway.url + "/dashboard", headers=_basic("ops", ADMIN_KEY), timeout=5)
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # No external assets (it works air-gapped): every link is inline data, every URL the SVG namespace.
    assert all(ref.startswith(b"data:") for ref in re.findall(rb'(?:src|href)="([^"]*)"', page.content))
    assert set(re.findall(rb"https?://[^\s\"']*", page.content)) == {b"http://www.w3.org/2000/svg"}
    bad = httpx.get(gateway.url + "/dashboard/data?minutes=abc", headers=_basic("ops", ADMIN_KEY), timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "minutes"


def test_dashboard_data_counts_traffic_per_worker_and_model(fleet: tuple[list[Sim], Gateway]) -> None:
    sims, gateway = fleet
    headers = {"Authorization": f"Bearer {SERVING_KEY}"}
    for _ in range(6):
        httpx.post(gateway.url + "/v1/chat/completions", headers=headers, timeout=10,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "one two three four five"}],
                         "max_tokens": 3})
    data = httpx.get(gateway.url + "/dashboard/data", headers=_basic("ops", ADMIN_KEY), timeout=5).json()
    assert {w["url"] for w in data["workers"]} == {s.urls[0] for s in sims}
    assert [w["window"]["requests"] for w in data["workers"]] == [2, 2, 2]  # round robin over three
    assert all(w["status"] == "ready" and w["breaker"] == "closed" for w in data["workers"])
    model = next(m for m in data["models"] if m["model"] == MODEL)
    assert model["requests"] == 6 and model["workers"] == 3 and model["prompt_tokens"] == 30
    assert sum(data["series"]["rps"]) * data["step_secs"] == pytest.approx(6)
    assert any(v is not None for v in data["series"]["ttft_p99_ms"])


async def test_dashboard_in_a_real_browser(fleet: tuple[list[Sim], Gateway]) -> None:
    find_chromium()  # fails with the install hint rather than skipping
    sims, gateway = fleet
    stop = threading.Event()
    driver = threading.Thread(target=_traffic, args=(gateway, stop), daemon=True)
    driver.start()
    browser = Browser()
    page = None
    try:
        page = await browser.page()
        await page.send("Network.setExtraHTTPHeaders", headers=_basic("ops", ADMIN_KEY))
        await page.send("Page.navigate", url=gateway.url + "/dashboard?interval=500")
        urls = sorted(s.urls[0] for s in sims)
        rows = "[...document.querySelectorAll('#workers tr[data-worker-url]')]"
        shown = await page.wait_for(
            f"(() => {{ const r = {rows}; return r.length === 3 && r.every(x => x.dataset.status === 'ready') "
            f"&& r.map(x => x.dataset.workerUrl).sort(); }})()", 15, "every worker to show as ready")
        assert shown == urls
        await page.wait_for("document.getElementById('v-rps').textContent !== '–' && "
                            "document.querySelectorAll('#c-ttft polyline').length === 2", 10, "the charts")

        victim = sims[1]
        victim.kill()  # SIGKILL: no goodbye, the gateway has to notice
        await page.wait_for(
            f"(() => {{ const r = document.querySelector('#workers tr[data-worker-url=\"{victim.urls[0]}\"]'); "
            f"return r && r.dataset.status !== 'ready'; }})()", 8, "the killed worker to show as down")
        others = await page.evaluate(f"{rows}.filter(x => x.dataset.status === 'ready').length")
        assert others == 2

        # A worker that never answers: its failed job and the reason appear on the page.
        dead = f"http://127.0.0.1:{free_ports(1)[0]}"
        async with httpx.AsyncClient(timeout=5) as admin:
            added = await admin.post(gateway.url + "/workers", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                                     json={"url": dead})
        assert added.status_code == 202
        reason = await page.wait_for(
            "(() => { const r = document.querySelector('#jobs tr[data-job-status=\"failed\"]'); "
            "return r && r.textContent; })()", 10, "the failed job")
        assert dead in reason and len(reason) > len(dead) + len("addfailed")

        assert await page.screenshot(os.path.join(ARTIFACTS, "dashboard.png")) > 10_000
        assert page.errors == [], page.errors
    finally:
        stop.set()
        driver.join(timeout=15)
        if page is not None:
            await page.close()
        browser.stop()


def test_dashboard_without_keys_is_open(sims: Sim, gateway: Gateway) -> None:
    data = httpx.get(gateway.url + "/dashboard/data", timeout=5)
    assert data.status_code == 200
    assert {w["url"] for w in orjson.loads(data.content)["workers"]} == set(sims.urls)
    wait_until(lambda: httpx.get(gateway.url + "/dashboard", timeout=5).status_code == 200, 5)
