"""From Kubernetes pod objects (the API's JSON, as dicts) to the workers they should contribute.

Pure functions, so the mapping is tested without any API server.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shepherd.config import DiscoveryConfig
from shepherd.discovery.reconciler import DesiredWorker
from shepherd.workers.spec import WorkerSpec, is_kv_name
from shepherd.workers.worker import WorkerType

# Pod annotations (SMG's and SGLang's names, so manifests written for them keep working).
PORTS_ANNOTATION = "smg.ai/worker-ports"  # "8000,8001": one worker per port
BOOTSTRAP_ANNOTATION = "sglang.ai/bootstrap-port"  # prefill: one port for all, or a list aligned with the ports
SCHEME_ANNOTATION = "shepherd.ai/worker-scheme"  # http (default), https or grpc
KV_CONNECTOR_ANNOTATION = "smg.ai/kv-connector"  # vLLM PD: the prefill's KV connector (as SMG 1.13 reads it)
KV_ENGINE_ID_ANNOTATION = "smg.ai/kv-engine-id"  # ... and its Mooncake engine id

POD_NAME_LABEL = "shepherd.ai/pod-name"
POD_UID_LABEL = "shepherd.ai/pod-uid"
POD_NAMESPACE_LABEL = "shepherd.ai/pod-namespace"

Selector = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PodRules:
    """What decides which pods become workers, and how."""

    selectors: tuple[tuple[WorkerType, Selector], ...]  # checked in order; the first match gives the role
    default_port: int
    model_id_from: str | None
    api_key: str | None

    @classmethod
    def from_config(cls, config: DiscoveryConfig, pd_disaggregation: bool, api_key: str | None) -> PodRules:
        selectors: list[tuple[WorkerType, Selector]] = []
        if pd_disaggregation:
            selectors += [(WorkerType.PREFILL, config.prefill_selector), (WorkerType.DECODE, config.decode_selector)]
        if config.selector:
            selectors.append((WorkerType.REGULAR, config.selector))
        return cls(tuple((kind, sel) for kind, sel in selectors if sel), config.port, config.model_id_from, api_key)

    def server_selector(self) -> str:
        """The list/watch labelSelector: the pairs every selector shares (the rest is matched here)."""
        if not self.selectors:
            return ""
        common = set(self.selectors[0][1])
        for _, selector in self.selectors[1:]:
            common &= set(selector)
        return ",".join(f"{k}={v}" for k, v in self.selectors[0][1] if (k, v) in common)

    def role(self, labels: dict[str, str]) -> WorkerType | None:
        for kind, selector in self.selectors:
            if all(labels.get(key) == value for key, value in selector):
                return kind
        return None


def is_serving(pod: dict[str, Any]) -> bool:
    """Running, Ready, with an IP, and not terminating: only such pods get workers."""
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    if metadata.get("deletionTimestamp") or not status.get("podIP") or status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def pod_key(pod: dict[str, Any]) -> str:
    metadata = pod.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def desired_workers(pods: Iterable[dict[str, Any]], rules: PodRules) -> list[DesiredWorker]:
    workers: list[DesiredWorker] = []
    for pod in pods:
        if is_serving(pod):
            workers.extend(pod_workers(pod, rules))
    return workers


def pod_workers(pod: dict[str, Any], rules: PodRules) -> list[DesiredWorker]:
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    labels: dict[str, str] = metadata.get("labels") or {}
    annotations: dict[str, str] = metadata.get("annotations") or {}
    role = rules.role(labels)
    uid = metadata.get("uid")
    if role is None or not uid:
        return []
    ports = _ports(annotations.get(PORTS_ANNOTATION)) or [rules.default_port]
    bootstrap = _bootstrap_ports(annotations.get(BOOTSTRAP_ANNOTATION), len(ports)) \
        if role is WorkerType.PREFILL else [None] * len(ports)
    scheme = annotations.get(SCHEME_ANNOTATION, "http").strip().lower()
    if scheme not in ("http", "https", "grpc"):
        scheme = "http"
    ip = str(status["podIP"])
    host = f"[{ip}]" if ":" in ip else ip
    model = _model_id(rules.model_id_from, metadata)
    worker_labels = {POD_NAME_LABEL: str(metadata.get("name", "")), POD_UID_LABEL: str(uid),
                     POD_NAMESPACE_LABEL: str(metadata.get("namespace", ""))}
    workers = []
    for port, bootstrap_port in zip(ports, bootstrap, strict=True):
        spec = WorkerSpec(url=f"{scheme}://{host}:{port}", worker_type=role, labels=dict(worker_labels),
                          api_key=rules.api_key, bootstrap_port=bootstrap_port,
                          model_cards=[{"id": model}] if model else [],
                          kv_connector=_kv_annotation(annotations, KV_CONNECTOR_ANNOTATION),
                          kv_engine_id=_kv_annotation(annotations, KV_ENGINE_ID_ANNOTATION))
        workers.append(DesiredWorker(f"{pod_key(pod)}:{port}", spec))
    return workers


def _kv_annotation(annotations: dict[str, str], name: str) -> str | None:
    """A KV connector annotation's value; an unusable one (empty, too long, unprintable) counts as none."""
    value = annotations.get(name)
    value = value.strip() if isinstance(value, str) else value
    return value if is_kv_name(value) else None


def _ports(value: str | None) -> list[int]:
    """A comma-separated port list, deduplicated in order; an invalid list counts as none."""
    if not value:
        return []
    ports: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit() or not 0 < int(part) < 65536:
            return []
        if int(part) not in ports:
            ports.append(int(part))
    return ports


def _bootstrap_ports(value: str | None, count: int) -> list[int | None]:
    """One port for every worker port, or a list aligned with them; anything else: none."""
    parts = [part.strip() for part in (value or "").split(",")]
    if not value or not all(p.isdigit() and 0 < int(p) < 65536 for p in parts):
        return [None] * count
    if len(parts) == 1:
        return [int(parts[0])] * count
    return [int(p) for p in parts] if len(parts) == count else [None] * count


def _model_id(source: str | None, metadata: dict[str, Any]) -> str | None:
    if source is None:
        return None
    if source == "namespace":
        return metadata.get("namespace") or None
    kind, _, key = source.partition(":")
    values = metadata.get("labels" if kind == "label" else "annotations") or {}
    return values.get(key) or None
