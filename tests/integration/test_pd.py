"""Prefill/decode disaggregation with 2 prefill and 2 decode simulator processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import orjson
import pytest

from shepherd.testing import Gateway, Sim, free_ports, wait_until

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "tell me about disaggregation"}],
        "max_tokens": 6}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Sim, Sim]]:
    bootstrap = free_ports(2)
    prefill = Sim(2, "--role", "prefill", "--bootstrap-ports", *map(str, bootstrap))
    prefill.bootstrap_ports = bootstrap  # type: ignore[attr-defined]
    decode = Sim(2, "--role", "decode", "--pd-timeout-secs", "1")
    yield prefill, decode
    prefill.stop()
    decode.stop()


def pd_gateway(prefill: Sim, decode: Sim, *flags: str) -> Gateway:
    args = ["--pd-disaggregation"]
    for url, port in zip(prefill.urls, prefill.bootstrap_ports, strict=True):  # type: ignore[attr-defined]
        args += ["--prefill", url, str(port)]
    for url in decode.urls:
        args += ["--decode", url]
    return Gateway([], *args, *flags, expect_workers=4)


@pytest.fixture(scope="module")
def gateway(cluster: tuple[Sim, Sim]) -> Iterator[Gateway]:
    gw = pd_gateway(*cluster, "--retry-initial-backoff-ms", "1")
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def _reset(cluster: tuple[Sim, Sim]) -> Iterator[None]:
    yield
    for sim in cluster:
        sim.reset()


def transfers(sim: Sim) -> int:
    return sum(sim.stats(i)["kv_transfers"] for i in range(2))


def in_flight(sim: Sim) -> int:
    return sum(sim.stats(i)["in_flight"] for i in range(2))


def test_chat_plain_and_streaming(gateway: Gateway, cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(**CHAT)
    assert len(reply.choices[0].message.content.split()) == 6 and reply.usage.completion_tokens == 6
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**CHAT, stream=True)
                       if c.choices)
    assert streamed == reply.choices[0].message.content  # the decode worker's deterministic answer
    assert transfers(prefill) == 2 and transfers(decode) == 2
    # Both legs of each request got the same room (the two requests may have gone to different pairs).
    prefill_bodies = [orjson.loads(r["body"]) for i in range(2) for r in prefill.requests(i)]
    decode_bodies = [orjson.loads(r["body"]) for i in range(2) for r in decode.requests(i)]
    assert len(prefill_bodies) == len(decode_bodies) == 2
    assert {b["bootstrap_room"] for b in prefill_bodies} == {b["bootstrap_room"] for b in decode_bodies}
    assert all(b["bootstrap_host"] == "127.0.0.1" for b in prefill_bodies)
    assert all(b["bootstrap_port"] in prefill.bootstrap_ports for b in prefill_bodies)  # type: ignore[attr-defined]
    for family in ("smg_pd_ttft_seconds_count", "smg_pd_prefill_duration_seconds_count"):  # SMG's PD families
        assert gateway.metric(family, backend_type="pd", model="mock-model", runtime="sglang") >= 2, family


def test_generate_plain_streaming_and_batched(gateway: Gateway, cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        single = http.post("/generate", json={"text": "one two three", "max_new_tokens": 3}).json()
        assert single["meta_info"]["completion_tokens"] == 3
        with http.stream("POST", "/generate", json={"text": "one two three", "max_new_tokens": 3,
                                                      "stream": True}) as response:
            events = [line for line in response.iter_lines() if line.startswith("data:")]
        assert events[-1] == "data: [DONE]" and orjson.loads(events[-2][6:])["text"] == single["text"]
        before = transfers(decode)
        batch = http.post("/generate", json={"text": ["a b", "c d e", "f"], "max_new_tokens": 2}).json()
        assert [item["meta_info"]["completion_tokens"] for item in batch] == [2, 2, 2]
        assert transfers(decode) - before == 3  # one room per batch item
        # The batch went to one pair as one request whose rooms are a list, one per item; the earlier
        # single requests may have gone to either decode worker, so look for the batch among all of them.
        decode_bodies = [orjson.loads(r["body"]) for i in range(2) for r in decode.requests(i)]
        batched = [b["bootstrap_room"] for b in decode_bodies if isinstance(b["text"], list)]
        assert len(batched) == 1 and isinstance(batched[0], list) and len(set(batched[0])) == 3


def test_logprobs_are_merged(gateway: Gateway) -> None:
    body = {"text": "alpha beta gamma delta", "max_new_tokens": 2, "return_logprob": True}
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        meta = http.post("/generate", json=body).json()["meta_info"]
        assert len(meta["input_token_logprobs"]) == 4  # the prefill's prompt logprobs, prepended
        assert meta["input_token_logprobs"][0][0] is None and len(meta["output_token_logprobs"]) == 2
        with http.stream("POST", "/generate", json={**body, "stream": True}) as response:
            chunks = [orjson.loads(line[6:]) for line in response.iter_lines()
                      if line.startswith("data: {")]
        assert all(len(c["meta_info"]["input_token_logprobs"]) == 4 for c in chunks)


def test_a_failing_prefill_is_retried_on_another_pair(gateway: Gateway, cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    prefill.faults(0, error_rate=1.0)
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for _ in range(6):
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert prefill.stats(0)["errors_injected"] >= 1
    assert gateway.metric("smg_pd_bootstrap_failures_total", backend_type="pd") >= 1  # the failed prefill legs
    wait_until(lambda: in_flight(decode) == 0, 5, message="the cancelled decode halves to end")


def test_every_prefill_failing_is_a_clean_error_and_no_decode_left_running(gateway: Gateway,
                                                                           cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    for i in range(2):
        prefill.faults(i, error_rate=1.0, error_status=503)
    response = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "prefill_upstream_error"
    wait_until(lambda: in_flight(decode) == 0, 5, message="no decode request left running")
    assert sum(decode.stats(i)["completed"] for i in range(2)) == 0


def test_a_failing_decode_is_retried_then_reported(gateway: Gateway, cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    decode.faults(0, error_rate=1.0)
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        for _ in range(4):
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        decode.faults(1, error_rate=1.0)
        failed = http.post("/v1/chat/completions", json=CHAT)
    assert failed.status_code == 500 and failed.json()["message"] == "injected fault"  # the engine's own error
    wait_until(lambda: in_flight(prefill) == 0, 5, message="prefill halves to end")


def test_mismatched_room_never_reaches_the_client_as_success(cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    gw = pd_gateway(prefill, decode, "--retry-max-retries", "2")
    try:
        for i in range(2):
            prefill.faults(i, pd_wrong_room=True)
        response = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert response.status_code >= 500
        assert "did not arrive" in response.text
        stream = httpx.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30)
        assert stream.status_code >= 500 and "[DONE]" not in stream.text
        # Prefills that answered, decodes that did not get the KV: failed hand-overs, not bootstrap failures.
        assert gw.metric("smg_pd_kv_transfer_failures_total", backend_type="pd") >= 2
        assert gw.metric("smg_pd_bootstrap_failures_total", backend_type="pd") == 0
    finally:
        gw.stop()


def test_vllm_style_prefill_then_decode(cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    gw = pd_gateway(prefill, decode, "--pd-transfer", "vllm")
    try:
        reply = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30).json()
        assert len(reply["choices"][0]["message"]["content"].split()) == 6
        prefill_body = orjson.loads(next(r for i in range(2) for r in prefill.requests(i))["body"])
        assert prefill_body["max_tokens"] == 1 and prefill_body["stream"] is False
        assert prefill_body["kv_transfer_params"] == {"do_remote_decode": True, "do_remote_prefill": False}
        decode_body = orjson.loads(next(r for i in range(2) for r in decode.requests(i))["body"])
        assert decode_body["kv_transfer_params"]["do_remote_prefill"] is True
        assert decode_body["kv_transfer_params"]["transfer_id"].startswith("xfer-")
        assert transfers(decode) == 1
        assert gw.metric("smg_pd_kv_transfer_duration_seconds_count", backend_type="pd", model="mock-model") == 1
        assert gw.metric("smg_pd_kv_transfer_failures_total", backend_type="pd") == 0
        # A prefill registered without a connector is taken for NIXL (see routers/http/kv_connector.py).
        assert gw.metric("smg_pd_kv_connector_mode_total", mode="nixl") == 1
        assert gw.metric("smg_pd_kv_connector_mode_total", mode="mooncake") == 0
    finally:
        gw.stop()


def _registered_pair(gw: Gateway, prefill: dict, decode_url: str) -> None:
    with httpx.Client(base_url=gw.url, timeout=10) as http:
        assert http.post("/workers", json={"worker_type": "prefill", **prefill}).status_code == 202
        assert http.post("/workers", json={"url": decode_url, "worker_type": "decode"}).status_code == 202
        wait_until(lambda: http.get("/readiness").status_code == 200, 10, message="the registered pair")


def test_vllm_mooncake_hand_over_is_minted_by_the_gateway(cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    bootstrap = prefill.bootstrap_ports[0]  # type: ignore[attr-defined]
    gw = Gateway([], "--pd-disaggregation", "--pd-transfer", "vllm", "--retry-max-retries", "1",
                 expect_workers=0)
    try:
        # SMG's registration of a Mooncake prefill: connector, the engine id of its kv_transfer_config
        # (the simulator's is sim-<host>-<bootstrap port>) and its bootstrap port.
        _registered_pair(gw, {"url": prefill.urls[0], "kv_connector": "MooncakeConnector",
                              "kv_engine_id": f"sim-127.0.0.1-{bootstrap}", "bootstrap_port": bootstrap},
                         decode.urls[0])
        listed = {w["worker_type"]: w for w in httpx.get(gw.url + "/workers", timeout=5).json()["workers"]}
        assert listed["prefill"]["kv_connector"] == "MooncakeConnector"
        reply = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert reply.status_code == 200 and len(reply.json()["choices"][0]["message"]["content"].split()) == 6
        prefill_params = orjson.loads(prefill.requests(0)[-1]["body"])["kv_transfer_params"]
        transfer_id = prefill_params["transfer_id"]
        assert prefill_params == {"do_remote_decode": True, "do_remote_prefill": False, "transfer_id": transfer_id}
        assert transfer_id.startswith("xfer-") and uuid.UUID(transfer_id.removeprefix("xfer-")).version == 7
        assert orjson.loads(decode.requests(0)[-1]["body"])["kv_transfer_params"] == {
            "do_remote_decode": False, "do_remote_prefill": True, "transfer_id": transfer_id,
            "remote_engine_id": f"sim-127.0.0.1-{bootstrap}", "remote_bootstrap_addr": f"http://127.0.0.1:{bootstrap}"}
        assert transfers(decode) == 1  # the decode fetched the KV the prefill pushed under the minted id
        assert gw.metric("smg_pd_kv_connector_mode_total", mode="mooncake") == 1
        assert gw.metric("smg_pd_kv_connector_mode_total", mode="nixl") == 0
        assert gw.metric("smg_pd_kv_transfer_failures_total", backend_type="pd") == 0
    finally:
        gw.stop()


def test_vllm_mooncake_with_the_wrong_engine_id_is_a_failed_hand_over(cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    bootstrap = prefill.bootstrap_ports[0]  # type: ignore[attr-defined]
    gw = Gateway([], "--pd-disaggregation", "--pd-transfer", "vllm", "--retry-max-retries", "1",
                 expect_workers=0)
    try:
        _registered_pair(gw, {"url": prefill.urls[0], "kv_connector": "MooncakeConnector",
                              "kv_engine_id": "another-engine", "bootstrap_port": bootstrap}, decode.urls[0])
        reply = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert reply.status_code >= 500  # the decode found the KV held by an engine it was not told of
        assert gw.metric("smg_pd_kv_transfer_failures_total", backend_type="pd") >= 1
        assert gw.metric("smg_pd_kv_connector_mode_total", mode="mooncake") >= 1
    finally:
        gw.stop()


def test_readiness_health_generate_and_runtime_registration(cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    gw = Gateway([], "--pd-disaggregation", expect_workers=0)
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            assert http.get("/readiness").json()["reason"] == "no healthy prefill workers"
            http.post("/workers", json={"url": prefill.urls[0], "worker_type": "prefill",
                                        "bootstrap_port": prefill.bootstrap_ports[0]})  # type: ignore[attr-defined]
            wait_until(lambda: http.get("/readiness").json().get("healthy_prefill_workers") == 1, 10)
            assert http.get("/readiness").status_code == 503  # still no decode worker
            http.post("/workers", json={"url": decode.urls[0], "worker_type": "decode"})
            wait_until(lambda: http.get("/readiness").status_code == 200, 10, message="a full pair")
            assert http.get("/health_generate").status_code == 200
            assert http.get("/get_server_info").json()["served_model_name"] == "mock-model"
            assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
            stats = http.get("/workers").json()["stats"]
            assert stats["prefill_count"] == 1 and stats["decode_count"] == 1
    finally:
        gw.stop()


def test_prefill_admission_bounds_each_prefill_worker(cluster: tuple[Sim, Sim]) -> None:
    prefill, decode = cluster
    gw = pd_gateway(prefill, decode, "--pd-transfer", "vllm", "--prefill-max-inflight-requests-per-worker", "1",
                    "--prefill-queue-size", "0", "--request-timeout-secs", "3", "--retry-max-retries", "1")
    try:
        for i in range(2):
            prefill.faults(i, hang=True)  # every prefill holds its slot until the request's deadline
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(httpx.post, gw.url + "/v1/chat/completions", json=CHAT, timeout=30)
                    for _ in range(2)]
            wait_until(lambda: in_flight(prefill) == 2, 10, message="one prefill on each prefill worker")
            refused = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30)
            assert refused.status_code == 429 and refused.headers["Retry-After"]
            assert refused.json()["error"]["code"] == "prefill_queue_full"
            assert all(f.result().status_code == 504 for f in held)
        prefill.reset()
        assert httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=30).status_code == 200  # slots back
    finally:
        gw.stop()
