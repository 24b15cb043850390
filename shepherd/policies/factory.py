"""Build policies by name."""

from __future__ import annotations

from collections.abc import Callable

from shepherd.config import PolicyOptions
from shepherd.policies.base import Policy
from shepherd.policies.bucket import BucketPolicy
from shepherd.policies.cache_aware import CacheAwarePolicy
from shepherd.policies.consistent_hashing import ConsistentHashingPolicy
from shepherd.policies.least_load import LeastLoadPolicy
from shepherd.policies.manual import ManualPolicy
from shepherd.policies.passthrough import PassthroughPolicy
from shepherd.policies.power_of_two import PowerOfTwoPolicy
from shepherd.policies.prefix_hash import PrefixHashPolicy
from shepherd.policies.random import RandomPolicy
from shepherd.policies.round_robin import RoundRobinPolicy

_FACTORIES: dict[str, Callable[[PolicyOptions], Policy]] = {
    RandomPolicy.name: lambda options: RandomPolicy(),
    RoundRobinPolicy.name: lambda options: RoundRobinPolicy(),
    PassthroughPolicy.name: lambda options: PassthroughPolicy(),
    PowerOfTwoPolicy.name: PowerOfTwoPolicy,
    LeastLoadPolicy.name: LeastLoadPolicy,
    CacheAwarePolicy.name: CacheAwarePolicy,
    ConsistentHashingPolicy.name: lambda options: ConsistentHashingPolicy(),
    PrefixHashPolicy.name: PrefixHashPolicy,
    ManualPolicy.name: ManualPolicy,
    BucketPolicy.name: BucketPolicy,
}

POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)
# Policies that read engine load reports, so the load monitor must poll for them.
LOAD_AWARE_POLICIES = frozenset({LeastLoadPolicy.name, PowerOfTwoPolicy.name, CacheAwarePolicy.name})


def create_policy(name: str, options: PolicyOptions | None = None) -> Policy:
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}") from None
    return factory(options or PolicyOptions())
