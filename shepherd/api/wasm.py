"""Admin routes for WASM plugins (control-plane auth, like every admin route).

    POST   /wasm          add a plugin: {"name", "sha256", "attach", "order", "failure_mode",
                          "path" | "wasm_base64"} -> 201 with the plugin
    GET    /wasm          the plugins in run order, with their counters, the limits and ABI versions
    GET    /wasm/{id}     one plugin
    DELETE /wasm/{id}     detach it (requests in flight finish with the chain they started with)
    POST   /wasm/reload   re-read --wasm-plugins-file (unchanged entries keep their plugin)
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from shepherd.api.body import parse_json_object, read_body
from shepherd.api.keys import CONTEXT
from shepherd.errors import GatewayError
from shepherd.plugins.registry import Plugin, PluginError, PluginRegistry, PluginSpec


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _registry(request: web.Request) -> PluginRegistry:
    registry = request.app[CONTEXT].plugins
    if registry is None:
        raise GatewayError(404, "wasm_disabled", "WASM plugins are off; start the gateway with --enable-wasm")
    return registry


def _plugin_or_404(registry: PluginRegistry, request: web.Request) -> Plugin:
    plugin_id = request.match_info["plugin_id"]
    plugin = registry.get(plugin_id)
    if plugin is None:
        raise GatewayError(404, "plugin_not_found", f"No plugin with id {plugin_id}")
    return plugin


async def add_plugin(request: web.Request) -> web.Response:
    registry = _registry(request)
    limit = registry.config.max_module_size * 4 // 3 + 64 * 1024  # base64 plus the other fields
    raw = await read_body(request, limit)
    try:
        # An upload is tens of MB of base64: parse and decode it off the event loop.
        spec = await asyncio.to_thread(
            lambda: PluginSpec.from_json(parse_json_object(raw), registry.config.max_module_size))
        plugin = await registry.add(spec)
    except PluginError as exc:
        raise GatewayError(exc.status, exc.code, exc.message) from None
    return _json(plugin.info(), status=201)


async def list_plugins(request: web.Request) -> web.Response:
    return _json(_registry(request).info())


async def get_plugin(request: web.Request) -> web.Response:
    registry = _registry(request)
    return _json(_plugin_or_404(registry, request).info())


async def remove_plugin(request: web.Request) -> web.Response:
    registry = _registry(request)
    plugin = _plugin_or_404(registry, request)
    registry.remove(plugin.id)
    return _json({"id": plugin.id, "name": plugin.spec.name, "status": "removed"})


async def reload_plugins(request: web.Request) -> web.Response:
    try:
        summary = await _registry(request).reload_file()
    except PluginError as exc:
        raise GatewayError(exc.status, exc.code, exc.message) from None
    return _json(summary, status=200 if not summary["errors"] else 207)


def add_wasm_routes(app: web.Application) -> None:
    app.router.add_post("/wasm", add_plugin)
    app.router.add_get("/wasm", list_plugins)
    app.router.add_post("/wasm/reload", reload_plugins)
    app.router.add_get("/wasm/{plugin_id}", get_plugin)
    app.router.add_delete("/wasm/{plugin_id}", remove_plugin)
