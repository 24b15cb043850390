"""Pick the routing path for a request from the kind of workers that serve its model.

HTTP workers get the transparent proxy; other connection modes (gRPC engines, external providers)
register their own router here. A model served by several kinds goes to the kind of its first
available worker. A model nobody serves goes to the external router while providers exist, which
re-reads their model lists before answering 404; requests without a model never go to a provider.

A request that names a --model-alias is rewritten here to the canonical model, once for every path:
workers see (and answers report) the canonical id, as in SMG.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from shepherd.routers.base import Router
from shepherd.workers.registry import RegistryEvent, WorkerRegistry
from shepherd.workers.worker import Worker


class RouterManager:
    def __init__(self, registry: WorkerRegistry, default: Router) -> None:
        self._registry = registry
        self._default = default
        self._by_mode: dict[str, Router] = {}
        self._only_http = True  # no other kind registered: every request takes the default path at once
        registry.subscribe(self._on_registry_event)

    def _on_registry_event(self, event: RegistryEvent, worker: Worker) -> None:
        self._only_http = all(w.connection_mode == "http" for w in self._registry.all())

    def register(self, connection_mode: str, router: Router) -> None:
        self._by_mode[connection_mode] = router

    def router_for(self, model: str | None) -> Router:
        if self._only_http or not self._by_mode:
            return self._default
        workers = self._registry.for_model(model)
        if model is None:
            workers = tuple(w for w in workers if w.connection_mode != "external")
        elif not workers and "external" in self._by_mode and any(
            w.connection_mode == "external" for w in self._registry.all()
        ):
            return self._by_mode["external"]
        mode = next((w.connection_mode for w in workers if w.is_available), None)
        if mode is None and workers:
            mode = workers[0].connection_mode
        return self._by_mode.get(mode or "http", self._default)

    async def route(
        self,
        request: web.Request,
        upstream_path: str,
        raw_body: bytes | None,
        body: Mapping[str, Any] | None,
        method: str = "POST",
    ) -> web.StreamResponse:
        model = body.get("model") if body else None
        if model is not None and self._registry.has_aliases and isinstance(model, str):
            canonical = self._registry.canonical(model)
            if canonical != model:
                assert body is not None
                body = {**body, "model": canonical}
                raw_body = orjson.dumps(body)
                model = canonical
        return await self.router_for(model).route(request, upstream_path, raw_body, body, method)
