"""Tenant identities: which key or header names the caller, and the bounded `tenant` metric label."""

from __future__ import annotations

import aiohttp
import pytest

from shepherd.config import AuthConfig, AuthConfigError, TenantKey
from shepherd.errors import GatewayError
from shepherd.middleware.auth import Authenticator, is_serving
from shepherd.middleware.tenant import TenantResolver, shared_key_tenant
from shepherd.observability.metrics import BoundedLabel

pytestmark = pytest.mark.unit

TENANTS = AuthConfig(api_keys=("shared",), tenant_keys=(TenantKey.parse("team-a:key-a"), TenantKey.parse("b:k:b")),
                     trust_tenant_header=True)


def test_tenant_key_entries_parse_and_are_checked() -> None:
    assert TenantKey.parse("b:k:b") == TenantKey("b", "k:b")  # the key may hold colons, the id may not
    for bad in ("nokey", ":key", "tenant:"):
        with pytest.raises(AuthConfigError):
            TenantKey.parse(bad)
    with pytest.raises(AuthConfigError, match="given twice"):
        AuthConfig(api_keys=("same",), tenant_keys=(TenantKey("a", "same"),)).validate()
    with pytest.raises(AuthConfigError, match="--tenant-header-name"):
        AuthConfig(tenant_header_name="bad name").validate()
    with pytest.raises(AuthConfigError, match="admin API"):
        AuthConfig(tenant_keys=(TenantKey("a", "k"),), allow_unauthenticated_admin=True).validate()


async def test_each_key_authenticates_as_its_tenant() -> None:
    async with aiohttp.ClientSession() as session:
        auth = Authenticator(TENANTS, session)
        assert await auth.check("/v1/chat/completions", {"authorization": "Bearer key-a"}) == "auth:team-a"
        assert await auth.check("/v1/chat/completions", {"x-api-key": "k:b"}) == "auth:b"
        assert await auth.check("/v1/chat/completions", {"authorization": "Bearer shared"}) == shared_key_tenant(
            "shared")
        with pytest.raises(GatewayError) as wrong:
            await auth.check("/v1/chat/completions", {"authorization": "Bearer nope"})
        assert wrong.value.status == 401
        assert await auth.check("/health", {}) is None
        with pytest.raises(GatewayError) as admin:  # a tenant key is no admin credential
            await auth.check("/workers", {"authorization": "Bearer key-a"})
        assert admin.value.status == 403
    assert shared_key_tenant("shared").startswith("key:") and "shared" not in shared_key_tenant("shared")
    assert is_serving("/v1/chat/completions") and not is_serving("/health") and not is_serving("/workers/x")


def test_resolution_order() -> None:
    trusted = TenantResolver(TENANTS)
    header = {"x-smg-tenant-id": "acme"}
    assert trusted.resolve("auth:team-a", header, "10.0.0.1") == "auth:team-a"  # a tenant key cannot be overridden
    assert trusted.resolve("key:abc", header, "10.0.0.1") == "header:acme"  # a proxy holding the shared key
    assert trusted.resolve("key:abc", {}, "10.0.0.1") == "key:abc"
    assert trusted.resolve(None, {}, "10.0.0.1") == "ip:10.0.0.1"
    assert trusted.resolve(None, {}, None) == "anonymous"
    for bad in ("", " ", "x" * 129, "a\x00b"):
        with pytest.raises(GatewayError) as raised:
            trusted.resolve(None, {"x-smg-tenant-id": bad}, None)
        assert raised.value.status == 400 and raised.value.code == "invalid_tenant_header"
    untrusted = TenantResolver(AuthConfig())
    assert untrusted.resolve(None, header, "10.0.0.1") == "ip:10.0.0.1"  # the header is ignored unless trusted
    renamed = TenantResolver(AuthConfig(trust_tenant_header=True, tenant_header_name="X-Org"))
    assert renamed.resolve(None, {"x-org": "o1"}, None) == "header:o1"


def test_the_tenant_label_is_bounded_with_configured_tenants_first() -> None:
    label = BoundedLabel(3, ["auth:a", "auth:b"])
    assert [label(t) for t in ("ip:1", "ip:2", "auth:a", "auth:b", "ip:1")] == [
        "ip:1", "other", "auth:a", "auth:b", "ip:1"]
    assert BoundedLabel(0)("x") == "other"
