"""The plugin registry: what is attached where, in which order, and how each plugin is doing.

The data plane reads `request_chain` / `response_chain`, immutable tuples replaced whole on every
change, so a request keeps the chain it started with and never waits for the control plane.
Adding a plugin reads and compiles it off the event loop; it joins the chains only once it is
ready. A plugin from the plugins file keeps its id, compiled code, pool and counters across
reloads of that file as long as its entry (bytes and settings) is unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from shepherd.config import WasmConfig
from shepherd.plugins.abi import ABI_VERSIONS, REQUEST_HOOK, RESPONSE_HOOK
from shepherd.plugins.runtime import CompiledPlugin, PluginLoadError, WasmRuntime

if TYPE_CHECKING:
    from shepherd.observability.metrics import Metrics

log = logging.getLogger("shepherd.plugins")

ATTACH_POINTS = (REQUEST_HOOK, RESPONSE_HOOK)
FAILURE_MODES = ("fail-open", "fail-closed")
_BLOCKED_PREFIXES = ("/etc/", "/proc/", "/sys/", "/dev/", "/boot/", "/root/", "/var/log/", "/var/run/")
_MAX_NAME = 128


class PluginError(Exception):
    """A plugin cannot be added or removed; `status` and `code` are for the admin API's answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _invalid(message: str) -> PluginError:
    return PluginError(400, "invalid_plugin_spec", message)


@dataclass(frozen=True)
class PluginSpec:
    name: str
    sha256: str  # hex digest the bytes must have
    attach: tuple[str, ...]
    order: int = 0  # lower runs first; equal orders run in the order they were added
    failure_mode: str = "fail-open"
    path: str | None = None
    wasm: bytes | None = field(default=None, repr=False)  # an upload (wasm_base64)

    @classmethod
    def from_json(cls, data: Any, max_module_size: int) -> PluginSpec:
        if not isinstance(data, Mapping):
            raise _invalid("a plugin is a JSON object")
        known = {"name", "sha256", "attach", "order", "failure_mode", "path", "wasm_base64"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _invalid(f"unknown field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME or not name.isprintable():
            raise _invalid(f"'name' must be a non-empty printable string of at most {_MAX_NAME} characters")
        digest = data.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise _invalid("'sha256' must be the 64-digit hex SHA-256 of the component")
        attach = data.get("attach")
        if isinstance(attach, str):
            attach = [attach]
        if (not isinstance(attach, list) or not attach or any(a not in ATTACH_POINTS for a in attach)
                or len(set(attach)) != len(attach)):
            raise _invalid(f"'attach' must list one or both of {', '.join(ATTACH_POINTS)}")
        order = data.get("order", 0)
        if not isinstance(order, int) or isinstance(order, bool) or not -1_000_000 <= order <= 1_000_000:
            raise _invalid("'order' must be an integer between -1000000 and 1000000")
        mode = data.get("failure_mode", "fail-open")
        if mode not in FAILURE_MODES:
            raise _invalid(f"'failure_mode' must be one of {', '.join(FAILURE_MODES)}")
        path, upload = data.get("path"), data.get("wasm_base64")
        if (path is None) == (upload is None):
            raise _invalid("give exactly one of 'path' (a .wasm file on the gateway's host) or 'wasm_base64'")
        wasm = None
        if path is not None and (not isinstance(path, str) or not path):
            raise _invalid("'path' must be a non-empty string")
        if upload is not None:
            if not isinstance(upload, str) or len(upload) > (max_module_size + 2) // 3 * 4 + 4:
                raise PluginError(413, "plugin_too_large", f"the component exceeds {max_module_size} bytes")
            try:
                wasm = base64.b64decode(upload, validate=True)
            except (binascii.Error, ValueError):
                raise _invalid("'wasm_base64' is not valid base64") from None
        return cls(name=name, sha256=digest.lower(), attach=tuple(attach), order=order, failure_mode=mode,
                   path=path, wasm=wasm)

    def settings(self) -> tuple[Any, ...]:
        """What, besides the bytes, makes two specs the same plugin."""
        return (self.name, self.sha256, self.attach, self.order, self.failure_mode, self.path)


def read_plugin_file(path: str, max_module_size: int) -> bytes:
    """Read a component from the gateway's file system, refusing what a plugin path must not be
    (blocking: call it in a thread)."""
    parts = path.replace("\\", "/").split("/")
    if ".." in parts or "." in parts:
        raise _invalid("'path' may not contain '.' or '..' components")
    resolved = os.path.realpath(path)
    for candidate in (os.path.abspath(path), resolved):
        if not candidate.endswith(".wasm"):
            raise _invalid("'path' must name a .wasm file (after following links too)")
        if candidate.startswith(_BLOCKED_PREFIXES):
            raise _invalid("'path' points into a system directory")
    if os.path.exists(resolved) and not os.path.isfile(resolved):
        raise _invalid("'path' is not a regular file")  # checked first: opening a FIFO would block
    try:
        with open(resolved, "rb") as handle:
            data = handle.read(max_module_size + 1)
    except FileNotFoundError:
        raise PluginError(404, "plugin_file_not_found", f"no file at {path}") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        raise _invalid(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise _invalid(f"{path} is empty")
    if len(data) > max_module_size:
        raise PluginError(413, "plugin_too_large", f"{path} exceeds the {max_module_size}-byte module limit")
    return data


class PluginStats:
    """Counters of one plugin, updated from the call pool's threads."""

    def __init__(self, name: str, metrics: Metrics | None) -> None:
        self._lock = threading.Lock()
        self._name = name
        self._metrics = metrics
        self.calls = 0
        self.failures = 0
        self.outcomes: dict[str, int] = {}
        self.total_secs = 0.0
        self.max_secs = 0.0
        self.last_failure: str | None = None

    def record(self, hook: str, outcome: str, secs: float) -> None:
        failed = outcome not in ("continue", "modify", "reject")
        with self._lock:
            self.calls += 1
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self.total_secs += secs
            self.max_secs = max(self.max_secs, secs)
            if failed:
                self.failures += 1
                self.last_failure = outcome
            if self._metrics is not None:  # under the lock: the series are plain values, and calls run in threads
                self._metrics.wasm_calls(self._name, hook, outcome).inc()
                self._metrics.wasm_duration(self._name, hook).observe(secs)

    def info(self) -> dict[str, Any]:
        with self._lock:
            calls = self.calls
            return {"calls": calls, "successful": calls - self.failures, "failed": self.failures,
                    "outcomes": dict(self.outcomes), "total_ms": round(self.total_secs * 1000, 3),
                    "max_ms": round(self.max_secs * 1000, 3),
                    "average_ms": round(self.total_secs * 1000 / calls, 3) if calls else 0.0,
                    "last_failure": self.last_failure}


@dataclass
class Plugin:
    id: str
    spec: PluginSpec
    compiled: CompiledPlugin
    size_bytes: int
    source: str  # "api" or "file"
    seq: int  # registration order, the tie-break for equal `order`
    stats: PluginStats
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def info(self) -> dict[str, Any]:
        spec = self.spec
        return {"id": self.id, "name": spec.name, "sha256": spec.sha256, "size_bytes": self.size_bytes,
                "attach": list(spec.attach), "order": spec.order, "failure_mode": spec.failure_mode,
                "path": spec.path, "source": self.source, "abi_version": self.compiled.abi_version,
                "created_at": self.created_at, "idle_instances": self.compiled.idle_instances,
                "stats": self.stats.info()}


class PluginRegistry:
    def __init__(self, config: WasmConfig, metrics: Metrics | None) -> None:
        self.config = config
        self.runtime = WasmRuntime(config)
        self._metrics = metrics
        self._plugins: dict[str, Plugin] = {}
        self._pending = 0  # adds that are reading or compiling
        self._seq = 0
        self._file_lock = asyncio.Lock()
        self.request_chain: tuple[Plugin, ...] = ()
        self.response_chain: tuple[Plugin, ...] = ()

    @property
    def abi_versions(self) -> tuple[str, ...]:
        return ABI_VERSIONS

    def all(self) -> list[Plugin]:
        return sorted(self._plugins.values(), key=lambda p: (p.spec.order, p.seq))

    def get(self, plugin_id: str) -> Plugin | None:
        return self._plugins.get(plugin_id)

    def _publish(self) -> None:
        ordered = self.all()
        self.request_chain = tuple(p for p in ordered if REQUEST_HOOK in p.spec.attach)
        self.response_chain = tuple(p for p in ordered if RESPONSE_HOOK in p.spec.attach)

    def _check_unique(self, spec: PluginSpec, replacing: str | None = None) -> None:
        for plugin in self._plugins.values():
            if plugin.id == replacing:
                continue
            if plugin.spec.sha256 == spec.sha256:
                raise PluginError(409, "plugin_already_loaded",
                                  f"a component with this SHA-256 is already loaded as {plugin.spec.name!r} "
                                  f"({plugin.id})")
            if plugin.spec.name == spec.name:
                raise PluginError(409, "plugin_name_taken", f"a plugin named {spec.name!r} is loaded ({plugin.id})")

    async def add(self, spec: PluginSpec, source: str = "api", replacing: str | None = None) -> Plugin:
        self._check_unique(spec, replacing)
        if replacing is None and len(self._plugins) + self._pending >= self.config.max_plugins:
            raise PluginError(409, "plugin_limit_reached",
                              f"{self.config.max_plugins} plugins are loaded or loading (--wasm-max-plugins)")
        self._pending += 1
        try:
            wasm = spec.wasm
            if wasm is None:
                assert spec.path is not None
                wasm = await asyncio.to_thread(read_plugin_file, spec.path, self.config.max_module_size)
            elif len(wasm) > self.config.max_module_size:
                raise PluginError(413, "plugin_too_large",
                                  f"the component exceeds the {self.config.max_module_size}-byte module limit")
            digest = await asyncio.to_thread(lambda: hashlib.sha256(wasm).hexdigest())
            if digest != spec.sha256:
                raise PluginError(400, "sha256_mismatch", f"the component's SHA-256 is {digest}, not {spec.sha256}")
            try:
                compiled = await self.runtime.compile_async(wasm)
            except PluginLoadError as exc:
                raise PluginError(400, "invalid_component", str(exc)) from None
        finally:
            self._pending -= 1
        self._check_unique(spec, replacing)  # another add may have won while this one compiled
        self._seq += 1
        plugin = Plugin(id=str(uuid.uuid4()), spec=spec, compiled=compiled, size_bytes=len(wasm), source=source,
                        seq=self._seq, stats=PluginStats(spec.name, self._metrics))
        if replacing is not None:
            self._plugins.pop(replacing, None)
        self._plugins[plugin.id] = plugin
        self._publish()
        log.info("plugin %s (%s, %d bytes) attached to %s", spec.name, plugin.id, len(wasm), ", ".join(spec.attach))
        return plugin

    def remove(self, plugin_id: str) -> Plugin:
        plugin = self._plugins.pop(plugin_id, None)
        if plugin is None:
            raise PluginError(404, "plugin_not_found", f"no plugin with id {plugin_id}")
        self._publish()  # in-flight requests finish with the chain they started with
        log.info("plugin %s (%s) removed", plugin.spec.name, plugin.id)
        return plugin

    async def reload_file(self) -> dict[str, Any]:
        """Bring the plugins from the plugins file in line with the file. Unchanged entries keep
        their plugin (id, compiled code, counters); plugins added through the API are left alone.
        A bad entry is reported and leaves the plugin it would have replaced in place."""
        path = self.config.plugins_file
        if path is None:
            raise PluginError(409, "no_plugins_file", "the gateway was started without --wasm-plugins-file")
        async with self._file_lock:
            entries = await asyncio.to_thread(_read_plugins_file, path)
            kept, added, removed, errors = [], [], [], []
            wanted: dict[str, PluginSpec] = {}
            for index, entry in enumerate(entries):
                try:
                    spec = PluginSpec.from_json(entry, self.config.max_module_size)
                except PluginError as exc:
                    errors.append({"index": index, "code": exc.code, "message": exc.message})
                    continue
                if spec.name in wanted:
                    errors.append({"index": index, "code": "duplicate_name",
                                   "message": f"the file names {spec.name!r} twice; the first entry is used"})
                    continue
                wanted[spec.name] = spec
            current = {p.spec.name: p for p in self._plugins.values() if p.source == "file"}
            for name, plugin in current.items():
                if name not in wanted:
                    self.remove(plugin.id)
                    removed.append(plugin.id)
            for name, spec in wanted.items():
                existing = current.get(name)
                if existing is not None and existing.spec.settings() == spec.settings():
                    kept.append(existing.id)
                    continue
                try:
                    plugin = await self.add(spec, source="file", replacing=existing.id if existing else None)
                except PluginError as exc:
                    errors.append({"name": name, "code": exc.code, "message": exc.message})
                    continue
                added.append(plugin.id)
            return {"kept": kept, "added": added, "removed": removed, "errors": errors}

    def info(self) -> dict[str, Any]:
        plugins = self.all()
        totals = [p.stats.info() for p in plugins]
        return {"plugins": [p.info() for p in plugins], "abi_versions": list(ABI_VERSIONS),
                "limits": {name: getattr(self.config, name) for name, *_ in WasmConfig._RANGES},
                "totals": {"calls": sum(t["calls"] for t in totals), "failed": sum(t["failed"] for t in totals)}}

    def close(self) -> None:
        self.runtime.close()


def _read_plugins_file(path: str) -> list[Any]:
    try:
        with open(path, "rb") as handle:
            data = orjson.loads(handle.read())
    except FileNotFoundError:
        raise PluginError(400, "plugins_file_not_found", f"--wasm-plugins-file {path} does not exist") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise PluginError(400, "invalid_plugins_file", f"cannot read --wasm-plugins-file {path}: {exc}") from None
    entries = data.get("plugins") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise PluginError(400, "invalid_plugins_file",
                          "the plugins file holds a JSON list of plugins (or {\"plugins\": [...]})")
    return entries

