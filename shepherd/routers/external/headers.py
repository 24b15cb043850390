"""Headers toward a provider and back.

Toward the provider only an allow-list crosses (credentials are the worker's, never the client's
gateway key); compression is never requested, so error bodies and translated streams can be read.
Back to the client only the content type and the provider's rate-limit hints cross: cookies,
account and tracing headers from a provider are not the client's business.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

from shepherd.headers import REQUEST_ID_HEADER, presented_key
from shepherd.providers.kinds import ANTHROPIC_VERSION, ProviderKind, auth_headers

_FORWARDED_TRACING = ("traceparent", "tracestate")
_ANTHROPIC_CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")
_RESPONSE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")


def provider_request_headers(
    kind: ProviderKind,
    worker_api_key: str | None,
    client_headers: Mapping[str, str],
    request_id: str,
    gateway_keys: frozenset[str],
    *,
    client_api: str,
    stream: bool,
) -> dict[str, str]:
    key = worker_api_key or client_provider_key(client_headers, gateway_keys)
    headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json",
               REQUEST_ID_HEADER: request_id}
    for name in _FORWARDED_TRACING:
        if name in client_headers:
            headers[name] = client_headers[name]
    headers.update(auth_headers(kind, key))
    if kind.api == "anthropic" and client_api == "anthropic":
        # An Anthropic client picked its API version and betas; they hold for an Anthropic backend.
        for name in _ANTHROPIC_CLIENT_HEADERS:
            if client_headers.get(name):
                headers[name] = client_headers[name]
        headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
    return headers


def client_provider_key(client_headers: Mapping[str, str], gateway_keys: frozenset[str]) -> str | None:
    """Bring-your-own-key: a worker without a key of its own uses the client's provider key, but never
    one of the gateway's own keys."""
    token = presented_key(client_headers)
    if not token or token in gateway_keys:
        return None
    return token


def client_response_headers(upstream_headers: Mapping[str, str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream_headers.items():
        lower = name.lower()
        if lower in ("content-type", "retry-after") or lower.startswith(_RESPONSE_PREFIXES):
            headers.add(name, value)
    return headers
