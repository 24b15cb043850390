"""The priority classes of the admission queue (`--priority-scheduler-enabled`).

A request names its class in `x-smg-priority` (system > interactive > default > bulk; none: default),
capped at its tenant's max class: the tenant's entry in `--priority-scheduler-config`, else
`--priority-scheduler-default-max-class`. When every admission slot is taken, a freed slot goes to the
oldest waiter of the highest class, and a request that finds the queue full takes the place of the
newest waiter of a lower class, which is answered 503 `scheduler_preempted` (`X-SMG-Preempted: true`).
A request that has to wait also preempts the newest admitted request of the lowest class below it whose
answer has not begun (no byte sent to its client): that one is cancelled, its upstream request aborted,
and it is answered 503 `scheduler_preempted` too; its slot goes to the highest waiter.
The queue itself is the admission controller's (middleware/admission.py).

The YAML file (every part optional):

    tenants:
      "auth:ops": {max_class: system}     # tenant identity, as the access log shows it
      "auth:batch": {max_class: bulk}
    classes:
      bulk: {queue_size: 20, queue_timeout_secs: 10}   # at most this many of the queue's places; own wait
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shepherd.config import ConfigError
from shepherd.errors import GatewayError
from shepherd.yaml_file import read_yaml_file

PRIORITY_HEADER = "x-smg-priority"
CLASSES = ("bulk", "default", "interactive", "system")  # index = rank: a higher index is admitted first
DEFAULT_CLASS = CLASSES.index("default")


class PriorityConfigError(ConfigError):
    """The priority-scheduler file cannot be read or is malformed."""


@dataclass(frozen=True)
class ClassQueue:
    queue_size: int | None = None  # None: any of the queue's places (--queue-size)
    queue_timeout_secs: float | None = None  # None: --queue-timeout-secs


@dataclass(frozen=True)
class PriorityPlan:
    default_max_class: int = DEFAULT_CLASS
    tenant_max_class: Mapping[str, int] = field(default_factory=dict)
    classes: tuple[ClassQueue, ...] = tuple(ClassQueue() for _ in CLASSES)

    def class_of(self, tenant: str | None, requested: str | None) -> int:
        """The class a request runs in: the one it asks for (400 when unknown), capped at its tenant's."""
        wanted = DEFAULT_CLASS
        if requested is not None:
            name = requested.strip().lower()
            if name not in CLASSES:
                raise GatewayError(400, "invalid_priority", f"{PRIORITY_HEADER} must be one of "
                                   f"{', '.join(reversed(CLASSES))}", param=PRIORITY_HEADER)
            wanted = CLASSES.index(name)
        cap = self.tenant_max_class.get(tenant, self.default_max_class) if tenant else self.default_max_class
        return min(wanted, cap)


def class_index(name: str, where: str) -> int:
    if name not in CLASSES:
        raise PriorityConfigError(f"{where}: {name!r} is not a priority class ({', '.join(reversed(CLASSES))})")
    return CLASSES.index(name)


def load_priority_plan(path: str | None, default_max_class: str) -> PriorityPlan:
    default = class_index(default_max_class, "--priority-scheduler-default-max-class")
    if path is None:
        return PriorityPlan(default)
    document = read_yaml_file(path, "--priority-scheduler-config", PriorityConfigError)
    return parse_priority_plan(document or {}, default, f"--priority-scheduler-config {path}")


def parse_priority_plan(document: Any, default_max_class: int = DEFAULT_CLASS,
                        where: str = "priority scheduler") -> PriorityPlan:
    if not isinstance(document, dict) or set(document) - {"tenants", "classes"}:
        raise PriorityConfigError(f"{where}: expected a mapping with `tenants` and/or `classes`")
    tenants = _mapping(document.get("tenants"), f"{where}: tenants")
    caps: dict[str, int] = {}
    for tenant, entry in tenants.items():
        entry = _mapping(entry, f"{where}: tenant {tenant!r}")
        if set(entry) != {"max_class"} or not isinstance(entry["max_class"], str):
            raise PriorityConfigError(f"{where}: tenant {tenant!r} takes one field, max_class")
        caps[str(tenant)] = class_index(entry["max_class"], f"{where}: tenant {tenant!r}")
    queues = [ClassQueue() for _ in CLASSES]
    for name, entry in _mapping(document.get("classes"), f"{where}: classes").items():
        entry = _mapping(entry, f"{where}: class {name!r}")
        unknown = set(entry) - {"queue_size", "queue_timeout_secs"}
        if unknown:
            raise PriorityConfigError(f"{where}: class {name!r}: unknown field(s) {', '.join(sorted(unknown))}")
        size, timeout = entry.get("queue_size"), entry.get("queue_timeout_secs")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise PriorityConfigError(f"{where}: class {name!r}: queue_size must be a non-negative integer")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                    or not 0 < timeout < math.inf):
            raise PriorityConfigError(f"{where}: class {name!r}: queue_timeout_secs must be positive")
        queues[class_index(str(name), f"{where}: classes")] = ClassQueue(size, timeout)
    return PriorityPlan(default_max_class, caps, tuple(queues))


def _mapping(value: Any, where: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PriorityConfigError(f"{where}: expected a mapping")
    return value


def preempted(admitted: bool = False) -> GatewayError:
    what = "slot before its answer began" if admitted else "place in the queue"
    return GatewayError(503, "scheduler_preempted", f"A request of a higher priority class took this request's "
                        f"{what}", headers={"Retry-After": "1", "X-SMG-Preempted": "true"})
