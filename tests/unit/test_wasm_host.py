"""The WASM host without a gateway: limits, ABI validation, pooling, chains, and plugin sources."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from multidict import CIMultiDict
from wasmtime.component import Record, Variant

from shepherd.config import ConfigError, WasmConfig
from shepherd.plugins import WIT_PATH
from shepherd.plugins.abi import REQUEST_HOOK, RESPONSE_HOOK, InvalidAction, parse_action
from shepherd.plugins.chain import run_request_chain, run_response_chain
from shepherd.plugins.registry import Plugin, PluginError, PluginSpec, PluginStats, read_plugin_file
from shepherd.plugins.runtime import PluginLoadError, WasmRuntime
from tests import wasm_guests as guests


@pytest.fixture(scope="module")
def runtime() -> Iterator[WasmRuntime]:
    rt = WasmRuntime(WasmConfig(enabled=True, max_execution_time_ms=50, max_memory_pages=32,
                                thread_pool_size=2))
    yield rt
    rt.close()


def _plugin(runtime: WasmRuntime, wasm: bytes, name: str, mode: str = "fail-open") -> Plugin:
    spec = PluginSpec(name=name, sha256=guests.sha256(wasm), attach=(REQUEST_HOOK, RESPONSE_HOOK), failure_mode=mode)
    return Plugin(id=name, spec=spec, compiled=runtime.compile(wasm), size_bytes=len(wasm), source="api", seq=0,
                  stats=PluginStats(name, None))


# -- limits ----------------------------------------------------------------------------------------

def test_wasm_limits_have_smgs_defaults_and_ranges() -> None:
    config = WasmConfig()
    assert (config.max_memory_pages, config.max_execution_time_ms, config.max_stack_size, config.max_plugins,
            config.max_body_size) == (1024, 1000, 1024 * 1024, 10, 10 * 1024 * 1024)
    assert 1 <= config.thread_pool_size <= 4
    config.validate()
    for name, flag, low, high in WasmConfig._RANGES:
        replace(config, **{name: low}).validate()
        replace(config, **{name: high}).validate()
        for bad in (low - 1, high + 1):
            with pytest.raises(ConfigError, match=flag):
                replace(config, **{name: bad}).validate()
    with pytest.raises(ConfigError, match="--enable-wasm"):
        WasmConfig(plugins_file="plugins.json").validate()


# -- what a guest may answer -----------------------------------------------------------------------

def _header(name: str, value: str) -> Record:
    record = Record()
    record.name, record.value = name, value
    return record


def _modify(status: int | None = None, set_: list[Record] | None = None, remove: list[str] | None = None) -> Variant:
    change = Record()
    change.status = status
    setattr(change, "set-headers", set_ or [])
    setattr(change, "add-headers", [])
    setattr(change, "remove-headers", remove or [])
    change.body = None
    return Variant("modify", change)


def _reject(status: int) -> Variant:
    rejection = Record()
    rejection.status, rejection.headers, rejection.body = status, [], ""
    return Variant("reject", rejection)


@pytest.mark.parametrize("action, hook, message", [
    (_modify(status=201), REQUEST_HOOK, "on-request may not set a status"),
    (_modify(status=700), RESPONSE_HOOK, "not an HTTP status"),
    (_modify(set_=[_header("content-length", "1")]), REQUEST_HOOK, "content-length"),
    (_modify(set_=[_header("X-Api-Key", "k")]), REQUEST_HOOK, "x-api-key"),
    (_modify(set_=[_header("x-ok", "a\r\nx-injected: 1")]), REQUEST_HOOK, "CR, LF"),
    (_modify(set_=[_header("bad name", "v")]), REQUEST_HOOK, "not a valid header name"),
    (_modify(remove=["authorization"]), REQUEST_HOOK, "authorization"),
    (_modify(set_=[_header("x-many", "v")] * 300), REQUEST_HOOK, "at most 256"),
    (_reject(200), REQUEST_HOOK, "4xx or 5xx"),
    (_modify(set_=[_header("x-long", "v" * 8193)]), REQUEST_HOOK, "longer than 8192"),
    (Variant("explode", None), REQUEST_HOOK, "unknown action"),
])
def test_actions_that_break_the_abi_are_refused(action: Variant, hook: str, message: str) -> None:
    with pytest.raises(InvalidAction, match=message):
        parse_action(action, hook)


def test_a_returned_body_is_held_to_the_body_limit() -> None:
    change = _modify()
    change.payload.body = "\u00e9" * 6  # 12 bytes of UTF-8
    assert parse_action(change, REQUEST_HOOK, max_body=12).modify is not None
    with pytest.raises(InvalidAction, match="11-byte limit"):
        parse_action(change, REQUEST_HOOK, max_body=11)
    rejection = _reject(403)
    rejection.payload.body = "x" * 20
    with pytest.raises(InvalidAction, match="exceeds"):
        parse_action(rejection, REQUEST_HOOK, max_body=10)


def test_a_response_status_change_is_allowed() -> None:
    action = parse_action(_modify(status=299, set_=[_header("X-Trace", "1")]), RESPONSE_HOOK)
    assert action.modify is not None and action.modify.status == 299
    assert action.modify.set_headers == (("x-trace", "1"),)


# -- loading ---------------------------------------------------------------------------------------

def test_the_published_wit_names_the_abi_the_host_speaks() -> None:
    text = WIT_PATH.read_text()
    assert "package shepherd:plugin@0.1.0;" in text
    for name in ("on-request: func(req: http-request) -> action;", "on-response: func(resp: http-response) -> action;",
                 "export hooks;"):
        assert name in text


def test_components_that_do_not_fit_are_refused_at_load(runtime: WasmRuntime) -> None:
    with pytest.raises(PluginLoadError, match="not a WebAssembly binary"):
        runtime.compile(b"hello")
    with pytest.raises(PluginLoadError, match="component"):
        runtime.compile(bytes(wasmtime.wat2wasm("(module)")))
    with pytest.raises(PluginLoadError, match="exports none of shepherd:plugin/hooks@0.1.0"):
        runtime.compile(bytes(wasmtime.wat2wasm("(component)")))
    wrong_types = """
    (component
      (core module $m
        (memory (export "memory") 1)
        (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 64))
        (func (export "f") (param i32 i32) (result i32) (local.get 1)))
      (core instance $i (instantiate $m))
      (alias core export $i "memory" (core memory $mem))
      (alias core export $i "realloc" (core func $realloc))
      (func $f (param "req" string) (result u32)
        (canon lift (core func $i "f") (memory $mem) (realloc $realloc) string-encoding=utf8))
      (instance $hooks (export "on-request" (func $f)) (export "on-response" (func $f)))
      (export "shepherd:plugin/hooks@0.1.0" (instance $hooks)))
    """
    with pytest.raises(PluginLoadError, match="on-request does not match .*its parameter is string"):
        runtime.compile(bytes(wasmtime.wat2wasm(wrong_types)))
    with pytest.raises(PluginLoadError, match="more memory than its limit"):
        runtime.compile(guests.big_initial_memory(33))


# -- pooling and failures --------------------------------------------------------------------------

def _request_chain(plugins: list[Plugin], body: str = '{"a": "secret"}') -> Any:
    return run_request_chain(plugins, "POST", "/v1/chat/completions", "", CIMultiDict({"Authorization": "Bearer k"}),
                             body, "rid")


def test_instances_are_pooled_and_a_failed_one_is_replaced(runtime: WasmRuntime) -> None:
    tagger = _plugin(runtime, guests.header_adder(), "tagger")
    for _ in range(5):
        _request_chain([tagger])
    assert tagger.compiled.idle_instances == 1  # one instance served every sequential call

    barrier = threading.Barrier(2)

    def call() -> None:
        barrier.wait()
        for _ in range(20):
            _request_chain([tagger])

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= tagger.compiled.idle_instances <= 2  # never more than the callers at once

    hog = _plugin(runtime, guests.memory_hog(), "hog")
    assert _request_chain([hog]).failure is None  # fail-open
    assert hog.compiled.idle_instances == 0  # the trapped instance was dropped
    _request_chain([hog])
    assert hog.stats.info()["outcomes"] == {"trap": 2}


def test_chains_apply_changes_in_order_and_honour_failure_modes(runtime: WasmRuntime) -> None:
    tagger = _plugin(runtime, guests.header_adder(), "tagger")
    redactor = _plugin(runtime, guests.redactor(), "redactor")
    spinner_open = _plugin(runtime, guests.spinner(), "spinner-open")
    spinner_closed = _plugin(runtime, guests.spinner(), "spinner-closed", mode="fail-closed")
    rejecter = _plugin(runtime, guests.rejecter(), "rejecter")

    result = _request_chain([spinner_open, tagger, redactor])
    assert result.failure is None and result.changed
    assert result.headers["x-plugin-tag"] == "wasm-was-here"
    assert result.headers["Authorization"] == "Bearer k"  # credentials are never touched
    assert result.body == '{"a": "******"}'
    assert spinner_open.stats.info()["outcomes"] == {"timeout": 1}

    result = _request_chain([tagger, spinner_closed, redactor])
    assert result.failure is not None and result.failure[0] is spinner_closed
    assert redactor.stats.info()["calls"] == 1  # the chain stopped at the fail-closed plugin

    result = _request_chain([rejecter, tagger])
    assert result.rejection is not None and result.rejection[1].status == 403
    assert tagger.stats.info()["calls"] == 2  # nothing after a rejection runs

    result = run_response_chain([redactor], 200, CIMultiDict(), '{"secret": 1}', "rid")
    assert result.body == '{"******": 1}' and result.status == 200


def test_guests_never_see_credentials(runtime: WasmRuntime) -> None:
    from shepherd.plugins.abi import visible_headers

    assert visible_headers([("Authorization", "Bearer k"), ("X-Api-Key", "k"), ("X-Tenant", "t")]) == (
        ("x-tenant", "t"),)


# -- plugin specs and files ------------------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    ([], "JSON object"),
    ({"name": "x", "sha256": "a" * 64, "attach": ["on-request"]}, "exactly one of"),
    ({"name": "", "sha256": "a" * 64, "attach": ["on-request"], "path": "x.wasm"}, "'name'"),
    ({"name": "x", "sha256": "abc", "attach": ["on-request"], "path": "x.wasm"}, "'sha256'"),
    ({"name": "x", "sha256": "a" * 64, "attach": [], "path": "x.wasm"}, "'attach'"),
    ({"name": "x", "sha256": "a" * 64, "attach": ["on-request", "on-request"], "path": "x.wasm"}, "'attach'"),
    ({"name": "x", "sha256": "a" * 64, "attach": "on-request", "path": "x.wasm", "order": 1.5}, "'order'"),
    ({"name": "x", "sha256": "a" * 64, "attach": "on-request", "wasm_base64": "!!"}, "base64"),
    ({"name": "x", "sha256": "a" * 64, "attach": "on-request", "path": "x.wasm", "colour": "red"}, "unknown field"),
])
def test_bad_plugin_specs_are_refused(data: Any, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        PluginSpec.from_json(data, 1024 * 1024)


def test_plugin_paths_are_checked_before_reading(tmp_path: Path) -> None:
    good = tmp_path / "good.wasm"
    good.write_bytes(b"\0asm")
    assert read_plugin_file(str(good), 1024) == b"\0asm"
    (tmp_path / "empty.wasm").write_bytes(b"")
    (tmp_path / "dir.wasm").mkdir()
    (tmp_path / "notes.txt").write_bytes(b"\0asm")
    os.symlink(tmp_path / "notes.txt", tmp_path / "link.wasm")
    os.mkfifo(tmp_path / "pipe.wasm")
    cases = {
        "empty.wasm": "is empty", "dir.wasm": "not a regular file", "notes.txt": ".wasm",
        "link.wasm": "after following links", "pipe.wasm": "not a regular file",
    }
    for name, message in cases.items():
        with pytest.raises(PluginError, match=message):
            read_plugin_file(str(tmp_path / name), 1024)
    with pytest.raises(PluginError, match="'.' or '..'"):
        read_plugin_file(f"{tmp_path}/sub/../good.wasm", 1024)
    with pytest.raises(PluginError, match="system directory"):
        read_plugin_file("/proc/self/x.wasm", 1024)
    with pytest.raises(PluginError) as caught:
        read_plugin_file(str(good), 2)
    assert caught.value.status == 413


# -- the direct C-value path matches wasmtime's generic conversion ---------------------------------

def _public_record(**fields: Any) -> Record:
    record = Record()
    for name, value in fields.items():
        setattr(record, name.replace("_", "-"), value)
    return record


@pytest.mark.parametrize("guest", ["noop", "header_adder", "header_rewriter", "rejecter", "redactor"])
def test_direct_marshalling_matches_the_public_api(runtime: WasmRuntime, guest: str) -> None:
    from shepherd.plugins.abi import HookRequest, HookResponse
    from shepherd.plugins.marshal import call_request, call_response

    compiled = runtime.compile(getattr(guests, guest)())
    instance = compiled._idle[0]
    headers = (("content-type", "application/json"), ("x-tenant", "t\u00e9"), ("x-debug", "1"))
    request = HookRequest("POST", "/v1/chat/completions", "a=1", headers, '{"q": "secret \u2603"}', "rid-1")
    response = HookResponse(201, headers, '{"secret": true}', "rid-1")
    public_headers = [_public_record(name=n, value=v) for n, v in headers]
    for hook, direct, public in (
        (REQUEST_HOOK, lambda: call_request(instance.hooks[REQUEST_HOOK], instance.store, request),
         _public_record(method="POST", path="/v1/chat/completions", query="a=1", headers=public_headers,
                        body=request.body, request_id="rid-1")),
        (RESPONSE_HOOK, lambda: call_response(instance.hooks[RESPONSE_HOOK], instance.store, response),
         _public_record(status=201, headers=public_headers, body=response.body, request_id="rid-1")),
    ):
        instance.store.set_epoch_deadline(runtime.deadline_ticks)
        fast = parse_action(direct(), hook)
        instance.store.set_epoch_deadline(runtime.deadline_ticks)
        slow = parse_action(instance.hooks[hook](instance.store, public), hook)
        assert fast == slow


async def test_a_saturated_pool_refuses_new_chains_instead_of_queueing_them() -> None:
    import asyncio

    from shepherd.plugins.chain import skip_chain
    from shepherd.plugins.runtime import RuntimeBusy

    runtime = WasmRuntime(WasmConfig(enabled=True, max_execution_time_ms=200, thread_pool_size=1))
    try:
        runtime.max_pending = 1
        spinner = _plugin(runtime, guests.spinner(), "spinner")
        closed = _plugin(runtime, guests.noop(), "closed", mode="fail-closed")
        first = asyncio.ensure_future(runtime.run(lambda: _request_chain([spinner])))
        await asyncio.sleep(0)  # the first chain now holds the only slot
        with pytest.raises(RuntimeBusy):
            await runtime.run(lambda: _request_chain([closed]))
        assert (await first).failure is None  # fail-open spinner: timed out, request went on
        assert skip_chain([spinner, closed], REQUEST_HOOK) is closed
        assert closed.stats.info()["outcomes"] == {"busy": 1}
        assert runtime.pending == 0
    finally:
        runtime.close()


def test_closing_the_runtime_interrupts_running_guests() -> None:
    runtime = WasmRuntime(WasmConfig(enabled=True, max_execution_time_ms=300_000, thread_pool_size=1))
    spinner = _plugin(runtime, guests.spinner(), "spinner")
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(_request_chain([spinner])))
    thread.start()
    from shepherd.testing import wait_until

    wait_until(lambda: spinner.compiled.idle_instances == 0, 10, message="the guest to start spinning")
    runtime.close()
    thread.join(30)
    assert not thread.is_alive() and spinner.stats.info()["outcomes"] == {"timeout": 1}


def test_a_host_side_error_is_the_plugins_failure_not_the_gateways(runtime: WasmRuntime) -> None:
    broken = _plugin(runtime, guests.noop(), "broken")

    class _Exploding:
        max_body_size = 1024

        def call(self, hook: str, value: Any) -> Any:
            raise RuntimeError("surprise")

    broken.compiled = _Exploding()  # type: ignore[assignment]
    result = _request_chain([broken])
    assert result.failure is None and not result.changed  # fail-open
    assert broken.stats.info()["outcomes"] == {"host_error": 1}
