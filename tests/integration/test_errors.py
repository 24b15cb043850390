"""Every client-visible failure is an OpenAI-style JSON error with the right status."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from shepherd.testing import Gateway, Sim, wait_until


def _error(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()["error"]
    assert set(body) >= {"message", "type", "code"}
    assert response.headers["x-smg-error-code"] == body["code"]
    assert "x-request-id" in response.headers
    return body


def test_invalid_json_is_400(gateway: Gateway) -> None:
    response = httpx.post(gateway.url + "/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert _error(response)["code"] == "invalid_json"
    assert httpx.post(gateway.url + "/v1/chat/completions", content=b"[1, 2]").status_code == 400
    assert httpx.post(gateway.url + "/v1/chat/completions", content=b"").status_code == 400
    bad_model = httpx.post(gateway.url + "/v1/chat/completions", json={"model": 7, "messages": []})
    assert bad_model.status_code == 400 and _error(bad_model)["param"] == "model"


def test_unknown_model_is_404_through_the_sdk(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"


def test_unknown_route_and_wrong_method(gateway: Gateway) -> None:
    missing = httpx.get(gateway.url + "/v2/nothing")
    assert missing.status_code == 404 and _error(missing)["code"] == "unknown_url"
    wrong = httpx.get(gateway.url + "/v1/chat/completions")
    assert wrong.status_code == 405 and _error(wrong)["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


def test_worker_error_passes_through_unchanged(gateway: Gateway, sims: Sim) -> None:
    response = httpx.post(gateway.url + "/v1/chat/completions",
                          json={"model": "mock-model", "messages": [], "max_tokens": -1})
    assert response.status_code == 400
    assert response.json()["message"] == "max_tokens must not be negative"  # the engine's own body
    assert "x-smg-routed-worker-id" in response.headers


@pytest.fixture(scope="module")
def small_gateway(sims: Sim) -> Iterator[Gateway]:
    gw = Gateway(sims.urls[:1], "--max-payload-size", "1K", "--request-timeout-secs", "1", "--disable-retries")
    yield gw
    gw.stop()


def test_body_over_max_payload_size_is_413(small_gateway: Gateway) -> None:
    big = {"model": "mock-model", "messages": [{"role": "user", "content": "x" * 4096}]}
    response = httpx.post(small_gateway.url + "/v1/chat/completions", json=big)
    assert response.status_code == 413 and _error(response)["code"] == "request_body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "mock-model", "prompt": "'
        for _ in range(8):
            yield b"y" * 512
        yield b'"}'

    streamed = httpx.post(small_gateway.url + "/v1/completions", content=chunks())
    assert streamed.status_code == 413
    # The gateway keeps serving.
    ok = httpx.post(small_gateway.url + "/v1/completions", json={"model": "mock-model", "prompt": "hi",
                                                                 "max_tokens": 1})
    assert ok.status_code == 200


def test_upstream_timeout_is_504_and_the_worker_sees_the_abort(small_gateway: Gateway, sims: Sim) -> None:
    sims.faults(0, hang=True)
    started = time.monotonic()
    response = httpx.post(small_gateway.url + "/v1/completions",
                          json={"model": "mock-model", "prompt": "hi"}, timeout=10)
    assert response.status_code == 504 and _error(response)["code"] == "call_upstream_timeout"
    assert time.monotonic() - started < 5
    wait_until(lambda: sims.stats(0)["in_flight"] == 0, 5, message="the hung request to be closed")
    assert sims.stats(0)["aborted"] == 1


def test_no_workers_registered_is_503() -> None:
    gw = Gateway([])
    try:
        response = httpx.post(gw.url + "/v1/chat/completions", json={"model": "m", "messages": []})
        assert response.status_code == 503 and _error(response)["code"] == "no_workers"
        assert httpx.get(gw.url + "/readiness").status_code == 503
        assert httpx.get(gw.url + "/liveness").text == "OK"
    finally:
        gw.stop()


def test_no_available_worker_for_the_model_is_503(sims: Sim) -> None:
    """The model's only worker is draining (a hung request keeps it busy): 503, not 404."""
    gw = Gateway(sims.urls[:1], "--disable-retries", "--worker-drain-timeout-secs", "30")
    try:
        sims.faults(0, hang=True)
        with httpx.Client(timeout=30) as http:
            worker_id = gw.workers()[0]["id"]
            def hung_request() -> None:
                with contextlib.suppress(httpx.HTTPError):
                    httpx.post(gw.url + "/v1/completions", json={"model": "mock-model", "prompt": "x"}, timeout=3)

            hung = threading.Thread(target=hung_request, daemon=True)
            hung.start()
            wait_until(lambda: sims.stats(0)["in_flight"] == 1, message="the hung request")
            assert http.delete(f"{gw.url}/workers/{worker_id}").status_code == 202
            response = http.post(gw.url + "/v1/completions", json={"model": "mock-model", "prompt": "x"})
            assert response.status_code == 503 and _error(response)["code"] == "no_available_workers"
            assert response.headers["retry-after"]
            hung.join()
    finally:
        gw.stop()
