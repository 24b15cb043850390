"""WorkerSpec: what an operator says about a worker (command line or `POST /workers`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shepherd.config import is_grpc_target
from shepherd.providers.kinds import external_base_url, provider_for_url, provider_kind
from shepherd.workers.worker import WorkerType

_RUNTIMES = ("sglang", "vllm", "trtllm", "generic", "external")
WORKER_URL_SCHEMES = ("http://", "https://", "grpc://")
KV_ROLES = ("kv_producer", "kv_consumer", "kv_both")  # vLLM's KVTransferConfig.kv_role
_MAX_KV_NAME = 256  # kv_connector / kv_engine_id: they travel into request bodies


class SpecError(ValueError):
    """The spec is malformed; the message is safe to show to the caller."""


def is_kv_name(value: object) -> bool:
    """Whether `value` may be a kv_connector or kv_engine_id (they travel into request bodies)."""
    return isinstance(value, str) and 0 < len(value) <= _MAX_KV_NAME and value.isprintable()


@dataclass
class WorkerSpec:
    url: str
    model_cards: list[dict[str, Any]] = field(default_factory=list)  # explicit models override discovery
    worker_type: WorkerType = WorkerType.REGULAR
    runtime_type: str | None = None  # None: detect from the worker
    labels: dict[str, str] = field(default_factory=dict)
    priority: int = 50
    cost: float = 1.0
    api_key: str | None = None
    provider: str | None = None  # external workers only
    bootstrap_port: int | None = None  # PD prefill workers (SGLang): the KV hand-over port
    # vLLM PD over HTTP (SMG's registration fields): the prefill's KV connector (MooncakeConnector,
    # NixlConnector, ...) and, for Mooncake, the engine_id of its --kv-transfer-config.
    kv_connector: str | None = None
    kv_engine_id: str | None = None
    kv_role: str | None = None  # its --kv-transfer-config role: kv_producer (prefill), kv_consumer (decode), kv_both

    @classmethod
    def from_json(cls, data: Any) -> WorkerSpec:
        if not isinstance(data, dict):
            raise SpecError("the worker spec must be a JSON object")
        url = data.get("url")
        runtime = data.get("runtime_type", data.get("runtime"))
        # External when said so, when only a provider is named, or when the URL is a provider's public API.
        if isinstance(url, str) and url and (
            runtime == "external" or (runtime is None and (data.get("provider") is not None or provider_for_url(url)))
        ):
            return cls._external_from_json(data, url)
        if not isinstance(url, str) or not url.startswith(WORKER_URL_SCHEMES):
            raise SpecError("'url' is required and must start with http://, https:// or grpc://")
        if url.startswith("grpc://") and not is_grpc_target(url):
            raise SpecError("a gRPC worker's 'url' must be grpc://host:port")
        spec = cls(url=normalize_url(url))
        if "models" in data or "model_id" in data:
            spec.model_cards = _parse_models(data.get("models"), data.get("model_id"))
        if "worker_type" in data:
            try:
                spec.worker_type = WorkerType(data["worker_type"])
            except ValueError:
                raise SpecError("'worker_type' must be one of regular, prefill, decode") from None
        if runtime is not None:
            if runtime not in _RUNTIMES:
                raise SpecError(f"'runtime_type' must be one of {', '.join(_RUNTIMES)}")
            spec.runtime_type = runtime
        if data.get("bootstrap_port") is not None:
            port = data["bootstrap_port"]
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise SpecError("'bootstrap_port' must be a port number or null")
            spec.bootstrap_port = port
        for name in ("kv_connector", "kv_engine_id"):
            value = data.get(name)
            if value is not None:
                if not is_kv_name(value):
                    raise SpecError(f"'{name}' must be a non-empty string of at most {_MAX_KV_NAME} characters")
                setattr(spec, name, value)
        role = data.get("kv_role")
        if role is not None:
            if role not in KV_ROLES:
                raise SpecError(f"'kv_role' must be one of {', '.join(KV_ROLES)}")
            spec.kv_role = role
        spec.apply_update(data, allow_unknown=True)
        return spec

    @classmethod
    def _external_from_json(cls, data: dict[str, Any], url: str) -> WorkerSpec:
        """A provider worker: explicit `runtime_type: external`, or a URL on a known provider's host."""
        name = data.get("provider")
        if name is not None and not isinstance(name, str):
            raise SpecError("'provider' must be a string")
        try:
            kind = provider_kind(name) if name else provider_for_url(url) or provider_kind("custom")
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        spec = cls(url=external_base_url(url, kind), runtime_type="external", provider=kind.name)
        if not spec.url.startswith(("http://", "https://")):
            raise SpecError("an external worker's 'url' must be http(s) or have no scheme (https is assumed)")
        if "models" in data or "model_id" in data:
            spec.model_cards = _parse_models(data.get("models"), data.get("model_id"))
        if data.get("worker_type", "regular") != "regular":
            raise SpecError("external workers are always 'regular'")
        spec.apply_update(data, allow_unknown=True)
        return spec

    def apply_update(self, data: dict[str, Any], *, allow_unknown: bool = False) -> None:
        """Apply the mutable fields (PATCH semantics): labels, priority, cost, api_key."""
        if not allow_unknown:
            unknown = set(data) - {"labels", "priority", "cost", "api_key"}
            if unknown:
                raise SpecError(f"these fields cannot be updated: {', '.join(sorted(unknown))}")
        if "labels" in data:
            labels = data["labels"]
            if not isinstance(labels, dict) or not all(isinstance(k, str) for k in labels):
                raise SpecError("'labels' must be an object of strings")
            self.labels = {k: str(v) for k, v in labels.items()}
        if "priority" in data:
            if not isinstance(data["priority"], int) or isinstance(data["priority"], bool):
                raise SpecError("'priority' must be an integer")
            self.priority = data["priority"]
        if "cost" in data:
            if not isinstance(data["cost"], (int, float)) or isinstance(data["cost"], bool):
                raise SpecError("'cost' must be a number")
            self.cost = float(data["cost"])
        if "api_key" in data:
            key = data["api_key"]
            if key is not None and (not isinstance(key, str) or not key.isprintable()):
                raise SpecError("'api_key' must be a string of printable characters")  # it becomes a header
            self.api_key = data["api_key"]


def normalize_url(url: str) -> str:
    return url.rstrip("/")


def _parse_models(models: Any, model_id: Any) -> list[dict[str, Any]]:
    cards: list[dict[str, Any]] = []
    if isinstance(model_id, str) and model_id:
        cards.append({"id": model_id})
    if models is None:
        return cards
    if not isinstance(models, list):
        raise SpecError("'models' must be a list of model ids or model cards")
    for item in models:
        if isinstance(item, str) and item:
            cards.append({"id": item})
        elif isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            cards.append(dict(item))
        else:
            raise SpecError("each entry of 'models' must be a model id or an object with an 'id'")
    return cards
