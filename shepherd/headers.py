"""Header names every layer shares, and the one reading of a presented credential.

A client presents a key as `Authorization: Bearer <key>` (OpenAI SDKs) or `x-api-key: <key>`
(Anthropic SDKs). Authentication, per-key admission limits, the proxy's "never forward the
gateway's own key" rule and providers' bring-your-own-key all read it through `presented_key`, so
they can never disagree about who the caller is.
"""

from __future__ import annotations

from collections.abc import Mapping

REQUEST_ID_HEADER = "x-request-id"
ROUTED_WORKER_HEADER = "x-smg-routed-worker-id"
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


def bearer_token(value: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` value; None for any other scheme or an empty token."""
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def credential_in(name: str, value: str) -> str | None:
    """The key one credential header carries (`name` in lower case), or None."""
    if name == "authorization":
        return bearer_token(value)
    if name == "x-api-key":
        return value.strip() or None
    return None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key the caller presented: the Bearer token, else `x-api-key`; None when neither carries one."""
    authorization = headers.get("authorization")
    if authorization:
        token = bearer_token(authorization)
        if token is not None:
            return token
    return credential_in("x-api-key", headers.get("x-api-key") or "")
