"""Gateway-generated errors in the shape the client's API expects.

OpenAI clients get `{"error": {"message", "type", "param", "code"}}`; Anthropic clients (the
`/v1/messages` route) get `{"type": "error", "error": {"type", "message"}}`. Every error also carries
the `X-SMG-Error-Code` header so dashboards built for SMG keep working.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

ERROR_CODE_HEADER = "X-SMG-Error-Code"

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class GatewayError(Exception):
    """An error the gateway answers itself (as opposed to one relayed from a worker)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})

    def to_response(self, flavor: str = "openai") -> web.Response:
        return error_response(
            self.status, self.code, self.message, param=self.param, headers=self.headers, flavor=flavor
        )


def error_body(status: int, code: str, message: str, *, param: str | None = None, flavor: str = "openai") -> bytes:
    if flavor == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    flavor: str = "openai",
) -> web.Response:
    response = web.Response(
        status=status,
        body=error_body(status, code, message, param=param, flavor=flavor),
        content_type="application/json",
    )
    response.headers[ERROR_CODE_HEADER] = code
    if headers:
        response.headers.update(headers)
    return response


def flavor_for_path(path: str) -> str:
    """Anthropic-API routes answer errors in Anthropic's shape; everything else in OpenAI's."""
    return "anthropic" if path.startswith("/v1/messages") else "openai"
