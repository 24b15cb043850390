"""`GET /engine_metrics`: every HTTP engine's own Prometheus text, merged, each sample labelled with the
engine it came from (`worker_addr`). Public, like SMG's. The label is the worker's URL only where the
gateway already shows URLs (`--routed-worker-header url`); otherwise its id, so a public route does
not publish internal addresses."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from aiohttp import web

from shepherd.api.keys import CONTEXT
from shepherd.errors import GatewayError
from shepherd.workers.metadata import auth_headers
from shepherd.workers.worker import Worker

FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)
MAX_ENGINE_METRICS_BYTES = 16 * 1024 * 1024  # one engine's page; a larger one counts as failed
# A sample line: name, optional {labels}, then the value (and maybe a timestamp).
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?(\s.*)$")


async def engine_metrics(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    engines = list({w.base_url: w for w in context.registry.all() if w.connection_mode != "grpc"}.values())
    if not engines:
        raise GatewayError(503, "no_workers", "No HTTP workers are registered with the gateway")
    pages = await asyncio.gather(*(_fetch(context.session, w) for w in engines), return_exceptions=True)
    show_urls = context.config.routed_worker_header == "url"
    merged: list[str] = []
    seen_meta: set[str] = set()
    answered = 0
    for worker, page in zip(engines, pages, strict=True):
        if not isinstance(page, str):
            continue
        answered += 1
        merged.extend(_relabel(page, worker.base_url if show_urls else worker.id, seen_meta))
    if not answered:
        raise GatewayError(500, "engine_metrics_unavailable", "All backend requests failed")
    return web.Response(text="\n".join(merged) + "\n", content_type="text/plain", charset="utf-8")


async def _fetch(session: aiohttp.ClientSession, worker: Worker) -> str:
    async with session.get(worker.base_url + "/metrics", headers=auth_headers(worker.api_key),
                           timeout=FETCH_TIMEOUT) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        body = await response.content.read(MAX_ENGINE_METRICS_BYTES + 1)
        if len(body) > MAX_ENGINE_METRICS_BYTES:
            raise RuntimeError("metrics page too large")
        return body.decode("utf-8", "replace")


def _relabel(page: str, addr: str, seen_meta: set[str]) -> list[str]:
    """The page's samples with `worker_addr` added; # HELP/# TYPE lines once per family across pages."""
    value = addr.replace("\\", "\\\\").replace('"', '\\"')
    out = []
    for line in page.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            if line not in seen_meta:
                seen_meta.add(line)
                out.append(line)
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue  # not a sample line: dropped rather than corrupt the merged page
        name, labels, rest = match.groups()
        inner = labels[1:-1].rstrip(",") if labels else ""
        out.append(f'{name}{{{inner + "," if inner else ""}worker_addr="{value}"}}{rest}')
    return out
