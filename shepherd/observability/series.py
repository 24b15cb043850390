"""Counters and histograms that the request path records into at the cost of an attribute add.

prometheus_client guards every value with a lock and checks each call (about 1.5 us per recorded
value here, a dozen per request). The request path writes from the event loop only, so the values
are plain floats and lists; a scrape copies them on the loop (`snapshot`) and builds the library's
families from the copies in a worker thread (`family`), so the text is written by prometheus_client
and is the same as its own Counter and Histogram would write: names, labels, `le` values, order.

A series written from other threads must be written under a lock of the writer's (the WASM plugin
stats do theirs under the plugin's lock).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString


class CounterChild:
    """One counter. The request path counts its requests with `child.value += 1`: the method call
    was a visible part of a proxied request's cost, seven times over."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class HistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds  # ascending, the last +Inf
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        if amount == amount:  # NaN falls in no bucket (prometheus_client: `amount <= bound` is never true)
            self.counts[bisect_left(self._bounds, amount)] += 1


Child = TypeVar("Child", CounterChild, HistogramChild)


class _Series(Generic[Child]):
    """A labelled family: children by label values, kept in the order they first appeared."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[Any, ...], Child] = {}  # as callers pass the values
        self._by_text: dict[tuple[str, ...], Child] = {}  # as exposed (str): 200 and "200" are one series

    def __call__(self, *labels: Any) -> Child:
        child = self._children.get(labels)
        if child is None:
            child = self._add(labels)
        return child

    def _add(self, labels: tuple[Any, ...]) -> Child:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {len(labels)}")
        text = tuple(str(value) for value in labels)
        child = self._by_text.get(text)
        if child is None:
            child = self._by_text[text] = self._new_child()
        self._children[labels] = child
        return child

    def _new_child(self) -> Child:
        raise NotImplementedError

    def _metric(self) -> Metric:
        return Metric(self.name, self.documentation, self.kind)


class CounterSeries(_Series[CounterChild]):
    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames)  # as prometheus_client names it

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def snapshot(self) -> list[tuple[tuple[str, ...], float]]:
        """The values now (on the loop that writes them)."""
        return [(labels, child.value) for labels, child in self._by_text.items()]

    def family(self, rows: list[tuple[tuple[str, ...], float]]) -> Metric:
        metric = self._metric()
        names = self.labelnames
        for labels, value in rows:
            metric.add_sample(self.name + "_total", dict(zip(names, labels, strict=True)), value)
        return metric


class HistogramSeries(_Series[HistogramChild]):
    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = sorted(float(b) for b in buckets)
        if bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        self._le = tuple(floatToGoString(b) for b in bounds)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def snapshot(self) -> list[tuple[tuple[str, ...], list[int], float]]:
        return [(labels, child.counts[:], child.sum) for labels, child in self._by_text.items()]

    def family(self, rows: list[tuple[tuple[str, ...], list[int], float]]) -> Metric:
        metric = self._metric()
        names = self.labelnames
        name = self.name
        for labels, counts, total in rows:
            base = dict(zip(names, labels, strict=True))
            cumulative = 0.0
            for le, count in zip(self._le, counts, strict=True):
                cumulative += count
                metric.add_sample(name + "_bucket", {**base, "le": le}, cumulative)
            metric.add_sample(name + "_count", base, cumulative)
            if self.bounds[0] >= 0:
                metric.add_sample(name + "_sum", base, total)
        return metric
