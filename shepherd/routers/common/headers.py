"""Which headers cross the gateway, in each direction.

Requests: everything end-to-end is forwarded (so engine- and SDK-specific headers keep working),
minus hop-by-hop headers (RFC 9110 §7.6.1, plus any named in `Connection`), headers that describe
the client's connection to us, and gateway-only credentials. Responses: the worker's headers minus
hop-by-hop ones, the ones our own server writes, and Set-Cookie.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from shepherd.headers import CREDENTIAL_HEADERS, REQUEST_ID_HEADER, ROUTED_WORKER_HEADER, credential_in

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})

# Request headers the gateway sets itself or that only describe the client's hop.
_NOT_FORWARDED_REQUEST = HOP_BY_HOP | {"host", "content-length", "expect"}
# Response headers that our server writes itself (or that must not be duplicated), and cookies: a
# worker is not the origin the client talks to, and one worker's cookie would be sent to all.
_NOT_FORWARDED_RESPONSE = HOP_BY_HOP | {"content-length", "date", "server", "set-cookie"}



def _connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    value = headers.get("connection")
    if not value:
        return frozenset()
    return frozenset(token.strip().lower() for token in value.split(","))


def upstream_request_headers(
    client_headers: CIMultiDictProxy[str],
    request_id: str,
    worker_api_key: str | None,
    gateway_keys: frozenset[str] = frozenset(),
    has_body: bool = True,
) -> dict[str, str]:
    """Headers for the request to a worker.

    The client's Authorization is forwarded unless it carries one of the gateway's own keys; the
    worker's key fills in when the client sent none (or sent ours).
    """
    skip = _NOT_FORWARDED_REQUEST
    extra = _connection_tokens(client_headers)
    if extra:
        skip = skip | extra
    headers: dict[str, str] = {}
    for name, value in client_headers.items():
        lower = name.lower()
        if lower in skip:
            continue
        if lower in CREDENTIAL_HEADERS:
            if not value.strip():
                continue  # an empty credential: the worker's key may fill in
            if gateway_keys and credential_in(lower, value) in gateway_keys:
                continue  # the gateway's own credential is for the gateway only
        headers[lower] = value
    headers[REQUEST_ID_HEADER] = request_id
    if worker_api_key and "authorization" not in headers:
        headers["authorization"] = f"Bearer {worker_api_key}"
    if has_body and "content-type" not in headers:
        headers["content-type"] = "application/json"
    return headers


def client_response_headers(upstream_headers: Mapping[str, str]) -> CIMultiDict[str]:
    skip = _NOT_FORWARDED_RESPONSE
    extra = _connection_tokens(upstream_headers)
    if extra:
        skip = skip | extra
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream_headers.items():
        if name.lower() not in skip:
            headers.add(name, value)
    return headers


def routed_headers(headers: CIMultiDict[str], request_id: str, worker_url: str) -> CIMultiDict[str]:
    """Add what the gateway tells the client about its request: the id, and the worker that served it."""
    headers[REQUEST_ID_HEADER] = request_id
    headers[ROUTED_WORKER_HEADER] = worker_url
    return headers
