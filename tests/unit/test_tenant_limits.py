"""Per-tenant limits: the YAML, and requests/tokens per minute and requests in flight per tenant and model."""

from __future__ import annotations

from pathlib import Path

import pytest

from shepherd.config import AdmissionConfig, ConfigError
from shepherd.errors import GatewayError
from shepherd.middleware.admission import AdmissionController
from shepherd.middleware.tenant_limits import Limits, TenantLimitsError, load_tenant_limits, parse_tenant_limits

pytestmark = pytest.mark.unit

LIMITS = parse_tenant_limits({
    "default": {"max_concurrent_requests": 1},
    "tenants": {
        "auth:a": {"requests_per_minute": 2, "models": {"big": {"requests_per_minute": 1},
                                                        "llama-*": {"max_concurrent_requests": 1}}},
        "auth:t": {"tokens_per_minute": 100},
        "auth:free": {},
    },
})


def _controller() -> AdmissionController:
    return AdmissionController(AdmissionConfig(max_concurrent_requests=0, tenant_rate_limit_enabled=True,
                                               tenant_rate_limit_config="x.yaml"), tenant_limits=LIMITS)


async def _refused(admission: AdmissionController, tenant: str, model: str | None = None) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        await admission.acquire(None, tenant, model)
    error = raised.value
    assert error.status == 429 and error.code == "tenant_rate_limit_exceeded"
    assert int(error.headers["Retry-After"]) >= 1
    return error


async def test_requests_per_minute_per_tenant_and_per_model() -> None:
    admission = _controller()
    admission.release(await admission.acquire(None, "auth:a", "big"))
    assert "model big" in (await _refused(admission, "auth:a", "big")).message  # the model rule's minute is used
    admission.release(await admission.acquire(None, "auth:a", "small"))  # the tenant's second request
    error = await _refused(admission, "auth:a", "small")
    assert "requests-per-minute" in error.message and int(error.headers["Retry-After"]) >= 20
    admission.release(await admission.acquire(None, "auth:free", "big"))  # another tenant is not affected
    assert admission.rejected["tenant"] == 2


async def test_concurrency_per_tenant_the_default_rule_and_prefix_models() -> None:
    admission = _controller()
    held = await admission.acquire(None, "ip:10.0.0.1")  # unlisted: the default rule
    await _refused(admission, "ip:10.0.0.1")
    other = await admission.acquire(None, "ip:10.0.0.2")  # each unlisted tenant has its own state
    admission.release(held)
    admission.release(await admission.acquire(None, "ip:10.0.0.1"))
    admission.release(other)
    llama = await admission.acquire(None, "auth:a", "llama-70b")
    assert "in flight" in (await _refused(admission, "auth:a", "llama-8b")).message  # one prefix rule, one state
    admission.release(llama)


async def test_tokens_are_debited_when_the_request_finishes() -> None:
    admission = _controller()
    ticket = await admission.acquire(None, "auth:t")
    admission.release(ticket, tokens=150)  # over the minute's 100: in debt
    error = await _refused(admission, "auth:t")
    assert "tokens-per-minute" in error.message and int(error.headers["Retry-After"]) >= 30
    ticket.limits = ()  # released once; a second release changes nothing
    admission.release(ticket, tokens=150)


async def test_with_workers_each_process_takes_its_share() -> None:
    split = LIMITS.split(2)
    assert split.tenants["auth:a"].limits.requests_per_minute == 1
    assert split.tenants["auth:a"].models[0] == ("big", Limits(requests_per_minute=0.5))
    assert split.default is not None and split.default.limits.max_concurrent_requests == 1  # rounded up
    share = parse_tenant_limits({"tenants": {"auth:c": {"max_concurrent_requests": 5}}}).split(2)
    assert share.tenants["auth:c"].limits.max_concurrent_requests == 3


def test_the_yaml_is_checked(tmp_path: Path) -> None:
    for bad in ([], {"tenants": []}, {"tenants": {"a": {"rpm": 3}}}, {"default": {"requests_per_minute": -1}},
                {"default": {"requests_per_minute": True}}, {"tenants": {"a": {"models": ["x"]}}}, {"other": 1}):
        with pytest.raises(TenantLimitsError):
            parse_tenant_limits(bad)
    path = tmp_path / "limits.yaml"
    path.write_text("tenants:\n  'auth:a': {requests_per_minute: 5}\n")
    assert load_tenant_limits(str(path)).rule("auth:a").limits.requests_per_minute == 5  # type: ignore[union-attr]
    assert load_tenant_limits(str(path)).rule("auth:b") is None  # no default: not limited
    with pytest.raises(TenantLimitsError, match="No such file"):
        load_tenant_limits(str(tmp_path / "missing.yaml"))
    path.write_text("tenants: [unclosed")
    with pytest.raises(TenantLimitsError, match="not valid YAML"):
        load_tenant_limits(str(path))
    with pytest.raises(ConfigError, match="needs --tenant-rate-limit-config"):
        AdmissionConfig(tenant_rate_limit_enabled=True).validate()
