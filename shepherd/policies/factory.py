"""Build policies by name."""

from __future__ import annotations

import random
from collections.abc import Callable

from shepherd.config import PolicyOptions
from shepherd.kv.index import KvIndex
from shepherd.policies.base import Policy
from shepherd.policies.bucket import BucketPolicy
from shepherd.policies.cache_aware import CacheAwarePolicy
from shepherd.policies.consistent_hashing import ConsistentHashingPolicy
from shepherd.policies.least_load import LeastLoadPolicy
from shepherd.policies.manual import ManualPolicy
from shepherd.policies.passthrough import PassthroughPolicy
from shepherd.policies.power_of_two import PowerOfTwoPolicy
from shepherd.policies.precise_cache import PreciseCachePolicy
from shepherd.policies.prefix_hash import PrefixHashPolicy
from shepherd.policies.random import RandomPolicy
from shepherd.policies.round_robin import RoundRobinPolicy

# Each factory takes the options, an optional random source (a seeded one makes replays repeatable)
# and the gateway's KV-event index (None: a private, empty one).
_FACTORIES: dict[str, Callable[[PolicyOptions, random.Random | None, KvIndex | None], Policy]] = {
    RandomPolicy.name: lambda options, rng, index: RandomPolicy(rng),
    RoundRobinPolicy.name: lambda options, rng, index: RoundRobinPolicy(),
    PassthroughPolicy.name: lambda options, rng, index: PassthroughPolicy(),
    PowerOfTwoPolicy.name: lambda options, rng, index: PowerOfTwoPolicy(options, rng),
    LeastLoadPolicy.name: lambda options, rng, index: LeastLoadPolicy(options, rng),
    CacheAwarePolicy.name: lambda options, rng, index: CacheAwarePolicy(options, rng),
    ConsistentHashingPolicy.name: lambda options, rng, index: ConsistentHashingPolicy(),
    PrefixHashPolicy.name: lambda options, rng, index: PrefixHashPolicy(options),
    ManualPolicy.name: lambda options, rng, index: ManualPolicy(options, rng),
    BucketPolicy.name: lambda options, rng, index: BucketPolicy(options, rng),
    PreciseCachePolicy.name: lambda options, rng, index: PreciseCachePolicy(options, index, rng),
}

POLICY_NAMES: tuple[str, ...] = tuple(_FACTORIES)
# As SMG: bucket splits prefill work by prompt length, so it is a --prefill-policy only.
MAIN_POLICY_NAMES: tuple[str, ...] = tuple(name for name in POLICY_NAMES if name != BucketPolicy.name)
# Policies that read engine load reports, so the load monitor must poll for them.
LOAD_AWARE_POLICIES = frozenset({LeastLoadPolicy.name, PowerOfTwoPolicy.name, CacheAwarePolicy.name,
                                 PreciseCachePolicy.name})


def create_policy(name: str, options: PolicyOptions | None = None, rng: random.Random | None = None,
                  kv_index: KvIndex | None = None) -> Policy:
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}") from None
    return factory(options or PolicyOptions(), rng, kv_index)
