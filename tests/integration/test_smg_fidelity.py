"""Drop-in fidelity with SMG, end to end: the routes clients call, SMG's metric families, a worker deleted
while still being probed, and structured output / logprobs from the simulator through the gateway (the
structured-output client libraries against the demo: test_structured_output_clients.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from shepherd.testing import Gateway, Sim, free_ports, wait_until

pytestmark = pytest.mark.integration

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class City(BaseModel):
    name: str
    population: int
    coastal: bool
    districts: list[str]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Sim, Gateway]]:
    sim = Sim(2, "--dp-size", "2")
    gw = Gateway(sim.urls, "--policy", "cache_aware", "--dp-aware", "--load-monitor-interval", "0.2",
                 expect_workers=4)
    try:
        yield sim, gw
    finally:
        gw.stop()
        sim.stop()


def _families(gw: Gateway) -> dict[str, list]:
    text = httpx.get(gw.metrics_url, timeout=5).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)} | {"__text__": [text]}


def test_engine_metrics_merges_every_engine_with_its_address(cluster: tuple[Sim, Gateway]) -> None:
    sim, gw = cluster
    response = httpx.get(gw.url + "/engine_metrics", timeout=10)  # public: no key needed
    assert response.status_code == 200
    families = list(text_string_to_metric_families(response.text))
    addrs = {s.labels.get("worker_addr") for f in families for s in f.samples}
    assert addrs == set(sim.urls)  # the test gateway shows URLs (--routed-worker-header url); one per engine
    helps = [line for line in response.text.splitlines() if line.startswith("# HELP")]
    assert len(helps) == len(set(helps))  # one HELP per family, however many engines


def test_tokenize_without_a_gateway_tokenizer_is_an_openai_error(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    response = httpx.post(gw.url + "/v1/tokenize", json={"model": "mock-model", "prompt": "hello"}, timeout=10)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "tokenizer_not_found" and "mock-model" in error["message"]
    assert httpx.get(gw.url + "/readiness", timeout=5).status_code == 200  # still serving


def test_smg_latency_and_token_families(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hello there"}],
                                   max_tokens=6)
    stream = client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=6, stream=True, stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    wait_until(lambda: gw.metric("smg_engine_running_requests") >= 0 and
               "smg_engine_running_requests" in _families(gw), 10, message="engine gauges")
    families = _families(gw)
    for name, least in (("smg_router_ttft_seconds", 2), ("smg_router_generation_duration_seconds", 2),
                        ("smg_router_tpot_seconds", 1)):  # time per token needs a streamed answer
        count = sum(s.value for s in families[name] if s.name == name + "_count")
        assert count >= least, name
    tokens = {s.labels["token_type"]: s.value for s in families["smg_router_tokens"]
              if s.name == "smg_router_tokens_total" and s.labels["model"] == "mock-model"}
    assert tokens["input"] > 0 and tokens["output"] >= 12
    assert "smg_cache_aware_match_ratio" in families
    assert {s.labels["dp_rank"] for s in families["smg_engine_running_requests"]} == {"0", "1"}
    assert "_created" not in families["__text__"][0]


def test_a_worker_still_being_probed_can_be_deleted(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    (port,) = free_ports(1)  # nothing listens there: the worker stays pending
    added = httpx.post(gw.url + "/workers", json={"url": f"http://127.0.0.1:{port}"}, timeout=5)
    assert added.status_code == 202
    worker_id = added.json()["worker_id"]
    assert httpx.get(gw.url + f"/workers/{worker_id}", timeout=5).json()["status"] == "pending"
    deleted = httpx.delete(gw.url + f"/workers/{worker_id}", timeout=5)
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    assert httpx.get(gw.url + f"/workers/{worker_id}", timeout=5).status_code == 404
    assert httpx.delete(gw.url + f"/workers/{worker_id}", timeout=5).status_code == 404


def test_logprobs_through_the_gateway(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=5, logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == 5 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    streamed = client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, logprobs=True, stream=True)
    tokens = [t for chunk in streamed if chunk.choices and chunk.choices[0].logprobs
              for t in chunk.choices[0].logprobs.content or []]
    assert len(tokens) == 5
    plain = client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "hi"}])
    assert plain.choices[0].logprobs is None


def test_json_schema_and_json_object_answers_are_valid_json(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    parsed = client.chat.completions.parse(model="mock-model", response_format=City, max_tokens=3,
                                           messages=[{"role": "user", "content": "A city, please"}])
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City) and city.districts and parsed.choices[0].finish_reason == "stop"
    loose = client.chat.completions.create(model="mock-model", response_format={"type": "json_object"},
                                           messages=[{"role": "user", "content": "JSON please"}])
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)
    schema_in_prompt = (f"Answer in JSON matching this schema: {json.dumps(City.model_json_schema())}")
    guided = client.chat.completions.create(
        model="mock-model", response_format={"type": "json_object"}, stream=True,
        messages=[{"role": "system", "content": schema_in_prompt}, {"role": "user", "content": "Lisbon"}])
    text = "".join(c.choices[0].delta.content or "" for c in guided if c.choices)
    City.model_validate_json(text)

