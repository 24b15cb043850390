"""SMG launch flags Shepherd builds, end to end against one gateway: --model-alias, --sse-keepalive-secs,
--health-check-port, --stream-body-stall-timeout-secs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from shepherd.testing import Gateway, Sim

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Sim, Gateway]]:
    sim = Sim(1)
    gw = Gateway(sim.urls, "--model-alias", "fast=mock-model", expect_workers=1)
    try:
        yield sim, gw
    finally:
        gw.stop()
        sim.stop()


def test_an_alias_is_listed_and_served_as_its_model(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    listed = {card["id"]: card for card in httpx.get(gw.url + "/v1/models", timeout=5).json()["data"]}
    assert listed["fast"]["root"] == "mock-model" and "mock-model" in listed
    assert httpx.get(gw.url + "/v1/models/fast", timeout=5).json()["id"] == "fast"
    answer = httpx.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert answer.status_code == 200 and answer.json()["model"] == "mock-model"  # the worker saw the canonical id
    unknown = httpx.post(gw.url + "/v1/chat/completions", timeout=10, json={
        "model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert unknown.status_code == 404
