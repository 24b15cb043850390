"""The deployment story: manifests (kubectl, official schemas, agreement with the gateway's flags),
the Dockerfile, and the safe defaults a first start shows (loopback demo, open-address warning,
a port in use)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from shepherd.cli import config_from_args, parse_args
from shepherd.testing import Process, Sim, free_ports, wait_until
from shepherd.testing.processes import ROOT
from tests.kube_api import FakeKubeApi

MANIFESTS = Path(ROOT) / "deploy" / "kubernetes"
DOCKERFILE = Path(ROOT) / "deploy" / "Dockerfile"


def _documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _one(kind: str) -> dict[str, Any]:
    [doc] = [d for d in _documents() if d["kind"] == kind]
    return doc


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed and could not be installed here (`make test` runs "
                    "`apt-get install kubernetes-client` when it is missing); the manifests were not checked "
                    "with kubectl --dry-run=client")
    return found


@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    api = FakeKubeApi()
    yield api
    api.close()


def test_manifests_pass_kubectl_client_dry_run(kube: FakeKubeApi, tmp_path: Path) -> None:
    """kubectl maps each kind through API discovery (served by the suite) and dry-runs the apply."""
    kubectl = _kubectl()
    config = tmp_path / "kubeconfig"
    config.write_text(kube.kubeconfig())
    done = subprocess.run([kubectl, "apply", "--dry-run=client", "--validate=false", "-f", str(MANIFESTS),
                           "-o", "name"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KUBECONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {
        "namespace/shepherd", "serviceaccount/shepherd", "role.rbac.authorization.k8s.io/shepherd-pod-reader",
        "rolebinding.rbac.authorization.k8s.io/shepherd-pod-reader", "configmap/shepherd-config",
        "deployment.apps/shepherd", "service/shepherd", "poddisruptionbudget.policy/shepherd"}
    # kubectl is a real check: a misspelt kind fails it.
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: Sevice\nmetadata:\n  name: x\n")
    done = subprocess.run([kubectl, "apply", "--dry-run=client", "--validate=false", "-f", str(broken)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "KUBECONFIG": str(config)})
    assert done.returncode != 0 and "Sevice" in done.stderr


def test_manifests_match_the_official_schemas() -> None:
    version = kubernetes_validate.latest_version()
    for doc in _documents():
        kubernetes_validate.validate(doc, version, strict=True)  # raises on an unknown field or a bad type


def test_manifests_agree_with_the_gateway(tmp_path: Path) -> None:
    deployment, service = _one("Deployment"), _one("Service")
    account, role, binding = _one("ServiceAccount"), _one("Role"), _one("RoleBinding")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    # The container's config file and environment are a valid gateway configuration.
    config_map = _one("ConfigMap")
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    [file_name] = config_map["data"]
    assert env["SHEPHERD_CONFIG"]["value"] == f"{mount['mountPath']}/{file_name}"
    (tmp_path / file_name).write_text(config_map["data"][file_name])
    environ = {"SHEPHERD_CONFIG": str(tmp_path / file_name)}
    assert env["SHEPHERD_SERVICE_DISCOVERY_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    environ["SHEPHERD_SERVICE_DISCOVERY_NAMESPACE"] = deployment["metadata"]["namespace"]
    gateway = config_from_args(parse_args(["launch", *container.get("args", [])], environ)).validate()
    assert gateway.discovery.provider == "kubernetes" and gateway.discovery.namespace == "shepherd"
    assert all(e["valueFrom"]["secretKeyRef"]["optional"] for n, e in env.items() if n.endswith("KEYS")
               or n.endswith("API_KEY"))

    # Probes, ports and scraping point at what the gateway serves.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readiness", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/liveness", "port": "http"}
    assert ports == {"http": gateway.port, "metrics": gateway.prometheus_port}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == gateway.prometheus_port
    assert pod["spec"]["terminationGracePeriodSeconds"] > gateway.shutdown_grace_period_secs
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()

    # The pod runs as the image's non-root user, with what discovery needs and no more.
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    # The Service is named shepherd: its links (SHEPHERD_PORT=tcp://...) would read as settings.
    assert pod["spec"]["enableServiceLinks"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert f"USER {pod['spec']['securityContext']['runAsUser']}:" in DOCKERFILE.read_text()
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "shepherd", "namespace": "shepherd"}]


def test_dockerfile_is_slim_non_root_with_the_gateway_as_entrypoint() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip()
             and not line.startswith("#")]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms and all("-slim" in line for line in froms)
    assert lines[-1] == 'ENTRYPOINT ["shepherd", "launch"]'
    users = [line for line in lines if line.startswith("USER ")]
    assert users and not users[-1].split()[1].startswith(("0", "root"))
    # The build stage copies everything pyproject.toml builds from, and .dockerignore lets it through.
    project = tomllib.loads((Path(ROOT) / "pyproject.toml").read_text())
    copied = " ".join(line for line in lines if line.startswith("COPY ") and "--from" not in line)
    assert "pyproject.toml" in copied and project["project"]["readme"] in copied and "shepherd" in copied
    ignore = (Path(ROOT) / ".dockerignore").read_text().splitlines()
    assert {"!pyproject.toml", "!README.md", "!shepherd/"} <= set(ignore)


# -- safe defaults ------------------------------------------------------------------------------


def _launch(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shepherd", "launch", *flags], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, **(env or {})})


def test_a_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = free_ports(1)[0]
        for flags, what in ((["--port", str(port), "--prometheus-port", str(other)], "gateway"),
                            (["--port", str(other), "--prometheus-port", str(port)], "metrics")):
            done = _launch("--host", "127.0.0.1", "--prometheus-host", "127.0.0.1", *flags)
            assert done.returncode == 1
            assert "Traceback" not in done.stderr
            assert done.stderr.strip().splitlines()[-1] == (
                f"shepherd: cannot listen on 127.0.0.1:{port} ({what}): address already in use "
                "(is another gateway running?)")


def test_open_address_without_keys_warns_once() -> None:
    sim = Sim(1)

    def start(host: str, *flags: str) -> tuple[Process, int]:
        port, metrics = free_ports(2)
        process = Process(["launch", "--host", host, "--port", str(port), "--prometheus-host", "127.0.0.1",
                           "--prometheus-port", str(metrics), "--worker-urls", sim.urls[0],
                           "--shutdown-settle-secs", "0", *flags], f"http://127.0.0.1:{port}/liveness")
        return process, port

    started: list[Process] = []
    try:
        open_gateway, port = start("0.0.0.0")
        started.append(open_gateway)
        assert httpx.get(f"http://127.0.0.1:{port}/liveness", timeout=5).status_code == 200
        keyed, _ = start("0.0.0.0", "--api-key", "k", "--control-plane-api-keys", "ops:ops:admin:secret")
        started.append(keyed)
        loopback, _ = start("127.0.0.1")
        started.append(loopback)
        for process in started:
            process.stop()
        assert open_gateway.output().count("without any key: the admin API") == 1
        assert "without any key" not in keyed.output() and "without any key" not in loopback.output()
    finally:
        for process in started:
            process.stop()
        sim.stop()


def test_launch_from_a_config_file_and_the_environment(tmp_path: Path) -> None:
    sim = Sim(2)
    port, metrics = free_ports(2)
    config = tmp_path / "shepherd.yaml"
    config.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": 1, "prometheus-host": "127.0.0.1",
                                      "worker-urls": sim.urls, "policy": "cache_aware",
                                      "allow-unauthenticated-admin": True}))  # a switch from the file too
    gateway = Process(["launch", "--config", str(config), "--prometheus-port", str(metrics)],
                      f"http://127.0.0.1:{port}/liveness",
                      env={"SHEPHERD_PORT": str(port)})
    try:
        def urls() -> set[str]:
            return {w["url"] for w in httpx.get(f"http://127.0.0.1:{port}/workers", timeout=5).json()["workers"]}

        wait_until(lambda: urls() == set(sim.urls), 20, message="the config file's workers")
        assert f"listening on http://127.0.0.1:{port}" in gateway.output()  # the file's host, the env's port
        assert httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).status_code == 200
    finally:
        gateway.stop()
        sim.stop()


def test_demo_binds_loopback() -> None:
    port, worker_port, metrics_port = free_ports(3)
    log = tempfile.NamedTemporaryFile(prefix="shepherd-demo-", suffix=".log", delete=False)  # noqa: SIM115
    # A free metrics port through the environment (as `shepherd launch` reads it): off the default 29000,
    # which another test's gateway may hold.
    demo = subprocess.Popen([sys.executable, "-m", "shepherd", "demo", "--port", str(port), "--worker-port",
                             str(worker_port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "SHEPHERD_PROMETHEUS_PORT": str(metrics_port)})
    try:
        wait_until(lambda: "Shepherd is serving" in Path(log.name).read_text(), 60, 0.1, "the demo to start")
        output = Path(log.name).read_text()
        assert f"shepherd listening on http://127.0.0.1:{port}" in output
        assert "without any key" not in output
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(30)
