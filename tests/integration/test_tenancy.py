"""Tenants end to end: per-tenant keys and a trusted tenant header name the caller in the access log and
the `tenant` metric label; no tenant key reaches a worker; per-tenant rate limits answer 429; the priority
scheduler preempts a queued lower class, and an admitted one that has not begun its answer, for a higher
one (admission here: one slot, one queue place);
stored responses and conversations are scoped to their tenant."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from shepherd.testing import Gateway, Sim, wait_until

pytestmark = pytest.mark.integration

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
ADMIN = "admin-secret"


LIMITS = """
tenants:
  "header:limited": {requests_per_minute: 2}
"""
PRIORITY = """
tenants:
  "auth:team-a": {max_class: system}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sim, Gateway]]:
    directory = tmp_path_factory.mktemp("tenancy")
    limits, priority = directory / "limits.yaml", directory / "priority.yaml"
    limits.write_text(LIMITS)
    priority.write_text(PRIORITY)
    sim = Sim(1)
    gw = Gateway(sim.urls, "--api-key", "shared-secret", "--tenant-api-key", "team-a:secret-a",
                 "--tenant-api-key", "team-b:secret-b", "--trust-tenant-header",
                 "--tenant-rate-limit-enabled", "--tenant-rate-limit-config", str(limits),
                 "--priority-scheduler-enabled", "--priority-scheduler-config", str(priority),
                 "--max-concurrent-requests", "1", "--queue-size", "1",
                 "--control-plane-api-keys", f"ops:Ops:admin:{ADMIN}", admin_key=ADMIN)
    try:
        yield sim, gw
    finally:
        gw.stop()
        sim.stop()


def _chat(gw: Gateway, key: str, **headers: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=10,
                      headers={"Authorization": f"Bearer {key}", **headers})


def test_tenant_keys_name_the_tenant_in_logs_and_metrics(cluster: tuple[Sim, Gateway]) -> None:
    sim, gw = cluster
    assert _chat(gw, "secret-a").status_code == 200
    assert _chat(gw, "secret-b", **{"x-smg-tenant-id": "team-a-impersonated"}).status_code == 200
    assert _chat(gw, "shared-secret", **{"x-smg-tenant-id": "acme"}).status_code == 200  # a trusted proxy
    assert _chat(gw, "wrong").status_code == 401
    assert gw.metric("smg_tenant_requests_total", tenant="auth:team-a", status_code="200") == 1
    assert gw.metric("smg_tenant_requests_total", tenant="auth:team-b", status_code="200") == 1
    assert gw.metric("smg_tenant_requests_total", tenant="header:acme", status_code="200") == 1
    output = gw.output()
    assert "tenant=auth:team-a" in output and "tenant=header:acme" in output
    assert "team-a-impersonated" not in output
    for secret in ("secret-a", "secret-b", "shared-secret"):
        assert secret not in output
    for request in sim.requests():
        seen = {k.lower(): v for k, v in request["headers"].items()}
        assert "authorization" not in seen and "x-api-key" not in seen  # tenant keys are the gateway's own


def test_a_bad_tenant_header_is_a_400(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    response = _chat(gw, "shared-secret", **{"x-smg-tenant-id": "x" * 200})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_tenant_header"


def test_a_tenant_over_its_rate_limit_gets_429_with_retry_after(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    limited = {"x-smg-tenant-id": "limited"}
    assert [_chat(gw, "shared-secret", **limited).status_code for _ in range(2)] == [200, 200]
    refused = _chat(gw, "shared-secret", **limited)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "tenant_rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert _chat(gw, "secret-a").status_code == 200  # other tenants are not limited
    assert gw.metric("smg_tenant_requests_total", tenant="header:limited", status_code="429") == 1


def test_a_higher_class_preempts_lower_ones_queued_or_not_yet_answering(cluster: tuple[Sim, Gateway]) -> None:
    sim, gw = cluster
    sim.faults(latency_ms=1500)
    try:
        with ThreadPoolExecutor(3) as pool:
            running = pool.submit(_chat, gw, "secret-b")  # admitted, its answer not begun yet
            wait_until(lambda: gw.metric("smg_admission_inflight") == 1, 10, message="the slot taken")
            queued = pool.submit(_chat, gw, "secret-b", **{"x-smg-priority": "bulk"})
            wait_until(lambda: gw.metric("smg_admission_queue_depth") == 1, 10, message="a queued request")
            urgent = pool.submit(_chat, gw, "secret-a", **{"x-smg-priority": "system"})
            for loser, what in ((queued, "place in the queue"), (running, "slot before its answer began")):
                preempted = loser.result(timeout=20)
                assert preempted.status_code == 503 and preempted.headers["X-SMG-Preempted"] == "true"
                error = preempted.json()["error"]
                assert error["code"] == "scheduler_preempted" and what in error["message"]
            assert urgent.result(timeout=20).status_code == 200
        wait_until(lambda: sim.stats()["aborted"] >= 1, 10, message="the preempted upstream request aborted")
    finally:
        sim.faults(latency_ms=0)
    assert gw.metric("smg_admission_inflight") == 0 and gw.metric("smg_admission_queue_depth") == 0
    capped = _chat(gw, "secret-b", **{"x-smg-priority": "system"})  # team-b may not ask for system: default
    assert capped.status_code == 200
    assert gw.metric("smg_scheduler_requests_total", tenant="auth:team-b", outcome="preempted") == 2
    assert gw.metric("smg_scheduler_requests_total", **{"class": "system", "tenant": "auth:team-a"}) == 1
    assert gw.metric("smg_scheduler_requests_total", **{"class": "default", "tenant": "auth:team-b"}) >= 2
    bad = _chat(gw, "secret-a", **{"x-smg-priority": "urgent"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_priority"


def _call(gw: Gateway, method: str, path: str, key: str, body: dict[str, object] | None = None) -> httpx.Response:
    return httpx.request(method, gw.url + path, json=body, timeout=10, headers={"Authorization": f"Bearer {key}"})


def test_history_is_scoped_to_the_tenant_that_stored_it(cluster: tuple[Sim, Gateway]) -> None:
    _, gw = cluster
    conversation = _call(gw, "POST", "/v1/conversations", "secret-a",
                         {"items": [{"id": "msg_chosen_by_a", "type": "message", "role": "user", "content": "mine"}]})
    assert conversation.status_code == 200
    conv = conversation.json()["id"]
    created = _call(gw, "POST", "/v1/responses", "secret-a", {"model": "mock-model", "input": "hi",
                                                               "conversation": conv, "max_output_tokens": 2})
    assert created.status_code == 200, created.text
    resp = created.json()["id"]
    for path in (f"/v1/conversations/{conv}", f"/v1/conversations/{conv}/items",
                 f"/v1/conversations/{conv}/items/msg_chosen_by_a", f"/v1/responses/{resp}",
                 f"/v1/responses/{resp}/input_items"):
        assert _call(gw, "GET", path, "secret-a").status_code == 200, path
        for other in ("secret-b", "shared-secret"):  # another tenant, and the shared key's own identity
            refused = _call(gw, "GET", path, other)
            assert refused.status_code == 404 and refused.json()["error"]["code"].endswith("_not_found"), path
    for method, path, body in (("POST", f"/v1/conversations/{conv}", {"metadata": {"k": "v"}}),
                               ("POST", f"/v1/conversations/{conv}/items", {"items": [{"role": "user",
                                                                                        "content": "x"}]}),
                               ("DELETE", f"/v1/conversations/{conv}/items/msg_chosen_by_a", None),
                               ("DELETE", f"/v1/conversations/{conv}", None),
                               ("POST", f"/v1/responses/{resp}/cancel", None),
                               ("DELETE", f"/v1/responses/{resp}", None)):
        assert _call(gw, method, path, "secret-b", body).status_code == 404, (method, path)
    turn = {"model": "mock-model", "max_output_tokens": 2}
    chained = _call(gw, "POST", "/v1/responses", "secret-b", {**turn, "input": "more", "previous_response_id": resp})
    assert chained.status_code == 404 and chained.json()["error"]["code"] == "previous_response_not_found"
    joined = _call(gw, "POST", "/v1/responses", "secret-b", {**turn, "input": "more", "conversation": conv})
    assert joined.status_code == 404 and joined.json()["error"]["code"] == "conversation_not_found"
    borrowed = _call(gw, "POST", "/v1/responses", "secret-b",
                     {**turn, "input": [{"type": "item_reference", "id": "msg_chosen_by_a"}]})
    assert borrowed.status_code == 404 and borrowed.json()["error"]["code"] == "item_not_found"
    clash = _call(gw, "POST", "/v1/conversations", "secret-b",  # a's item id is not b's to overwrite
                  {"items": [{"id": "msg_chosen_by_a", "type": "message", "role": "user", "content": "theirs"}]})
    assert clash.status_code == 400 and clash.json()["error"]["code"] == "item_id_in_use"
    own = _call(gw, "POST", "/v1/responses", "secret-a", {**turn, "input": "more", "previous_response_id": resp})
    assert own.status_code == 200
    items = _call(gw, "GET", f"/v1/conversations/{conv}/items?order=asc", "secret-a").json()["data"]
    assert items[0]["id"] == "msg_chosen_by_a" and items[0]["content"][0]["text"] == "mine"
    assert _call(gw, "DELETE", f"/v1/responses/{resp}", "secret-a").status_code == 200
    assert _call(gw, "DELETE", f"/v1/conversations/{conv}", "secret-a").status_code == 200
