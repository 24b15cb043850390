"""Which routing path a request takes, by the kind of workers serving its model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from shepherd.routers.manager import RouterManager
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker


class NamedRouter:
    def __init__(self, name: str) -> None:
        self.name = name

    async def route(self, request: web.Request, upstream_path: str, raw_body: bytes | None,
                    body: Mapping[str, Any] | None, method: str = "POST") -> web.StreamResponse:
        raise NotImplementedError


def test_models_go_to_the_router_of_their_workers_kind() -> None:
    registry = WorkerRegistry()
    http, external = NamedRouter("http"), NamedRouter("external")
    manager = RouterManager(registry, http)
    manager.register("external", external)
    registry.add(Worker(id="1", url="http://local:1", model_ids=("local",)))
    assert manager.router_for("anything") is http  # only HTTP workers: the default path, no lookups
    registry.add(Worker(id="2", url="https://api.example", model_ids=("claude-x-20250101",),
                        connection_mode="external", provider="anthropic", aliases={"claude-x": "claude-x-20250101"}))
    assert manager.router_for("local") is http
    assert manager.router_for("claude-x-20250101") is external
    assert manager.router_for("claude-x") is external  # an alias
    assert manager.router_for("unknown") is external  # providers may list it after a refresh
    assert manager.router_for(None) is http  # requests without a model never go to a provider
    registry.remove("2")
    assert manager.router_for("unknown") is http


class RecordingRouter(NamedRouter):
    def __init__(self) -> None:
        super().__init__("recording")
        self.seen: list[tuple[bytes | None, Mapping[str, Any] | None]] = []

    async def route(self, request: web.Request, upstream_path: str, raw_body: bytes | None,
                    body: Mapping[str, Any] | None, method: str = "POST") -> web.StreamResponse:
        self.seen.append((raw_body, body))
        return web.Response()


async def test_a_model_alias_is_routed_as_its_canonical_model() -> None:
    registry = WorkerRegistry({"fast": "big-model", "shadowed": "big-model"})
    router = RecordingRouter()
    manager = RouterManager(registry, router)
    registry.add(Worker(id="1", url="http://a:1", model_ids=("big-model",)))
    registry.add(Worker(id="2", url="http://b:1", model_ids=("shadowed",)))
    request: Any = object()
    await manager.route(request, "/v1/chat/completions", b'{"model":"fast","stream":true}',
                        {"model": "fast", "stream": True})
    raw, body = router.seen[-1]
    assert body == {"model": "big-model", "stream": True} and raw is not None
    assert json.loads(raw) == {"model": "big-model", "stream": True}  # the worker sees the canonical id
    await manager.route(request, "/v1/chat/completions", b'{"model":"shadowed"}', {"model": "shadowed"})
    assert router.seen[-1][1] == {"model": "shadowed"}  # a worker's own model wins over an alias
    await manager.route(request, "/v1/chat/completions", b'{"model":"big-model"}', {"model": "big-model"})
    assert router.seen[-1][0] == b'{"model":"big-model"}'  # untouched: not an alias


def test_an_alias_answers_for_its_models_workers_while_they_serve_it() -> None:
    registry = WorkerRegistry({"fast": "big-model"})
    assert not registry.serves("fast") and registry.aliases_of("big-model") == ["fast"]
    worker = Worker(id="1", url="http://a:1", model_ids=("big-model",))
    registry.add(worker)
    assert registry.for_model("fast") == (worker,) and registry.serves("fast")
    assert registry.canonical("fast") == "big-model" and registry.canonical("other") == "other"
    registry.remove("1")
    assert not registry.serves("fast")
