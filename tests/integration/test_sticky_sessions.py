"""--routing-key-override end to end: on round_robin, a routing key keeps its worker over many requests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from shepherd.testing import Gateway, Sim

pytestmark = pytest.mark.integration

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    sim = Sim(3)
    gw = Gateway(sim.urls, "--policy", "round_robin", "--routing-key-override", expect_workers=3)
    try:
        yield gw
    finally:
        gw.stop()
        sim.stop()


def _served_by(client: httpx.Client, key: str | None) -> str:
    headers = {"x-smg-routing-key": key} if key else {}
    response = client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200, response.text
    return response.headers["x-smg-routed-worker-id"]


def test_a_routing_key_sticks_to_one_worker_on_round_robin(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        by_key = {key: {_served_by(client, key) for _ in range(5)} for key in ("a", "b", "c", "d")}
        assert all(len(served) == 1 for served in by_key.values()), by_key
        # Four keys placed by round robin over three workers: they do not all share one.
        assert len(set().union(*by_key.values())) > 1
        # Without a key, round robin still rotates.
        assert len({_served_by(client, None) for _ in range(3)}) == 3


def test_a_responses_chain_and_a_conversation_stick_without_a_key(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        def respond(**extra: str) -> tuple[str, str]:
            body = {"model": "mock-model", "input": "hi", "max_output_tokens": 2, **extra}
            response = client.post("/v1/responses", json=body)
            assert response.status_code == 200, response.text
            return response.json()["id"], response.headers["x-smg-routed-worker-id"]

        previous, first = respond()
        served = {first}
        for _ in range(4):  # round robin alone would visit all three workers
            previous, worker = respond(previous_response_id=previous)
            served.add(worker)
        assert served == {first}

        conversation = client.post("/v1/conversations", json={}).json()["id"]
        assert len({respond(conversation=conversation)[1] for _ in range(4)}) == 1
