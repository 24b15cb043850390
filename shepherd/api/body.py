"""Reading and parsing request bodies once, with the errors a client can act on."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from shepherd.errors import GatewayError


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body; 413 before reading anything when Content-Length already says it is too big."""
    length = request.content_length
    if length is not None and length > limit:
        raise GatewayError(413, "request_body_too_large",
                           f"The request body is {length} bytes; the limit is {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise GatewayError(413, "request_body_too_large",
                           f"The request body exceeds the limit of {limit} bytes") from None


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
