"""What `x-smg-routed-worker-id` tells a client about the worker that served it.

The routers name the worker by its URL. Clients get, per `--routed-worker-header`: the worker's
registry id (the default: stable, and says nothing about the internal network), the URL itself,
or no header at all. The rewrite happens just before the headers go out, so it covers streamed
and buffered answers of every routing path alike; the access log keeps the URL.
"""

from __future__ import annotations

from aiohttp import web

from shepherd.context import AppContext
from shepherd.headers import ROUTED_WORKER_HEADER


def install_routed_worker_header(app: web.Application, context: AppContext) -> None:
    mode = context.config.routed_worker_header
    if mode == "url":
        return
    registry = context.registry

    async def rewrite(request: web.Request, response: web.StreamResponse) -> None:
        url = response.headers.get(ROUTED_WORKER_HEADER)
        if url is None:
            return
        worker = registry.get_by_url(url) if mode == "id" else None
        if worker is None:  # mode "none", or a worker removed meanwhile: say nothing rather than the URL
            del response.headers[ROUTED_WORKER_HEADER]
        else:
            response.headers[ROUTED_WORKER_HEADER] = worker.id

    app.on_response_prepare.append(rewrite)
