"""WASM plugins end to end: guests built from WAT by the suite, attached over the admin API of a real
gateway process, exercised with the openai SDK against the simulator."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from shepherd.testing import Gateway, Sim, wait_until
from tests import wasm_guests as guests

KEY = "serve-key-wasm"
AUTH = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def guest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every guest, built from WebAssembly text into .wasm files the gateway can load by path."""
    root = tmp_path_factory.mktemp("wasm-guests")
    for name in ("noop", "header_adder", "rejecter", "redactor", "spinner", "memory_hog", "credential_setter"):
        (root / f"{name}.wasm").write_bytes(getattr(guests, name)())
    (root / "big_initial_memory.wasm").write_bytes(guests.big_initial_memory(300))
    return root


@pytest.fixture(scope="module")
def sim() -> Iterator[Sim]:
    s = Sim(1, "--model", "mock-model", "--extra-models", "secret-model", "--output-tokens", "4")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gw(sim: Sim) -> Iterator[Gateway]:
    # A 3 s time limit leaves the spinning-guest test a wide margin to see the gateway serve meanwhile.
    # One key serves and administers here (the admin role comes from --control-plane-api-keys).
    g = Gateway(sim.urls, "--api-key", KEY, "--control-plane-api-keys", f"wasm:ops:admin:{KEY}", "--enable-wasm",
                "--wasm-max-memory-pages", "256", "--wasm-thread-pool-size", "2",
                "--wasm-max-execution-time-ms", "3000", admin_key=KEY)
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def _detach_all(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "gw" in request.fixturenames:
        g = request.getfixturevalue("gw")
        for plugin in httpx.get(g.url + "/wasm", headers=AUTH, timeout=5).json()["plugins"]:
            httpx.delete(f"{g.url}/wasm/{plugin['id']}", headers=AUTH, timeout=5)
        request.getfixturevalue("sim").reset()


def attach(g: Gateway, path: Path, attach: tuple[str, ...] = ("on-request",), expect: int = 201,
           **extra: Any) -> dict[str, Any]:
    spec = {"name": path.stem, "path": str(path), "sha256": guests.sha256(path.read_bytes()),
            "attach": list(attach), **extra}
    response = httpx.post(g.url + "/wasm", json=spec, headers=AUTH, timeout=30)
    assert response.status_code == expect, response.text
    return response.json()


def client(g: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.url + "/v1", api_key=KEY, max_retries=0)


def plugin_stats(g: Gateway, plugin_id: str) -> dict[str, Any]:
    return httpx.get(f"{g.url}/wasm/{plugin_id}", headers=AUTH, timeout=5).json()["stats"]


def test_header_adding_plugin_changes_the_request_and_the_response(gw: Gateway, sim: Sim, guest_dir: Path) -> None:
    plugin = attach(gw, guest_dir / "header_adder.wasm", ("on-request", "on-response"))
    assert plugin["abi_version"] == "0.1.0" and plugin["attach"] == ["on-request", "on-response"]
    raw = client(gw).chat.completions.with_raw_response.create(model="mock-model", messages=MESSAGES, max_tokens=4)
    assert raw.headers["x-plugin-response"] == "seen"
    assert raw.parse().choices[0].message.content
    seen = sim.requests()[-1]["headers"]
    assert seen.get("x-plugin-tag") == "wasm-was-here"
    assert "Authorization" not in seen or KEY not in seen["Authorization"]  # the gateway key still stays home
    stats = plugin_stats(gw, plugin["id"])
    assert stats["outcomes"] == {"modify": 2} and stats["failed"] == 0


def test_rejecting_plugin_answers_without_reaching_the_worker(gw: Gateway, sim: Sim, guest_dir: Path) -> None:
    attach(gw, guest_dir / "rejecter.wasm")
    before = len(sim.requests())
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client(gw).chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=4)
    assert caught.value.status_code == 403
    assert caught.value.response.headers["x-rejected-by"] == "policy-plugin"
    assert caught.value.body["message"] == "blocked by the policy plugin"  # type: ignore[index]
    assert len(sim.requests()) == before


def test_an_empty_rejection_gets_the_error_shape_of_the_clients_api(gw: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "quota.wasm"
    path.write_bytes(guests.rejecter(429, message=None))
    attach(gw, path)
    with pytest.raises(anthropic.RateLimitError) as caught:
        anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0).messages.create(
            model="mock-model", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["error"]["message"] == "The request was rejected by plugin 'quota'"  # type: ignore[index]
    with pytest.raises(openai.RateLimitError) as rejected:
        client(gw).chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=2)
    assert rejected.value.body["code"] == "plugin_rejected"  # type: ignore[index]


def test_body_rewriting_plugin_redacts_what_the_worker_sees(gw: Gateway, sim: Sim, guest_dir: Path) -> None:
    attach(gw, guest_dir / "redactor.wasm")
    completion = client(gw).chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "my secret plan, top secret"}], max_tokens=4)
    assert completion.choices[0].message.content
    body = json.loads(sim.requests()[-1]["body"])
    assert body["messages"][0]["content"] == "my ****** plan, top ******"


def test_response_hook_rewrites_a_buffered_answer(gw: Gateway, guest_dir: Path) -> None:
    attach(gw, guest_dir / "redactor.wasm", ("on-response",))
    # The answer names the model it came from: the response hook redacts it on the way out.
    raw = client(gw).chat.completions.with_raw_response.create(model="secret-model", messages=MESSAGES,
                                                               max_tokens=2)
    assert raw.parse().model == "******-model"
    assert int(raw.headers["content-length"]) == len(raw.http_response.content)


def test_response_hook_replaces_status_and_body(gw: Gateway, tmp_path: Path) -> None:
    replacement = '{"notice": "replaced by the response plugin"}'
    path = tmp_path / "replacer.wasm"
    path.write_bytes(guests.response_replacer(replacement, 203))
    attach(gw, path, ("on-response",))
    response = httpx.post(gw.url + "/v1/chat/completions", headers=AUTH, timeout=10,
                          json={"model": "mock-model", "messages": MESSAGES, "max_tokens": 2})
    assert response.status_code == 203
    assert response.json() == {"notice": "replaced by the response plugin"}
    assert int(response.headers["content-length"]) == len(replacement)
    assert response.headers["x-request-id"]
    # Paths no route matches are not hooked: they keep their 404.
    missing = httpx.post(gw.url + "/v1/nothing-here", headers=AUTH, json={}, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"


def test_streamed_answers_pass_response_hooks_untouched(gw: Gateway, guest_dir: Path) -> None:
    plugin = attach(gw, guest_dir / "header_adder.wasm", ("on-response",))
    stream = client(gw).chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=4, stream=True)
    assert [chunk for chunk in stream]
    assert plugin_stats(gw, plugin["id"])["calls"] == 0


def test_infinite_loop_is_stopped_by_its_time_limit(gw: Gateway, guest_dir: Path) -> None:
    plugin = attach(gw, guest_dir / "spinner.wasm")
    finished: list[str] = []

    def slow() -> None:
        client(gw).chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=2)
        finished.append("spun")

    thread = threading.Thread(target=slow)
    thread.start()
    # The call took the plugin's only pooled instance: the guest is spinning now.
    wait_until(lambda: httpx.get(f"{gw.url}/wasm/{plugin['id']}", headers=AUTH, timeout=5).json()["idle_instances"]
               == 0, 10, message="the spinning call to start")
    assert thread.is_alive()
    # While the guest spins (3 s limit), the gateway goes on serving on its event loop.
    assert httpx.get(gw.url + "/v1/models", headers=AUTH, timeout=5).status_code == 200
    finished.append("models")
    thread.join(30)
    assert finished == ["models", "spun"]  # fail-open: the request went on without the plugin
    stats = plugin_stats(gw, plugin["id"])
    assert stats["outcomes"] == {"timeout": 1} and stats["last_failure"] == "timeout"
    metrics = httpx.get(gw.metrics_url, timeout=5).text
    assert 'smg_wasm_plugin_executions_total{hook="on-request",outcome="timeout",plugin="spinner"} 1.0' in metrics

    httpx.delete(f"{gw.url}/wasm/{plugin['id']}", headers=AUTH, timeout=5)
    attach(gw, guest_dir / "spinner.wasm", failure_mode="fail-closed")
    with pytest.raises(openai.InternalServerError) as caught:
        client(gw).chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=2)
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "plugin_failed"  # type: ignore[index]
    assert "timeout" in caught.value.body["message"]  # type: ignore[index]


def test_memory_hungry_plugin_hits_its_limit_and_is_contained(gw: Gateway, guest_dir: Path) -> None:
    hog = attach(gw, guest_dir / "memory_hog.wasm")
    tagger = attach(gw, guest_dir / "header_adder.wasm", order=10)  # runs after the hog
    for _ in range(2):  # the trapped instance is replaced by a fresh one
        raw = client(gw).chat.completions.with_raw_response.create(model="mock-model", messages=MESSAGES,
                                                                   max_tokens=2)
        assert raw.http_response.status_code == 200
    stats = plugin_stats(gw, hog["id"])
    assert stats["failed"] == 2 and stats["outcomes"] == {"trap": 2}
    assert plugin_stats(gw, tagger["id"])["outcomes"] == {"modify": 2}  # the next plugin still ran

    too_big = attach(gw, guest_dir / "big_initial_memory.wasm", expect=400)
    assert too_big["error"]["code"] == "invalid_component"
    assert "memory" in too_big["error"]["message"]


def test_a_forbidden_change_counts_as_a_failure(gw: Gateway, sim: Sim, guest_dir: Path) -> None:
    plugin = attach(gw, guest_dir / "credential_setter.wasm")
    client(gw).chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=2)
    assert plugin_stats(gw, plugin["id"])["outcomes"] == {"invalid_action": 1}
    assert "stolen" not in json.dumps(sim.requests()[-1]["headers"])


def test_management_api(gw: Gateway, guest_dir: Path) -> None:
    noop = guest_dir / "noop.wasm"
    digest = guests.sha256(noop.read_bytes())
    spec = {"name": "noop", "path": str(noop), "sha256": digest, "attach": ["on-request"]}
    assert httpx.post(gw.url + "/wasm", json=spec, timeout=5).status_code == 401  # admin auth
    assert httpx.get(gw.url + "/wasm", timeout=5).status_code == 401

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(gw.url + "/wasm", json=body, headers=AUTH, timeout=30)

    bad = post({**spec, "sha256": "0" * 64})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "sha256_mismatch"
    assert post({**spec, "path": "/etc/passwd.wasm"}).json()["error"]["code"] == "invalid_plugin_spec"
    assert post({**spec, "path": str(guest_dir / "missing.wasm")}).status_code == 404
    assert post({**spec, "path": str(guest_dir / ".." / "x.wasm")}).status_code == 400
    assert post({**spec, "attach": ["on-error"]}).status_code == 400
    assert post({**spec, "failure_mode": "sometimes"}).status_code == 400
    core_module = b"\0asm\x01\0\0\0"
    not_component = post({"name": "core", "sha256": guests.sha256(core_module), "attach": ["on-request"],
                          "wasm_base64": base64.b64encode(core_module).decode()})
    assert not_component.status_code == 400 and not_component.json()["error"]["code"] == "invalid_component"

    second = attach(gw, guest_dir / "header_adder.wasm", order=-5)
    uploaded = post({"name": "noop-upload", "sha256": digest, "attach": ["on-request", "on-response"],
                     "wasm_base64": base64.b64encode(noop.read_bytes()).decode(), "failure_mode": "fail-closed"})
    assert uploaded.status_code == 201, uploaded.text
    assert post({**spec, "name": "noop-again"}).status_code == 409  # same bytes twice
    listing = httpx.get(gw.url + "/wasm", headers=AUTH, timeout=5).json()
    assert [p["name"] for p in listing["plugins"]] == ["header_adder", "noop-upload"]  # run order
    assert listing["limits"]["max_memory_pages"] == 256 and listing["limits"]["max_execution_time_ms"] == 3000
    assert listing["abi_versions"] == ["0.1.0"]

    removed = httpx.delete(f"{gw.url}/wasm/{second['id']}", headers=AUTH, timeout=5)
    assert removed.status_code == 200 and removed.json()["status"] == "removed"
    assert httpx.delete(f"{gw.url}/wasm/{second['id']}", headers=AUTH, timeout=5).status_code == 404
    assert [p["name"] for p in httpx.get(gw.url + "/wasm", headers=AUTH, timeout=5).json()["plugins"]] == [
        "noop-upload"]


def test_plugins_file_is_loaded_at_start_and_survives_reloads(sim: Sim, guest_dir: Path, tmp_path: Path) -> None:
    def entry(name: str, **extra: Any) -> dict[str, Any]:
        path = guest_dir / f"{name}.wasm"
        return {"name": name, "path": str(path), "sha256": guests.sha256(path.read_bytes()),
                "attach": ["on-request"], **extra}

    plugins_file = tmp_path / "plugins.json"
    plugins_file.write_text(json.dumps([entry("header_adder"), entry("noop")]))
    g = Gateway(sim.urls, "--enable-wasm", "--wasm-plugins-file", str(plugins_file))
    try:
        listing = httpx.get(g.url + "/wasm", timeout=5).json()["plugins"]
        assert [p["name"] for p in listing] == ["header_adder", "noop"]
        ids = {p["name"]: p["id"] for p in listing}
        openai.OpenAI(base_url=g.url + "/v1", api_key="none", max_retries=0).chat.completions.create(
            model="mock-model", messages=MESSAGES, max_tokens=2)
        assert sim.requests()[-1]["headers"].get("x-plugin-tag") == "wasm-was-here"  # active from the start

        plugins_file.write_text(json.dumps([entry("header_adder"), entry("noop", order=-1), entry("rejecter")]))
        summary = httpx.post(g.url + "/wasm/reload", timeout=30).json()
        assert summary["kept"] == [ids["header_adder"]] and len(summary["added"]) == 2 and not summary["errors"]
        listing = httpx.get(g.url + "/wasm", timeout=5).json()["plugins"]
        by_name = {p["name"]: p for p in listing}
        assert by_name["header_adder"]["id"] == ids["header_adder"]  # same plugin, counters kept
        assert by_name["header_adder"]["stats"]["calls"] == 1
        assert by_name["noop"]["id"] != ids["noop"]  # its order changed

        plugins_file.write_text(json.dumps([entry("noop", order=-1), {"name": "broken"}, entry("noop")]))
        partial = httpx.post(g.url + "/wasm/reload", timeout=30)
        assert partial.status_code == 207
        assert [e["code"] for e in partial.json()["errors"]] == ["invalid_plugin_spec", "duplicate_name"]
        assert sorted(p["name"] for p in httpx.get(g.url + "/wasm", timeout=5).json()["plugins"]) == ["noop"]
    finally:
        g.stop()


def test_a_bad_plugins_file_stops_the_gateway_from_starting(sim: Sim, tmp_path: Path) -> None:
    plugins_file = tmp_path / "plugins.json"
    plugins_file.write_text(json.dumps([{"name": "ghost", "path": str(tmp_path / "ghost.wasm"), "sha256": "a" * 64,
                                         "attach": ["on-request"]}]))
    with pytest.raises(AssertionError) as caught:
        Gateway(sim.urls, "--enable-wasm", "--wasm-plugins-file", str(plugins_file))
    assert "ghost" in str(caught.value)


def test_wasm_routes_without_enable_wasm(gateway: Gateway) -> None:
    response = httpx.get(gateway.url + "/wasm", timeout=5)
    assert response.status_code == 404 and response.json()["error"]["code"] == "wasm_disabled"


@pytest.mark.timeout(600)  # componentize-py bundles an interpreter: building and compiling take a while
def test_python_guest_built_with_componentize_py(gw: Gateway, sim: Sim, tmp_path: Path) -> None:
    wasm = guests.python_guest("tenant_router", str(tmp_path))
    spec = {"name": "tenant-router", "sha256": guests.sha256(wasm), "attach": ["on-request"],
            "path": str(tmp_path / "tenant_router.wasm"), "failure_mode": "fail-closed"}
    added: list[httpx.Response] = []
    adding = threading.Thread(target=lambda: added.append(
        httpx.post(gw.url + "/wasm", json=spec, headers=AUTH, timeout=300)))
    adding.start()
    # Compiling an 18 MB component takes seconds, on the compile thread: the gateway keeps serving.
    served_while_compiling = 0
    while adding.is_alive():
        assert httpx.get(gw.url + "/v1/models", headers=AUTH, timeout=5).status_code == 200
        served_while_compiling += 1
    adding.join()
    assert added[0].status_code == 201, added[0].text
    assert served_while_compiling > 1

    with pytest.raises(openai.BadRequestError) as caught:
        client(gw).chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=50)
    assert caught.value.body["code"] == "missing_tenant"  # type: ignore[index]
    completion = client(gw).chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=50,
                                                    extra_headers={"x-tenant": "acme"})
    assert completion.choices[0].message.content
    seen = sim.requests()[-1]
    assert seen["headers"]["x-tenant-route"] == "tenant-acme"
    assert json.loads(seen["body"])["max_tokens"] == 3
