"""One /metrics for a `--workers N` gateway: the children's expositions merged into one.

Counters and histograms add up across processes. A gauge says something about a moment, so each
one is merged the way its meaning asks: requests in flight and queue depths add up; a state every
process reports about the same thing (a worker's health, its breaker, pool sizes, engine figures)
is the worst (highest, or lowest for health) any process sees; ratios are averaged. `_created`
timestamps keep the earliest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

SUMMED_GAUGES = frozenset({
    "smg_http_connections_active", "smg_worker_requests_active", "smg_admission_queue_depth",
    "smg_admission_inflight",
})
MIN_GAUGES = frozenset({"smg_worker_health"})  # out of rotation anywhere shows as out of rotation
MEAN_GAUGES = frozenset({"smg_cache_aware_match_ratio"})


def _combine(family: str, kind: str, sample: str, values: list[float]) -> float:
    if sample.endswith("_created"):
        return min(values)
    if kind != "gauge" or family in SUMMED_GAUGES:
        return sum(values)
    if family in MIN_GAUGES:
        return min(values)
    if family in MEAN_GAUGES:
        return sum(values) / len(values)
    return max(values)


class _Merged:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def merge(texts: Iterable[str], extra: Iterable[Metric] = ()) -> bytes:
    """The Prometheus text of every exposition in `texts` merged, plus the `extra` families."""
    order: list[str] = []
    kinds: dict[str, tuple[str, str, str]] = {}  # family -> (type, help, unit)
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in kinds:
                order.append(family.name)
                kinds[family.name] = (family.type, family.documentation, family.unit)
                samples[family.name] = {}
            rows = samples[family.name]
            for sample in family.samples:
                rows.setdefault((sample.name, tuple(sorted(sample.labels.items()))), []).append(sample.value)
    families: list[Metric] = []
    for name in order:
        kind, documentation, unit = kinds[name]
        metric = Metric(name, documentation, kind, unit)
        for (sample_name, labels), values in samples[name].items():
            metric.add_sample(sample_name, dict(labels), _combine(name, kind, sample_name, values))
        families.append(metric)
    families.extend(extra)
    registry: Any = _Merged(families)
    return generate_latest(registry)  # type: ignore[arg-type]
