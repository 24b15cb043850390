"""Who a serving request is on behalf of: its tenant identity, and that identity as a bounded metric label.

The identity, in order:

* `auth:<tenant_id>` for a `--tenant-api-key tenant_id:key` key. Nothing the caller sends can change it,
  so one tenant cannot pass itself off as another.
* `header:<value>` from `--tenant-header-name` (default `x-smg-tenant-id`) when `--trust-tenant-header`
  is set: a proxy in front of the gateway authenticates callers and says who they are. Without the
  flag the header is ignored.
* `key:<12 hex digits of the key's SHA-256>` for the shared `--api-key` (never the key itself).
* `ip:<peer address>`, else `anonymous`.

The tenant limits and the priority scheduler read the identity; the access log carries it whole; the
`tenant` metric label is bounded (Metrics.tenant_label). With tenancy configured (tenant keys or a trusted
header) stored responses and conversations belong to their creating tenant (storage/scoped.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from shepherd.config import AuthConfig
from shepherd.errors import GatewayError

ANONYMOUS = "anonymous"
MAX_HEADER_TENANT_CHARS = 128


def shared_key_tenant(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def key_tenants(config: AuthConfig) -> dict[str, str]:
    """Serving key -> the tenant identity it authenticates (what the Authenticator hands on)."""
    tenants = {key: shared_key_tenant(key) for key in config.api_keys}
    tenants.update({entry.key: "auth:" + entry.tenant for entry in config.tenant_keys})
    return tenants


class TenantResolver:
    def __init__(self, config: AuthConfig) -> None:
        self._header = config.tenant_header_name.lower() if config.trust_tenant_header else None
        self.scopes_history = bool(config.tenant_keys) or config.trust_tenant_header

    def resolve(self, authenticated: str | None, headers: Mapping[str, str], peer: str | None) -> str:
        """The tenant of a request whose key (if any) authenticated as `authenticated`."""
        if authenticated is not None and authenticated.startswith("auth:"):
            return authenticated
        if self._header is not None:
            value = headers.get(self._header)
            if value is not None:
                value = value.strip()
                if not value or len(value) > MAX_HEADER_TENANT_CHARS or not value.isprintable():
                    raise GatewayError(400, "invalid_tenant_header",
                                       f"The {self._header} header must hold 1 to {MAX_HEADER_TENANT_CHARS} "
                                       "printable characters")
                return "header:" + value
        if authenticated is not None:
            return authenticated
        return "ip:" + peer if peer else ANONYMOUS
