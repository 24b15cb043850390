"""Reading and parsing request bodies once, with the errors a client can act on."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from shepherd.api.keys import CONTEXT
from shepherd.context import AppContext
from shepherd.errors import GatewayError
from shepherd.middleware.body_budget import BodyBudget
from shepherd.request_keys import BODY_BYTES, RAW_BODY, peek


async def read_body(request: web.Request, limit: int, context: AppContext | None = None) -> bytes:
    """The raw body, read within `--body-read-timeout-secs` (408 `request_body_timeout`), with no wait
    on the client longer than `--stream-body-stall-timeout-secs` (408 `request_body_stalled`), and
    within the gateway-wide body budget (503); 413 before reading anything when Content-Length already
    says it is over `limit`. The bytes stay reserved until the request is done (the gateway middleware
    gives them back). A body read before (by a plugin hook) is not read again: every reader gets the
    same bytes. `context`: the app's, when the caller holds it (else it is looked up)."""
    cached = peek(request, RAW_BODY)
    if cached is not None:
        return cached
    length = request.content_length
    if length is not None and length > limit:
        raise GatewayError(413, "request_body_too_large",
                           f"The request body is {length} bytes; the limit is {limit} bytes")
    if context is None:
        context = request.app[CONTEXT]
    content = request.content
    if length is not None and content.is_eof():
        # The whole body already arrived with the head (most requests): it is taken from the buffer
        # as it is, with no deadline to arm and no read to wait on.
        _reserve(request, context.bodies, length)
        body = content.read_nowait()
        request[RAW_BODY] = body
        return body
    limits = context.config.limits
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.body_read_timeout_secs
    stall = limits.stream_body_stall_timeout_secs
    stall_bound = _StallBound(loop, deadline, stall) if 0 < stall < limits.body_read_timeout_secs else None
    try:
        async with asyncio.timeout_at(deadline if stall_bound is None else stall_bound.next()) as bound:
            body = await _read(request, limit, length, context.bodies, bound, stall_bound)
            request[RAW_BODY] = body
            return body
    except TimeoutError:
        if (when := bound.when()) is not None and when < deadline:
            raise GatewayError(408, "request_body_stalled",
                               f"The request body stalled: nothing arrived for {stall:g}s",
                               headers={"Connection": "close"}) from None
        raise GatewayError(408, "request_body_timeout",
                           f"The request body did not arrive within {limits.body_read_timeout_secs:g}s",
                           headers={"Connection": "close"}) from None


class _StallBound:
    """When the body read times out next: `stall` seconds after the last bytes, at most at the deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, stall: float) -> None:
        self._loop, self._deadline, self._stall = loop, deadline, stall

    def next(self) -> float:
        return min(self._deadline, self._loop.time() + self._stall)


async def _read(request: web.Request, limit: int, length: int | None, budget: BodyBudget,
                bound: asyncio.Timeout | None = None, stall: _StallBound | None = None) -> bytes:
    if length is not None:  # reserve it all at once: a body that cannot fit is refused unread
        _reserve(request, budget, length)
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise GatewayError(413, "request_body_too_large", f"The request body exceeds the limit of {limit} bytes",
                               headers={"Connection": "close"})
        if length is None:
            _reserve(request, budget, len(chunk))
        parts.append(chunk)
        if bound is not None and stall is not None:
            bound.reschedule(stall.next())  # the client sent something: the stall clock starts again
    return b"".join(parts)


def _reserve(request: web.Request, budget: BodyBudget, size: int) -> None:
    if not budget.take(size):
        raise GatewayError(503, "request_bodies_over_budget",
                           "The gateway holds too many request bodies at once; retry shortly",
                           headers={"Retry-After": "1", "Connection": "close"})
    request[BODY_BYTES] = (peek(request, BODY_BYTES) or 0) + size


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise GatewayError(400, "invalid_json", "The request body is empty; a JSON object is required")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, "invalid_json", f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "invalid_json", "The request body must be a JSON object")
    return body
