"""Per-tenant limits (`--tenant-rate-limit-enabled --tenant-rate-limit-config FILE`): requests and tokens
per minute and requests in flight, for each tenant identity (middleware/tenant.py) and, within it, per model.

The YAML file:

    default:                      # every tenant not listed (leave it out: unlisted tenants are not limited)
      requests_per_minute: 600
      tokens_per_minute: 200000
    tenants:
      "auth:team-a":              # the identity as the access log shows it
        requests_per_minute: 60
        tokens_per_minute: 20000
        max_concurrent_requests: 4
        models:                   # on top of the tenant's own limits; exact names, or a prefix ending in *
          "gpt-4o": {requests_per_minute: 10}
          "llama-*": {tokens_per_minute: 5000}

Each per-minute limit is a token bucket that holds a minute's worth and refills continuously. A request
takes one request token; its tokens (prompt + completion, as the worker's usage reports them) are
debited when it finishes, so a tenant may go into debt by one request and is refused until the debt is
paid back. A refusal is 429 `tenant_rate_limit_exceeded` with Retry-After: when the bucket has room again
(1 s for the concurrency limit).

The limits are the whole gateway's: with `--workers N` each process applies its share (rounded up), and
with `--mesh-redis-url` they hold for the whole fleet, every instance and process together (Redis keeps
the buckets and counts what is in flight: mesh/rate_limit.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shepherd.config import ConfigError
from shepherd.errors import GatewayError
from shepherd.yaml_file import read_yaml_file

_LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests")


class TenantLimitsError(ConfigError):
    """The tenant rate-limit file cannot be read or is malformed."""


@dataclass(frozen=True)
class Limits:
    requests_per_minute: float = 0.0  # 0: no limit
    tokens_per_minute: float = 0.0
    max_concurrent_requests: int = 0

    def split(self, count: int) -> Limits:
        """What each of `count` processes applies (concurrency rounded up)."""
        return Limits(self.requests_per_minute / count, self.tokens_per_minute / count,
                      -(-self.max_concurrent_requests // count))


@dataclass(frozen=True)
class TenantRule:
    limits: Limits
    models: tuple[tuple[str, Limits], ...] = ()  # (exact name or "prefix*", limits), exact names first

    def model_rule(self, model: str | None) -> tuple[str, Limits] | None:
        if model is None:
            return None
        best: tuple[str, Limits] | None = None
        for pattern, limits in self.models:
            if pattern == model:
                return pattern, limits
            if pattern.endswith("*") and model.startswith(pattern[:-1]) and (
                    best is None or len(pattern) > len(best[0])):
                best = (pattern, limits)
        return best

    def split(self, count: int) -> TenantRule:
        return TenantRule(self.limits.split(count), tuple((name, limits.split(count)) for name, limits in self.models))


@dataclass(frozen=True)
class TenantLimitsConfig:
    tenants: Mapping[str, TenantRule] = field(default_factory=dict)
    default: TenantRule | None = None

    def rule(self, tenant: str) -> TenantRule | None:
        return self.tenants.get(tenant, self.default)

    def split(self, count: int) -> TenantLimitsConfig:
        """The limits as each of `count` processes of one gateway applies them (no fleet state to share)."""
        return TenantLimitsConfig({name: rule.split(count) for name, rule in self.tenants.items()},
                                  self.default.split(count) if self.default is not None else None)


def load_tenant_limits(path: str) -> TenantLimitsConfig:
    document = read_yaml_file(path, "--tenant-rate-limit-config", TenantLimitsError)
    return parse_tenant_limits(document or {}, path)


def parse_tenant_limits(document: Any, where: str = "tenant limits") -> TenantLimitsConfig:
    if not isinstance(document, dict) or set(document) - {"default", "tenants"}:
        raise TenantLimitsError(f"{where}: expected a mapping with `default` and/or `tenants`")
    tenants = document.get("tenants")
    tenants = {} if tenants is None else tenants
    if not isinstance(tenants, dict):
        raise TenantLimitsError(f"{where}: `tenants` must map tenant identities to limits")
    default = document.get("default")
    return TenantLimitsConfig(
        tenants={str(name): _rule(rule, f"{where}: tenant {name!r}") for name, rule in tenants.items()},
        default=_rule(default, f"{where}: default") if default is not None else None)


def _rule(raw: Any, where: str) -> TenantRule:
    if not isinstance(raw, dict):
        raise TenantLimitsError(f"{where}: expected a mapping of limits")
    models = raw.get("models")
    models = {} if models is None else models
    if not isinstance(models, dict):
        raise TenantLimitsError(f"{where}: `models` must map model names (or prefix*) to limits")
    rules = sorted(((str(name), _limits(value, f"{where} model {name!r}")) for name, value in models.items()),
                   key=lambda item: item[0].endswith("*"))
    return TenantRule(_limits({k: v for k, v in raw.items() if k != "models"}, where), tuple(rules))


def _limits(raw: Any, where: str) -> Limits:
    if not isinstance(raw, dict):
        raise TenantLimitsError(f"{where}: expected a mapping of limits")
    unknown = set(raw) - set(_LIMIT_FIELDS)
    if unknown:
        raise TenantLimitsError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(_LIMIT_FIELDS)}")
    values: dict[str, float] = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
            raise TenantLimitsError(f"{where}: {name} must be a non-negative number")
        values[name] = value
    return Limits(float(values.get("requests_per_minute", 0)), float(values.get("tokens_per_minute", 0)),
                  int(values.get("max_concurrent_requests", 0)))


def tenant_limited(message: str, wait: float) -> GatewayError:
    return GatewayError(429, "tenant_rate_limit_exceeded", message,
                        headers={"Retry-After": str(max(1, math.ceil(wait)))})
