"""The interface every routing path (HTTP proxy, PD, gRPC pipeline, external providers) implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web


class Router(Protocol):
    async def route(
        self,
        request: web.Request,
        upstream_path: str,
        raw_body: bytes | None,
        body: Mapping[str, Any] | None,
        method: str = "POST",
    ) -> web.StreamResponse:
        """Serve one request: choose a worker, call it, answer the client (or raise GatewayError)."""
        ...
