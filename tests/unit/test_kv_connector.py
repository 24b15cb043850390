"""vLLM PD over HTTP: the KV hand-over each prefill worker's connector asks for (SMG's connector modes)."""

from __future__ import annotations

import uuid

import pytest

from shepherd.routers.http.kv_connector import handoff_for
from shepherd.workers.spec import SpecError, WorkerSpec
from shepherd.workers.worker import Worker, WorkerType


def prefill(**fields: object) -> Worker:
    return Worker(id="p", url="http://10.0.0.7:8000", model_ids=("m",), worker_type=WorkerType.PREFILL,
                  runtime_type="vllm", **fields)  # type: ignore[arg-type]


def test_a_prefill_without_a_connector_is_tagged_as_nixl_and_relays_what_it_returns() -> None:
    for worker in (prefill(), prefill(kv_connector="NixlConnector")):
        handoff = handoff_for(worker)
        assert handoff.mode == "nixl" and handoff.needs_returned_params
        assert handoff.prefill_params() == {"do_remote_decode": True, "do_remote_prefill": False}
        returned = {"do_remote_prefill": True, "remote_engine_id": "e", "remote_block_ids": [1]}
        assert handoff.decode_params(returned) == returned
        assert handoff.decode_params(None) is None


def test_mooncake_mints_one_transfer_id_for_both_legs() -> None:
    handoff = handoff_for(prefill(kv_connector="MooncakeConnector", kv_engine_id="eng", bootstrap_port=9123))
    assert handoff.mode == "mooncake" and not handoff.needs_returned_params
    transfer_id = handoff.transfer_id
    assert transfer_id is not None and uuid.UUID(transfer_id.removeprefix("xfer-")).version == 7
    assert handoff.prefill_params() == {"do_remote_decode": True, "do_remote_prefill": False,
                                        "transfer_id": transfer_id}
    assert handoff.decode_params({"ignored": True}) == {
        "do_remote_decode": False, "do_remote_prefill": True, "transfer_id": transfer_id,
        "remote_engine_id": "eng", "remote_bootstrap_addr": "http://10.0.0.7:9123"}
    assert handoff_for(prefill(kv_connector="MooncakeConnector", kv_engine_id="eng")).transfer_id != transfer_id


def test_mooncake_bootstrap_port_defaults_to_vllms() -> None:
    handoff = handoff_for(prefill(kv_connector="MooncakeConnector", kv_engine_id="eng"))
    assert handoff.decode_params(None)["remote_bootstrap_addr"] == "http://10.0.0.7:8998"  # type: ignore[index]


@pytest.mark.parametrize("fields", [
    {},  # no engine id registered
    {"kv_engine_id": "eng", "labels": {"dp_size": "2"}},  # a DP engine, no pinned rank
    {"kv_engine_id": "eng", "labels": {"dp_size": "many"}},  # unknown topology: fail closed
])
def test_mooncake_without_a_known_engine_id_mints_nothing(fields: dict) -> None:
    handoff = handoff_for(prefill(kv_connector="MooncakeConnector", **fields))
    assert handoff.mode == "mooncake"  # still counted as a Mooncake dispatch
    assert handoff.prefill_params() is None and handoff.decode_params({"x": 1}) is None  # decode recomputes


def test_mooncake_engine_id_of_a_pinned_dp_rank() -> None:
    worker = prefill(kv_connector="MooncakeConnector", kv_engine_id="eng", dp_rank=1, dp_size=2,
                     labels={"dp_size": "2"})
    assert handoff_for(worker).engine_id == "eng_dp1"
    single = prefill(kv_connector="MooncakeConnector", kv_engine_id="eng", labels={"dp_size": "1"})
    assert handoff_for(single).engine_id == "eng"


def test_another_connector_is_passthrough() -> None:
    handoff = handoff_for(prefill(kv_connector="LMCacheConnectorV1"))
    assert handoff.mode == "passthrough" and not handoff.needs_returned_params
    assert handoff.prefill_params() is None
    assert handoff.decode_params({"k": "v"}) == {"k": "v"} and handoff.decode_params({}) is None


def test_registration_takes_smgs_connector_fields() -> None:
    spec = WorkerSpec.from_json({"url": "http://p:8000", "worker_type": "prefill", "kv_connector": "MooncakeConnector",
                                 "kv_engine_id": "prefill-0", "bootstrap_port": 8998})
    assert (spec.kv_connector, spec.kv_engine_id) == ("MooncakeConnector", "prefill-0")
    for bad in ({"kv_connector": 3}, {"kv_engine_id": ""}, {"kv_connector": "x" * 300}):
        with pytest.raises(SpecError, match="kv_"):
            WorkerSpec.from_json({"url": "http://p:8000", **bad})
