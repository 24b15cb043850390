"""Fuzzed bodies on every inference route (hypothesis, bounded): the gateway answers each one with JSON,
never with a 5xx of its own, and keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shepherd.api.inference import INFERENCE_ROUTES
from shepherd.testing import Gateway, Sim

# Small numbers only: a body may ask for `n` answers of `max_tokens` each, and the engine would oblige.
_SCALARS = (st.none() | st.booleans() | st.integers(-5, 40) | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=24))
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=16)
_MESSAGE = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "system", "assistant", "tool", "x"])
                                               | _JSON, "content": st.text(max_size=40) | _JSON})
_FIELDS = {
    "model": st.sampled_from(["mock-model", "mock-model", "no-such-model", ""]) | _JSON,
    "messages": st.lists(_MESSAGE, max_size=3) | _JSON,
    "prompt": st.text(max_size=40) | _JSON,
    "input": st.text(max_size=40) | st.lists(st.text(max_size=10) | _SCALARS, max_size=4) | _JSON,
    "query": st.text(max_size=20) | _JSON,
    "documents": st.lists(st.text(max_size=10), max_size=3) | _JSON,
    "text": st.text(max_size=40) | _JSON,
    "stream": st.booleans() | _JSON,
    "max_tokens": st.integers(-2, 20) | _JSON,
    "n": st.integers(-1, 3) | _JSON,
    "stop": st.text(max_size=5) | _JSON,
    "tools": _JSON,
    "temperature": _SCALARS,
    "system": _JSON,
    "dimensions": st.integers(-1, 64) | _JSON,
    "sampling_params": _JSON,
    "stream_options": _JSON,
}
_BODIES = (st.fixed_dictionaries({}, optional=_FIELDS).map(lambda body: orjson.dumps(body))
           | _JSON.map(lambda value: orjson.dumps(value, default=str))
           | st.binary(max_size=200))


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    sim = Sim(2, "--engine", "canned", "--gen-ms", "0", "--model", "mock-model")
    gw = Gateway(sim.urls, "--log-level", "warn")
    yield gw
    gw.stop()
    sim.stop()


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield http


def _is_json_error(payload: Any) -> bool:
    if not isinstance(payload, dict):
        return False
    error = payload.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return True  # OpenAI's shape (and Anthropic's, with "type": "error" beside it)
    return payload.get("object") == "error" and isinstance(payload.get("message"), str)  # an engine's own 4xx


@pytest.mark.parametrize("path", sorted([*INFERENCE_ROUTES, "/v1/responses"]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(body=_BODIES)
def test_fuzzed_bodies_get_json_answers(client: httpx.Client, gateway: Gateway, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json")
        assert _is_json_error(response.json()), response.text[:500]
    elif response.headers.get("content-type", "").startswith("application/json"):
        response.json()
    assert gateway.alive()
