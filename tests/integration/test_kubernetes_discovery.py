"""Kubernetes discovery against a pods API served by the suite (list/watch wire format, 410, bookmarks).

Pods are created, turn ready, lose readiness, are deleted, and the watch is cut; the gateway's
worker set follows each step while a client keeps sending requests, and none of them fails.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from shepherd.testing import Gateway, Sim, wait_until
from tests.kube_api import FakeKubeApi

LABELS = {"app": "engine", "tier": "inference"}


class Load:
    """A client sending chat completions in a loop, counting failures."""

    def __init__(self, url: str) -> None:
        self.client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        self.ok = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.chat.completions.create(model="mock-model", max_tokens=6,
                                                    messages=[{"role": "user", "content": "hi"}])
                self.ok += 1
            except openai.OpenAIError as exc:
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    api = FakeKubeApi()
    yield api
    api.close()


@pytest.fixture
def engines() -> Iterator[Sim]:
    sim = Sim(4, "--model", "mock-model", "--output-tokens", "8")
    yield sim
    sim.stop()


def _kubeconfig(kube: FakeKubeApi, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "kubeconfig"
    path.write_text(kube.kubeconfig())
    return {"KUBECONFIG": str(path)}


def _urls(gateway: Gateway) -> dict[str, str]:
    return {w["url"]: w["status"] for w in gateway.workers()}


def test_pods_become_workers_and_leave_without_client_errors(kube: FakeKubeApi, engines: Sim,
                                                             tmp_path: Path) -> None:
    manual, pod_a, pod_b, pod_c = engines.urls
    ports = engines.ports
    gw = Gateway([manual], "--service-discovery", "--selector", "app=engine", "tier=inference",
                 "--service-discovery-namespace", "serving", "--worker-drain-timeout-secs", "10",
                 expect_workers=1, env=_kubeconfig(kube, tmp_path))
    load = None
    try:
        wait_until(lambda: kube.open_watches() == 1, 20, message="the gateway to watch pods")
        assert kube.lists == 1 and kube.watches[0].bookmarks

        # A pending pod is no worker; Running and Ready makes it one.
        kube.create_pod("engine-a", ports[1], labels=LABELS, namespace="serving")
        kube.create_pod("other-app", ports[3], labels={"app": "other"}, namespace="serving", ready=True)
        kube.create_pod("elsewhere", ports[3], labels=LABELS, namespace="default", ready=True)
        kube.set_ready("engine-a", True, namespace="serving")
        wait_until(lambda: _urls(gw).get(pod_a) == "ready", 20, message="pod a to become a worker")
        kube.create_pod("engine-b", ports[2], labels=LABELS, namespace="serving", ready=True)
        wait_until(lambda: _urls(gw).get(pod_b) == "ready", 20, message="pod b to become a worker")
        assert set(_urls(gw)) == {manual, pod_a, pod_b}
        worker_b = next(w for w in gw.workers() if w["url"] == pod_b)
        assert worker_b["labels"]["shepherd.ai/pod-name"] == "engine-b"
        assert worker_b["labels"]["shepherd.ai/discovery-provider"] == "kubernetes"

        load = Load(gw.url)
        wait_until(lambda: load.ok >= 5, 20, message="requests to flow")

        # Readiness lost: drained (no new requests), then removed; in-flight requests finish.
        kube.set_ready("engine-a", False, namespace="serving")
        wait_until(lambda: pod_a not in _urls(gw), 20, message="pod a to be drained and removed")
        served = load.ok
        wait_until(lambda: load.ok >= served + 5, 20, message="requests to keep flowing")

        # The watch connection is cut; a change made meanwhile arrives after it resumes from the
        # last resourceVersion, without a relist.
        watches = len(kube.watches)
        assert kube.cut_watches() == 1
        kube.set_ready("engine-a", True, namespace="serving")
        wait_until(lambda: _urls(gw).get(pod_a) == "ready", 20, message="pod a back after the cut")
        assert len(kube.watches) > watches and kube.lists == 1
        assert int(kube.watches[watches].resource_version) > 100

        # History compacted, then the watch cut: resuming answers 410 Gone, so the gateway relists.
        kube.compact()
        kube.cut_watches()
        kube.create_pod("engine-c", ports[3], labels=LABELS, namespace="serving", ready=True)
        wait_until(lambda: _urls(gw).get(pod_c) == "ready", 20, message="pod c after the 410 relist")
        assert kube.lists == 2

        # Deleted pods are removed; the worker added on the command line stays.
        kube.delete_pod("engine-b", namespace="serving")
        kube.delete_pod("engine-c", namespace="serving")
        wait_until(lambda: set(_urls(gw)) == {manual, pod_a}, 20, message="deleted pods to be removed")
        served = load.ok
        wait_until(lambda: load.ok >= served + 5, 20, message="requests to keep flowing")
        load.stop()
        assert load.errors == []
        assert load.ok > 15
        assert kube.unauthorized == 0
    finally:
        if load is not None:
            load.stop()
        gw.stop()


def test_pod_at_a_manually_added_url_is_left_alone(kube: FakeKubeApi, engines: Sim, tmp_path: Path) -> None:
    manual = engines.urls[0]
    gw = Gateway([manual], "--service-discovery", "--selector", "app=engine", expect_workers=1,
                 env=_kubeconfig(kube, tmp_path))
    try:
        kube.create_pod("same-address", engines.ports[0], labels=LABELS, ready=True)
        kube.create_pod("engine-b", engines.ports[1], labels=LABELS, ready=True)
        wait_until(lambda: engines.urls[1] in _urls(gw), 20, message="pod b to become a worker")
        manual_worker = next(w for w in gw.workers() if w["url"] == manual)
        assert "shepherd.ai/discovery-provider" not in manual_worker["labels"]
        kube.delete_pod("same-address")
        kube.delete_pod("engine-b")
        wait_until(lambda: engines.urls[1] not in _urls(gw), 20, message="pod b to be removed")
        assert set(_urls(gw)) == {manual}
        assert "already registered outside discovery" in gw.output()
    finally:
        gw.stop()


def test_api_errors_back_off_and_recover_and_410_status_relists(kube: FakeKubeApi, engines: Sim,
                                                                tmp_path: Path) -> None:
    kube.fail_next = 3
    kube.gone_as_status = True
    kube.create_pod("engine-a", engines.ports[0], labels=LABELS, ready=True)
    gw = Gateway([], "--service-discovery", "--selector", "app=engine", expect_workers=1,
                 env=_kubeconfig(kube, tmp_path))
    try:
        assert kube.fail_next == 0 and "HTTP 500" in gw.output()
        wait_until(lambda: kube.open_watches() == 1, 20, message="the watch to open")
        kube.compact()
        kube.cut_watches()
        kube.create_pod("engine-b", engines.ports[1], labels=LABELS, ready=True)
        wait_until(lambda: engines.urls[1] in _urls(gw), 20, message="pod b after the relist")
        assert kube.lists == 2 and "410" in gw.output()
    finally:
        gw.stop()


def test_pd_roles_and_bootstrap_ports_from_labels_and_annotations(kube: FakeKubeApi, tmp_path: Path) -> None:
    prefill = Sim(1, "--model", "mock-model", "--role", "prefill")
    decode = Sim(1, "--model", "mock-model", "--role", "decode")
    gw = None
    try:
        kube.create_pod("prefill-0", prefill.ports[0], labels={"app": "engine", "role": "prefill"}, ready=True,
                        annotations={"sglang.ai/bootstrap-port": "8998"})
        kube.create_pod("decode-0", decode.ports[0], labels={"app": "engine", "role": "decode"}, ready=True)
        gw = Gateway([], "--pd-disaggregation", "--service-discovery",
                     "--prefill-selector", "app=engine", "role=prefill",
                     "--decode-selector", "app=engine", "role=decode",
                     "--model-id-from", "namespace", expect_workers=2, env=_kubeconfig(kube, tmp_path))
        workers = {w["url"]: w for w in gw.workers()}
        assert workers[prefill.urls[0]]["worker_type"] == "prefill"
        assert workers[prefill.urls[0]]["bootstrap_port"] == 8998
        assert workers[decode.urls[0]]["worker_type"] == "decode"
        assert {w["model_id"] for w in workers.values()} == {"default"}  # the pods' namespace
        assert kube.watches[-1].selector == "app=engine"  # what both selectors share; the role is matched here
    finally:
        if gw is not None:
            gw.stop()
        prefill.stop()
        decode.stop()
