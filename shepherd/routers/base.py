"""The interface every routing path (HTTP proxy, PD, gRPC pipeline, external providers) implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from aiohttp import web


class Router(Protocol):
    def serves_messages(self, model: str | None) -> bool:
        """False: `/v1/messages` for this model is translated to the path's Chat Completions."""
        ...

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


@runtime_checkable
class TokenCounter(Protocol):
    """A path that tokenizes prompts itself (gRPC) can count a Chat request's prompt tokens."""

    async def count_prompt_tokens(self, chat_body: Mapping[str, Any]) -> int: ...
