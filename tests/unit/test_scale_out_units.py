"""Scale-out pieces in-process: the metrics merge, the split of admission limits among processes,
the local file channel and registry reconciliation, sticky keys that agree across instances, and
no Redis import for a lone process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shepherd.config import AdmissionConfig, GatewayConfig, MeshConfig, PolicyOptions, ProcessConfig
from shepherd.mesh.file_store import FileStore
from shepherd.mesh.mesh import Mesh
from shepherd.mesh.registry_sync import RegistrySync, decode_spec, encode_spec
from shepherd.observability.aggregate import merge
from shepherd.policies.base import RoutingRequest
from shepherd.policies.manual import ManualPolicy
from shepherd.policies.registry import PolicyRegistry
from shepherd.supervisor import ChildInfo, child_config
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.spec import WorkerSpec
from shepherd.workers.worker import Worker, WorkerStatus, WorkerType

pytestmark = pytest.mark.unit

CHILD_A = """# TYPE smg_http_requests counter
smg_http_requests_total{path="/v1/chat/completions"} 3.0
smg_http_requests_created{path="/v1/chat/completions"} 100.0
# TYPE smg_http_connections_active gauge
smg_http_connections_active 2.0
# TYPE smg_worker_health gauge
smg_worker_health{worker="http://w0"} 1.0
# TYPE smg_worker_cb_state gauge
smg_worker_cb_state{worker="http://w0"} 0.0
# TYPE smg_router_ttfb_seconds histogram
smg_router_ttfb_seconds_bucket{le="0.1"} 1.0
smg_router_ttfb_seconds_bucket{le="+Inf"} 2.0
smg_router_ttfb_seconds_count 2.0
smg_router_ttfb_seconds_sum 0.3
"""
CHILD_B = CHILD_A.replace("} 3.0", "} 4.0").replace("} 100.0", "} 90.0").replace(
    'smg_worker_health{worker="http://w0"} 1.0', 'smg_worker_health{worker="http://w0"} 0.0').replace(
    'smg_worker_cb_state{worker="http://w0"} 0.0', 'smg_worker_cb_state{worker="http://w0"} 1.0')


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_metrics_merge_sums_counters_and_merges_gauges_by_meaning() -> None:
    merged = _samples(merge([CHILD_A, CHILD_B]))
    chat = (("path", "/v1/chat/completions"),)
    assert merged[("smg_http_requests_total", chat)] == 7
    assert merged[("smg_http_requests_created", chat)] == 90  # the earliest start
    assert merged[("smg_http_connections_active", ())] == 4  # in flight: adds up
    assert merged[("smg_worker_health", (("worker", "http://w0"),))] == 0  # out of rotation somewhere
    assert merged[("smg_worker_cb_state", (("worker", "http://w0"),))] == 1  # the worst breaker
    assert merged[("smg_router_ttfb_seconds_bucket", (("le", "+Inf"),))] == 4
    assert merged[("smg_router_ttfb_seconds_sum", ())] == pytest.approx(0.6)


def test_admission_limits_are_for_the_whole_gateway() -> None:
    config = GatewayConfig(admission=AdmissionConfig(max_concurrent_requests=9, queue_size=100,
                                                     rate_limit_tokens_per_second=30,
                                                     per_key_rate_limit_tokens_per_second=3,
                                                     per_key_max_concurrent_requests=6),
                           process=ProcessConfig(workers=3))
    child = child_config(config, ChildInfo(1, 3, 31000, "/tmp/x"))
    assert child.admission.max_concurrent_requests == 3
    assert child.admission.queue_size == 34  # rounded up: never below the whole gateway's
    assert child.admission.rate_limit_tokens_per_second == 10
    assert child.admission.per_key_max_concurrent_requests == 2
    assert child.process.child_index == 1 and child.process.local_channel_dir == "/tmp/x"
    # With the mesh, rates are fleet buckets in Redis: every process asks for the full rate.
    meshed = child_config(GatewayConfig(admission=config.admission, mesh=MeshConfig(redis_url="redis://h:1/0")),
                          ChildInfo(0, 3, 31000, "/tmp/x"))
    assert meshed.admission.rate_limit_tokens_per_second == 30
    assert meshed.admission.max_concurrent_requests == 3  # this process's capacity
    assert meshed.admission.per_key_max_concurrent_requests == 6  # the fleet's leases count it


@dataclass
class _Job:
    url: str
    status: str = "pending"


@dataclass
class _Manager:
    """Records what reconciliation asks of the worker manager."""

    registry: WorkerRegistry
    added: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[dict[str, Any]] = field(default_factory=list)

    def pending_jobs(self) -> list[_Job]:
        return []

    def submit_add(self, spec: WorkerSpec, worker_id: str | None = None) -> str:
        assert worker_id is not None
        self.added.append((worker_id, spec.url))
        self.registry.add(Worker(id=worker_id, url=spec.url, base_url=spec.url, model_ids=("m",),
                                 labels=dict(spec.labels)))
        return worker_id

    def submit_remove(self, worker: Worker) -> None:
        self.removed.append(worker.url)
        worker.status = WorkerStatus.DRAINING

    def update(self, worker: Worker, changes: dict[str, Any]) -> Worker:
        self.updated.append(changes)
        worker.labels = dict(changes.get("labels", worker.labels))
        return worker


def test_spec_round_trip() -> None:
    spec = WorkerSpec(url="http://w1", worker_type=WorkerType.DECODE, labels={"a": "b"}, priority=7)
    assert decode_spec(encode_spec("id-1", spec)) == ("id-1", spec)
    # A newer peer's entry (a rolling upgrade): the fields this version knows are kept, the rest left out.
    newer = orjson.loads(encode_spec("id-1", spec))
    newer["spec"]["a_field_from_the_future"] = {"x": 1}
    assert decode_spec(orjson.dumps(newer)) == ("id-1", spec)


def test_file_channel_spreads_add_patch_and_remove(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = FileStore(str(tmp_path))
        here, there = WorkerRegistry(), WorkerRegistry()
        here_manager, there_manager = _Manager(here), _Manager(there)
        writer = RegistrySync(store, here, here_manager)  # type: ignore[arg-type]
        reader = RegistrySync(store, there, there_manager)  # type: ignore[arg-type]
        writer.announce_add("id-1", WorkerSpec(url="http://w1"))
        await writer.sync()
        await reader.sync()
        assert there_manager.added == [("id-1", "http://w1")]
        await reader.sync()  # nothing new: nothing done
        assert there_manager.added == [("id-1", "http://w1")] and there_manager.updated == []
        worker = Worker(id="id-1", url="http://w1", base_url="http://w1", model_ids=("m",), labels={"z": "1"})
        writer.announce_update(worker)
        await writer.sync()
        await reader.sync()
        assert there_manager.updated == [{"labels": {"z": "1"}}]
        writer.announce_remove(worker)
        await writer.sync()
        await reader.sync()
        assert there_manager.removed == ["http://w1"]
        # A startup worker does not replace an entry another instance wrote.
        writer.announce_add("id-2", WorkerSpec(url="http://w2"))
        reader.announce_add("id-3", WorkerSpec(url="http://w2"), startup=True)
        await writer.sync()
        await reader.sync()
        _, entries = await store.read("workers")
        assert decode_spec(entries["http://w2"])[0] == "id-2"

    asyncio.run(scenario())


def test_a_worker_removed_as_unhealthy_leaves_the_shared_map_and_stays_removed(tmp_path: Path) -> None:
    """Removal by the health checker goes through the mesh: a local-only removal would be undone by
    this instance's own next reconcile (the map still lists the worker) and missed by its peers."""
    async def scenario() -> None:
        config = GatewayConfig(process=ProcessConfig(workers=2, child_index=0, local_channel_dir=str(tmp_path)))
        here, there = WorkerRegistry(), WorkerRegistry()
        here_manager, there_manager = _Manager(here), _Manager(there)
        policies = PolicyRegistry("round_robin", PolicyOptions(), here)
        mesh = Mesh.create(config, here, here_manager, policies)  # type: ignore[arg-type]
        assert mesh is not None
        peer = RegistrySync(FileStore(str(tmp_path)), there, there_manager)  # type: ignore[arg-type]
        mesh.registry.announce_add("id-1", WorkerSpec(url="http://w1"))
        mesh.registry.announce_add("id-2", WorkerSpec(url="http://w2"))
        await mesh.registry.sync()
        await peer.sync()
        worker = here.get("id-1")
        assert worker is not None
        mesh.remove_worker(worker)
        here.remove(worker.id)
        await mesh.registry.sync()
        peer.announce_add("id-3", WorkerSpec(url="http://w3"))  # a later change moves the map's version
        await peer.sync()
        await mesh.registry.sync()
        assert [url for _, url in here_manager.added].count("http://w1") == 1  # not brought back
        assert there_manager.removed == ["http://w1"]  # and drained by the peer
        _, entries = await mesh.store.read("workers")
        assert "http://w1" not in entries

    asyncio.run(scenario())


def test_sticky_keys_agree_across_instances_without_talking() -> None:
    options = PolicyOptions(agree_across_instances=True)
    workers = [Worker(id=f"id{i}", url=f"http://w{i}", model_ids=("m",)) for i in range(4)]
    others = [Worker(id=f"other{i}", url=f"http://w{i}", model_ids=("m",)) for i in reversed(range(4))]
    one, two = ManualPolicy(options), ManualPolicy(options)

    def request(key: str) -> RoutingRequest:
        return RoutingRequest("/v1/chat/completions", {}, {"x-smg-routing-key": key})

    picks = {f"k{i}": one.select(workers, request(f"k{i}")) for i in range(200)}
    assert all(two.select(others, request(k)).url == w.url for k, w in picks.items())  # type: ignore[union-attr]
    assert len({w.url for w in picks.values() if w is not None}) == 4  # spread over every worker
    gone = workers[0].url
    survivors_one = [w for w in workers if w.url != gone]
    survivors_two = [w for w in others if w.url != gone]
    for key in picks:
        assert one.select(survivors_one, request(key)).url == two.select(survivors_two, request(key)).url  # type: ignore[union-attr]


def test_a_lone_process_imports_no_redis() -> None:
    code = ("import sys; import shepherd.cli; from shepherd.context import AppContext; "
            "import shepherd.app, shepherd.mesh.mesh; print('redis' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "False"
