"""Pods to workers, discovery files and discovery settings, without any server."""

from __future__ import annotations

from typing import Any

import pytest

from shepherd.config import ConfigError, DiscoveryConfig, GatewayConfig, parse_selector
from shepherd.discovery.file import DiscoveryFileError, parse_worker_file
from shepherd.discovery.pods import PodRules, desired_workers, is_serving
from shepherd.workers.worker import WorkerType


def pod(name: str = "p", *, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        phase: str = "Running", ready: str = "True", ip: str | None = "10.0.0.5", **metadata: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": labels or {"app": "e"},
                         "annotations": annotations or {}, **metadata}, "status": status}


REGULAR = PodRules.from_config(DiscoveryConfig(provider="kubernetes", selector=(("app", "e"),), port=8000),
                               False, "worker-key")


def test_only_running_ready_pods_with_an_ip_serve() -> None:
    assert is_serving(pod())
    assert not is_serving(pod(phase="Pending"))
    assert not is_serving(pod(ready="False"))
    assert not is_serving(pod(ip=None))
    assert not is_serving(pod(deletionTimestamp="2026-01-01T00:00:00Z"))


def test_pod_to_workers() -> None:
    [worker] = desired_workers([pod()], REGULAR)
    assert worker.spec.url == "http://10.0.0.5:8000" and worker.spec.api_key == "worker-key"
    assert worker.spec.worker_type is WorkerType.REGULAR and worker.source_id == "ns/p:8000"
    assert worker.spec.labels["shepherd.ai/pod-uid"] == "uid-p"
    many = desired_workers([pod(annotations={"smg.ai/worker-ports": "9001,9002,9001",
                                             "shepherd.ai/worker-scheme": "grpc"})], REGULAR)
    assert [w.spec.url for w in many] == ["grpc://10.0.0.5:9001", "grpc://10.0.0.5:9002"]
    assert [w.spec.url for w in desired_workers([pod(annotations={"smg.ai/worker-ports": "x,1"})], REGULAR)] == [
        "http://10.0.0.5:8000"]  # an invalid list falls back to the default port
    assert desired_workers([pod(ip="fd00::5")], REGULAR)[0].spec.url == "http://[fd00::5]:8000"
    assert desired_workers([pod(labels={"app": "other"})], REGULAR) == []
    assert desired_workers([pod(uid="")], REGULAR) == []
    [mooncake] = desired_workers([pod(annotations={"smg.ai/kv-connector": "MooncakeConnector",
                                                   "smg.ai/kv-engine-id": " e7 "})], REGULAR)  # SMG 1.13's
    assert (mooncake.spec.kv_connector, mooncake.spec.kv_engine_id) == ("MooncakeConnector", "e7")
    [unusable] = desired_workers([pod(annotations={"smg.ai/kv-connector": "x" * 300})], REGULAR)
    assert unusable.spec.kv_connector is None


def test_pd_roles_bootstrap_ports_and_server_selector() -> None:
    config = DiscoveryConfig(provider="kubernetes", prefill_selector=(("app", "e"), ("role", "prefill")),
                             decode_selector=(("app", "e"), ("role", "decode")))
    rules = PodRules.from_config(config, True, None)
    assert rules.server_selector() == "app=e"
    prefill = pod("a", labels={"app": "e", "role": "prefill"},
                  annotations={"smg.ai/worker-ports": "1,2", "sglang.ai/bootstrap-port": "8998,8999"})
    decode = pod("b", labels={"app": "e", "role": "decode"}, annotations={"sglang.ai/bootstrap-port": "8998"})
    workers = desired_workers([prefill, decode, pod("c", labels={"app": "e"})], rules)
    assert [(w.spec.worker_type, w.spec.bootstrap_port) for w in workers] == [
        (WorkerType.PREFILL, 8998), (WorkerType.PREFILL, 8999), (WorkerType.DECODE, None)]
    same = pod("d", labels={"app": "e", "role": "prefill"},
               annotations={"smg.ai/worker-ports": "1,2", "sglang.ai/bootstrap-port": "7000"})
    assert [w.spec.bootstrap_port for w in desired_workers([same], rules)] == [7000, 7000]


@pytest.mark.parametrize(("source", "expected"), [
    ("namespace", "ns"), ("label:model", "llama"), ("annotation:served", "qwen"), ("label:missing", None)])
def test_model_id_from(source: str, expected: str | None) -> None:
    rules = PodRules.from_config(DiscoveryConfig(provider="kubernetes", selector=(("app", "e"),),
                                                 model_id_from=source), False, None)
    p = pod(labels={"app": "e", "model": "llama"}, annotations={"served": "qwen"})
    cards = desired_workers([p], rules)[0].spec.model_cards
    assert cards == ([{"id": expected}] if expected else [])


def test_worker_file_formats() -> None:
    listed = parse_worker_file("- 10.0.0.1:8000\n- {id: b, url: 'http://h:1', priority: 3, model_id: m}\n",
                               pd_disaggregation=False, api_key="k")
    assert [(w.source_id, w.spec.url, w.spec.api_key) for w in listed] == [
        ("http://10.0.0.1:8000", "http://10.0.0.1:8000", "k"), ("b", "http://h:1", "k")]
    assert listed[1].spec.priority == 3 and listed[1].spec.model_cards == [{"id": "m"}]
    versioned = parse_worker_file('{"version": 1, "workers": [{"url": "[fd00::1]:80", "worker_type": "prefill", '
                                  '"bootstrap_port": 8998, "kv_connector": "MooncakeConnector", '
                                  '"kv_role": "kv_producer", "kv_engine_id": "e1"}]}', pd_disaggregation=True,
                                  api_key=None)  # SMG's own example entry
    assert versioned[0].spec.url == "http://[fd00::1]:80" and versioned[0].spec.bootstrap_port == 8998
    assert (versioned[0].spec.kv_connector, versioned[0].spec.kv_engine_id, versioned[0].spec.kv_role) == (
        "MooncakeConnector", "e1", "kv_producer")
    assert parse_worker_file("", pd_disaggregation=False, api_key=None) == []


@pytest.mark.parametrize(("text", "pd", "message"), [
    ("[{url: ", False, "not valid YAML"),
    ('{"version": 2, "workers": []}', False, "unsupported version"),
    ('{"workers": [], "extra": 1}', False, "unknown top-level"),
    ('[{"url": "http://h:1", "colour": "red"}]', False, "unknown fields: colour"),
    ('[{"url": "http://h:1"}, {"url": "http://h:1/"}]', False, "duplicate url"),
    ('[{"id": "a", "url": "http://h:1"}, {"id": "a", "url": "http://h:2"}]', False, "duplicate id"),
    ('[{"url": "http://h:1", "worker_type": "decode", "bootstrap_port": 1}]', True, "only allowed on prefill"),
    ('[{"url": "http://h:1"}]', True, "'worker_type' is required"),
    ('[{"url": "http://h:1", "kv_role": "producer"}]', False, "'kv_role' must be one of"),
    ('[{"url": "http://h:1@2"}]', False, "@rank"),
    ('[{"url": "ftp://h:1"}]', False, "must start with"),
    ('[{"url": "https://api.openai.com/v1"}]', False, "external providers"),
    ('{"workers": {"url": "x"}}', False, "expected a list"),
])
def test_bad_worker_files_are_rejected_whole(text: str, pd: bool, message: str) -> None:
    with pytest.raises(DiscoveryFileError, match=message):
        parse_worker_file(text, pd_disaggregation=pd, api_key=None)


def test_discovery_settings_are_validated() -> None:
    assert parse_selector(["app=e,tier=x", "zone=a"]) == (("app", "e"), ("tier", "x"), ("zone", "a"))
    with pytest.raises(ConfigError, match="key=value"):
        parse_selector(["app"])
    bad = [
        (DiscoveryConfig(provider="kubernetes"), False, "needs --selector"),
        (DiscoveryConfig(provider="kubernetes", selector=(("a", "b"),)), True, "--prefill-selector"),
        (DiscoveryConfig(provider="kubernetes", selector=(("a", "b"),), port=0), False, "port"),
        (DiscoveryConfig(provider="kubernetes", selector=(("a", "b"),), model_id_from="label:"), False,
         "--model-id-from"),
        (DiscoveryConfig(provider="file"), False, "--discovery-file"),
        (DiscoveryConfig(provider="consul"), False, "--discovery-provider"),
        (DiscoveryConfig(selector=(("a", "b"),)), False, "need --service-discovery"),
        (DiscoveryConfig(provider="file", file="/x", namespace="n"), False, "need --service-discovery"),
        (DiscoveryConfig(file="/x.yaml"), False, "needs --discovery-provider file"),
    ]
    for config, pd, message in bad:
        with pytest.raises(ConfigError, match=message):
            GatewayConfig(discovery=config, pd_disaggregation=pd).validate()
    GatewayConfig(discovery=DiscoveryConfig(provider="file", file="/x.yaml")).validate()


async def test_cluster_config_in_a_pod_and_from_a_kubeconfig(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pod: the service account's token and CA against https://$KUBERNETES_SERVICE_HOST; elsewhere,
    or when KUBECONFIG is set: the kubeconfig. Both are used for a real pods list."""
    from kubernetes_asyncio import client as k8s_client
    from kubernetes_asyncio.config import incluster_config

    from shepherd.discovery.kubernetes import api_client
    from tests.kube_api import TOKEN, FakeKubeApi, self_signed_certificate

    async def list_pods() -> list[str]:
        api = await api_client()
        try:
            response = await k8s_client.CoreV1Api(api).list_namespaced_pod("default", _preload_content=False)
            body = await response.json()
            return [p["metadata"]["name"] for p in body["items"]]
        finally:
            await api.close()

    cert, key = self_signed_certificate(str(tmp_path))
    in_cluster = FakeKubeApi(tls=(cert, key))
    plain = FakeKubeApi()
    try:
        in_cluster.create_pod("in-cluster", 1, labels={"app": "e"})
        plain.create_pod("from-kubeconfig", 1, labels={"app": "e"})
        token = tmp_path / "token"
        token.write_text(TOKEN)
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", cert)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(in_cluster.port))
        monkeypatch.delenv("KUBECONFIG", raising=False)
        assert await list_pods() == ["in-cluster"]

        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(plain.kubeconfig())
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))  # an explicit kubeconfig wins, even inside a pod
        assert await list_pods() == ["from-kubeconfig"]
        assert in_cluster.unauthorized == plain.unauthorized == 0
    finally:
        in_cluster.close()
        plain.close()


async def test_a_watch_the_server_ends_resumes_from_its_last_resource_version(tmp_path: Any,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Each watch ends after timeoutSeconds; the next one starts where it left off, without a relist."""
    import asyncio

    from shepherd.discovery.kubernetes import PodWatcher
    from tests.kube_api import FakeKubeApi

    class Recorder:
        def __init__(self) -> None:
            self.urls: list[list[str]] = []

        def set_desired(self, workers: list[Any]) -> None:
            self.urls.append(sorted(w.spec.url for w in workers))

    async def until(predicate: Any) -> None:
        for _ in range(400):
            if predicate():
                return
            await asyncio.sleep(0.025)
        raise AssertionError("timed out")

    kube = FakeKubeApi(bookmark_interval_secs=0.2)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kube.kubeconfig())
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    recorder = Recorder()
    watcher = PodWatcher(REGULAR, "ns", recorder, watch_timeout_secs=1)  # type: ignore[arg-type]
    try:
        kube.create_pod("a", 8000, labels={"app": "e"}, namespace="ns", ready=True)
        watcher.start()
        await until(lambda: recorder.urls and recorder.urls[-1] == ["http://127.0.0.1:8000"])
        await until(lambda: len(kube.watches) >= 3)  # two watches ended on their own
        kube.create_pod("b", 8001, labels={"app": "e"}, namespace="ns", ready=True)
        await until(lambda: recorder.urls[-1] == ["http://127.0.0.1:8000", "http://127.0.0.1:8001"])
        assert kube.lists == 1
        versions = [int(w.resource_version) for w in kube.watches]
        assert versions == sorted(versions) and versions[0] >= 102  # moved on with the events and bookmarks
    finally:
        await watcher.stop()
        kube.close()
