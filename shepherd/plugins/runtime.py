"""The WebAssembly host: one wasmtime Engine, compiled plugins, pooled instances, per-call limits.

* Compiling is slow (milliseconds for a small component, seconds for a big one): it runs on its own
  thread, never on the event loop, and happens once per plugin.
* Calls run on a small thread pool (`thread_pool_size`); wasmtime releases the GIL while a guest
  runs, so a guest that spins until its deadline costs a pool thread, never the event loop.
* Each call gets an epoch deadline (`max_execution_time_ms`); a background thread advances the
  engine's epoch every TICK_SECS. Each instance's store caps linear memory (`max_memory_pages`);
  the engine caps the guest stack (`max_stack_size`).
* Instances are pooled per plugin and reused across calls (at most one per pool thread), so a call
  costs no instantiation. An instance that failed in any way is dropped: a trap leaves a component
  instance unusable, and a guest that misbehaved once gets a fresh one next time.
* Guests get WASI p2 with nothing in it: no preopened directories, no environment, no network, no
  inherited stdio (standard toolchains import WASI even for code that never uses it).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import wasmtime
from wasmtime import component

from shepherd.config import WasmConfig
from shepherd.plugins.abi import REQUEST_HOOK, RESPONSE_HOOK, HookRequest, HookResponse, export_names
from shepherd.plugins.marshal import call_request, call_response
from shepherd.plugins.shape import check_hook_type

TICK_SECS = 0.01
PAGE_BYTES = 65536

T = TypeVar("T")


class PluginLoadError(ValueError):
    """The bytes are not a component this host can run (the message says why)."""


class RuntimeBusy(Exception):
    """Too many hook chains are waiting for a pool thread; the caller skips or refuses."""


class PluginFailure(Exception):
    """One call of a plugin failed. `kind` is a metric label: timeout, trap, stack_overflow,
    memory_limit, invalid_action, body_too_large, body_not_utf8, busy, host_error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def classify(error: Exception) -> PluginFailure:
    text = str(error)
    if "wasm trap: interrupt" in text:
        return PluginFailure("timeout", "the plugin ran past its execution time limit")
    if "call stack exhausted" in text or "stack overflow" in text:
        return PluginFailure("stack_overflow", "the plugin exhausted its stack")
    if "exceeds memory limits" in text or "memory limit" in text:
        return PluginFailure("memory_limit", "the plugin needs more memory than its limit")
    cause = text.rsplit("Caused by:", 1)[-1].strip().splitlines()
    return PluginFailure("trap", cause[0].strip() if cause else text[:200])


class _Instance:
    """One instantiated component in its own store, with the two hook functions looked up."""

    __slots__ = ("store", "hooks")

    def __init__(self, store: wasmtime.Store, hooks: dict[str, component.Func]) -> None:
        self.store = store
        self.hooks = hooks


class CompiledPlugin:
    """A compiled component and its pool of ready instances."""

    def __init__(self, runtime: WasmRuntime, compiled: component.Component, export: str) -> None:
        self._runtime = runtime
        self._component = compiled
        self.export = export
        self.abi_version = export.rsplit("@", 1)[1]
        self.max_body_size = runtime.config.max_body_size
        hooks_index = compiled.get_export_index(export)
        assert hooks_index is not None
        self._indexes = {}
        for hook in (REQUEST_HOOK, RESPONSE_HOOK):
            index = compiled.get_export_index(hook, hooks_index)
            if index is None:
                raise PluginLoadError(f"the component's {export} does not export {hook}")
            self._indexes[hook] = index
        self._idle: deque[_Instance] = deque()
        first = self._instantiate()  # fails here, at load time, for a component that cannot start
        for hook, func in first.hooks.items():
            problem = check_hook_type(hook, func.type(first.store))
            if problem:
                raise PluginLoadError(f"{hook} does not match {export}: {problem}")
        self._idle.append(first)

    @property
    def idle_instances(self) -> int:
        return len(self._idle)

    def _instantiate(self) -> _Instance:
        runtime = self._runtime
        store = wasmtime.Store(runtime.engine)
        store.set_limits(memory_size=runtime.config.max_memory_pages * PAGE_BYTES)
        store.set_wasi(wasmtime.WasiConfig())
        store.set_epoch_deadline(runtime.deadline_ticks)
        try:
            instance = runtime.linker.instantiate(store, self._component)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise classify(exc) from None
        hooks = {}
        for hook, index in self._indexes.items():
            func = instance.get_func(store, index)
            if func is None:
                raise PluginLoadError(f"{hook} is not a function")
            hooks[hook] = func
        return _Instance(store, hooks)

    def call(self, hook: str, value: HookRequest | HookResponse) -> Any:
        """Run one hook on a pooled instance (blocking: call it on the runtime's pool)."""
        try:
            instance = self._idle.pop()
        except IndexError:
            instance = self._instantiate()
        instance.store.set_epoch_deadline(self._runtime.deadline_ticks)
        if self._runtime.closed:
            # close() already moved the epoch past every deadline set before it: this call, which set
            # its own after, must not spin on for the whole limit (read after setting, so no gap).
            instance.store.set_epoch_deadline(0)
        try:
            if isinstance(value, HookRequest):
                result = call_request(instance.hooks[REQUEST_HOOK], instance.store, value)
            else:
                result = call_response(instance.hooks[RESPONSE_HOOK], instance.store, value)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            raise classify(exc) from None  # the instance is dropped with the exception
        self._idle.append(instance)
        return result


class WasmRuntime:
    def __init__(self, config: WasmConfig) -> None:
        self.config = config
        engine_config = wasmtime.Config()
        engine_config.epoch_interruption = True
        engine_config.max_wasm_stack = config.max_stack_size
        engine_config.wasm_component_model = True
        self.engine = wasmtime.Engine(engine_config)
        self.linker = component.Linker(self.engine)
        self.linker.add_wasip2()
        # +1: the tick in progress when the call starts may end at once.
        self.deadline_ticks = math.ceil(config.max_execution_time_ms / 1000 / TICK_SECS) + 1
        self._calls = ThreadPoolExecutor(config.thread_pool_size, thread_name_prefix="wasm-call")
        # Chains queued or running; past this, requests do not wait for a thread (bounded memory
        # and wait when every pool thread is held by slow guests).
        self.max_pending = config.thread_pool_size * 64
        self.pending = 0
        self._compiler = ThreadPoolExecutor(1, thread_name_prefix="wasm-compile")
        self._stop = threading.Event()
        self.closed = False
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_SECS):
            self.engine.increment_epoch()

    def compile(self, wasm: bytes) -> CompiledPlugin:
        """Compile and validate a component (blocking: use compile_async from the event loop)."""
        if wasm[:4] != b"\0asm":
            raise PluginLoadError("not a WebAssembly binary (it does not start with \\0asm)")
        try:
            compiled = component.Component(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise PluginLoadError(f"not a valid WebAssembly component: {_first_line(exc)}") from None
        exports = compiled.type.exports(self.engine)
        for name in export_names():
            if name in exports:
                try:
                    return CompiledPlugin(self, compiled, name)
                except PluginFailure as exc:
                    raise PluginLoadError(f"the component cannot be instantiated: {exc}") from None
        raise PluginLoadError(f"the component exports none of {', '.join(export_names())} "
                              f"(it exports: {', '.join(sorted(exports)) or 'nothing'})")

    async def compile_async(self, wasm: bytes) -> CompiledPlugin:
        return await asyncio.get_running_loop().run_in_executor(self._compiler, self.compile, wasm)

    async def run(self, work: Callable[[], T]) -> T:
        """Run plugin calls on the call pool; RuntimeBusy when max_pending chains already wait."""
        if self.pending >= self.max_pending:
            raise RuntimeBusy()
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._calls, work)
        finally:
            self.pending -= 1

    def close(self) -> None:
        self.closed = True  # before the epoch moves: a call that sets its deadline later sees it
        self._stop.set()
        self._ticker.join()
        for _ in range(self.deadline_ticks + 1):  # interrupt every guest still running, so its thread ends
            self.engine.increment_epoch()
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._compiler.shutdown(wait=False, cancel_futures=True)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else error.__class__.__name__
