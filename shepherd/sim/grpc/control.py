"""The HTTP control port of a simulated gRPC engine: health, faults, counters, recorded requests."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from shepherd.sim.faults import FaultError
from shepherd.sim.grpc.core import SimCore, load_row
from shepherd.sim.grpc.info import SimInfo
from shepherd.sim.kv_events import KvFaultError, kv_event_faults


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def control_app(core: SimCore, info: SimInfo) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def stats(request: web.Request) -> web.Response:
        body = core.stats.to_dict()
        body["engine"] = load_row(core, info.params)
        return _json(body)

    async def faults(request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.read())
                if not isinstance(changes, dict):
                    raise FaultError("the body must be a JSON object of fault settings")
                core.faults.update(changes)
            except (orjson.JSONDecodeError, FaultError) as exc:
                return _json({"error": str(exc)}, 400)
        return _json(core.faults.to_dict())

    async def requests(request: web.Request) -> web.Response:
        return _json(list(core.stats.recent))

    async def reset(request: web.Request) -> web.Response:
        core.reset()
        return _json({"status": "reset"})

    async def kv_events(request: web.Request) -> web.Response:
        """KV-event faults: lose the next `drop_batches` batches, or `disconnect` every subscriber."""
        engine = core.engine
        if engine is None:
            return _json({"error": "the canned engine has no KV cache"}, 400)
        try:
            changes = orjson.loads(await request.read()) if request.method == "POST" else None
            return _json(kv_event_faults(engine.events, engine.cached_blocks(), changes))
        except (orjson.JSONDecodeError, KvFaultError) as exc:
            return _json({"error": str(exc)}, 400)

    app = web.Application()
    app.router.add_get("/sim/kv_events", kv_events)
    app.router.add_post("/sim/kv_events", kv_events)
    app.router.add_get("/health", health)
    app.router.add_get("/sim/stats", stats)
    app.router.add_get("/sim/faults", faults)
    app.router.add_post("/sim/faults", faults)
    app.router.add_get("/sim/requests", requests)
    app.router.add_post("/sim/reset", reset)
    return app
