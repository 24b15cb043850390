"""A provider's error answer, re-expressed for the client.

* The client's API shape always: an OpenAI client gets `{"error": {...}}`, an Anthropic client
  `{"type": "error", "error": {...}}`, whatever the provider speaks. A provider that speaks the
  client's API has its body passed on as it is (after redaction).
* The status is the provider's, except that a provider refusing the *gateway's* credentials (401/403
  with the worker's configured key) is a gateway fault, not the client's: 502, with a message that
  says so. Anthropic's 529 (overloaded) becomes 503 for OpenAI clients, who do not know 529.
* The worker's key never appears in the body: it is redacted wherever the provider echoed it.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from shepherd.errors import error_response
from shepherd.providers.error_body import parse_provider_error
from shepherd.providers.redact import redact

AUTH_FAILED_CODE = "upstream_authentication_failed"


def provider_error_response(
    status: int,
    payload: bytes,
    upstream_headers: Mapping[str, str],
    *,
    client_api: str,
    backend_api: str,
    gateway_credentials: bool,
    secrets: list[str | None],
    model: str,
    provider: str,
) -> web.Response:
    error = parse_provider_error(payload)
    message = redact(error.message, secrets)
    extra = {k: v for k, v in upstream_headers.items() if k.lower() == "retry-after"}
    if status in (401, 403) and gateway_credentials:
        return error_response(502, AUTH_FAILED_CODE,
                              f"The {provider} provider serving model `{model}` rejected the gateway's credentials "
                              f"(HTTP {status}): {message}", headers=extra, flavor=client_api)
    if client_api == backend_api:
        body = redact(payload.decode("utf-8", "replace"), secrets).encode()
        content_type = upstream_headers.get("content-type", "application/json")
        response = web.Response(status=status, body=body, headers={"Content-Type": content_type, **extra})
        return response
    if client_api == "openai" and status == 529:
        status = 503
    code = error.code or error.kind or _code_for(status)
    return error_response(status, code, message, headers=extra, flavor=client_api)


def _code_for(status: int) -> str:
    return {400: "invalid_request", 404: "not_found", 408: "timeout", 413: "request_too_large",
            429: "rate_limited"}.get(status, "upstream_error")
