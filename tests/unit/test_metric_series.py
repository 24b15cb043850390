"""The request path's series write the same Prometheus text as prometheus_client's Counter and Histogram."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

from shepherd.observability.metrics import DURATION_BUCKETS, Metrics
from shepherd.observability.series import CounterSeries, HistogramSeries

disable_created_metrics()

LABEL_VALUES = st.sampled_from(["a", "b", "/v1/chat/completions", 'q"uote', "back\\slash", "new\nline", "200", 200])
AMOUNTS = st.one_of(st.floats(min_value=0, max_value=1e4, allow_nan=False), st.integers(min_value=0, max_value=9),
                    st.sampled_from([0.001, 0.005, 60, 7200, 1e9, math.inf]))
BUCKETS = (0.001, 0.0025, 0.5, 1, 2.5, 1800, 5400)


class _Registry:
    def __init__(self, families: list[object]) -> None:
        self._families = families

    def collect(self):  # type: ignore[no-untyped-def]
        for series in self._families:
            yield series.family(series.snapshot())  # type: ignore[attr-defined]


def _pair(kind: str, name: str):  # type: ignore[no-untyped-def]
    registry = CollectorRegistry()
    if kind == "counter":
        return Counter(name, "help text", ["path", "code"], registry=registry), registry, \
            CounterSeries(name, "help text", ["path", "code"])
    return Histogram(name, "help text", ["path", "code"], buckets=BUCKETS, registry=registry), registry, \
        HistogramSeries(name, "help text", ["path", "code"], BUCKETS)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["counter", "histogram"]), name=st.sampled_from(["smg_x_total", "smg_x_seconds"]),
       calls=st.lists(st.tuples(LABEL_VALUES, LABEL_VALUES, AMOUNTS), max_size=30))
def test_same_text_as_prometheus_client(kind: str, name: str, calls: list[tuple[object, object, float]]) -> None:
    library, registry, ours = _pair(kind, name)
    for path, code, amount in calls:
        if kind == "counter":
            library.labels(path, code).inc(amount)
            ours(path, code).inc(amount)
        else:
            library.labels(path, code).observe(amount)
            ours(path, code).observe(amount)
    assert generate_latest(_Registry([ours])).decode() == generate_latest(registry).decode()  # type: ignore[arg-type]


def test_nan_is_summed_but_counted_in_no_bucket_as_in_the_library() -> None:
    library, registry, ours = _pair("histogram", "smg_nan_seconds")
    for value in (0.1, math.nan, 3.0):
        library.labels("p", "c").observe(value)
        ours("p", "c").observe(value)
    assert generate_latest(_Registry([ours])) == generate_latest(registry)  # type: ignore[arg-type]


def test_counter_refuses_a_negative_amount_and_a_wrong_label_count() -> None:
    series = CounterSeries("smg_neg_total", "help", ["a"])
    with pytest.raises(ValueError):
        series("x").inc(-1)
    with pytest.raises(ValueError):
        series("x", "y")
    assert series("x").value == 0


async def test_a_gateway_scrape_lists_every_series_with_its_labels_and_buckets() -> None:
    metrics = Metrics()
    metrics.http_requests("POST", "/v1/chat/completions").inc()
    metrics.http_duration("POST", "/v1/chat/completions").observe(0.004)
    metrics.tokens("http", "regular", "m", "/v1/chat/completions", "input").inc(12)
    text = (await metrics.exposition()).decode()
    assert 'smg_http_requests_total{method="POST",path="/v1/chat/completions"} 1.0' in text
    assert '# TYPE smg_http_requests_total counter' in text and "_created" not in text
    assert 'smg_router_tokens_total{backend_type="regular",endpoint="/v1/chat/completions",model="m",' \
        'router_type="http",token_type="input"} 12.0' in text
    for le in [*map(str, DURATION_BUCKETS[:3]), "+Inf"]:
        expected = "0.0" if le == "0.001" else "1.0"
        assert f'smg_http_request_duration_seconds_bucket{{le="{le}",method="POST",path="/v1/chat/completions"}} ' \
            f'{expected}' in text
    assert '# HELP smg_mcp_tool_call_duration_seconds Time of one MCP tool call' in text  # no child yet: still listed


async def test_bundles_record_into_the_same_children_and_create_no_series_before_it_has_a_value() -> None:
    metrics = Metrics()
    requests, duration, responses = metrics.http_bundle("POST", "/v1/chat/completions", 200, "")
    assert requests is metrics.http_requests("POST", "/v1/chat/completions")
    assert responses is metrics.http_responses("/v1/chat/completions", "200", "")
    assert metrics.http_bundle("POST", "/v1/chat/completions", 200, "")[1] is duration
    labels = ("http", "regular", "m", "/v1/chat/completions")
    metrics.generation_bundle(*labels)[0].observe(0.1)  # a success without usage: no token or tpot series
    metrics.routed_bundle(("http", "regular", "http"), "m", "/v1/chat/completions", "false")[0].inc()
    text = (await metrics.exposition()).decode()
    assert "smg_router_generation_duration_seconds_count" in text and "smg_router_tokens_total{" not in text
    assert "smg_router_tpot_seconds_count" not in text and "smg_router_requests_total{" in text
    metrics.token_bundle(*labels)[1].inc(7)
    assert metrics.tokens(*labels, "output").value == 7
