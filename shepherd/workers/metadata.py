"""Discover what a worker is: is it up, which models it serves, which engine runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from shepherd.workers.errors import ProbeError
from shepherd.workers.grpc_client import grpc_health_check

PROBE_TIMEOUT = aiohttp.ClientTimeout(total=5)

_RUNTIME_BY_OWNER = {"sglang": "sglang", "nvidia": "sglang", "vllm": "vllm"}


@dataclass
class WorkerMetadata:
    model_cards: list[dict[str, Any]] = field(default_factory=list)
    runtime_type: str = "generic"
    labels: dict[str, str] = field(default_factory=dict)
    connection_mode: str = "http"  # "grpc" for token-level engines served by the gRPC pipeline
    provider: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(str(card["id"]) for card in self.model_cards if card.get("id"))


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def _get_json(session: aiohttp.ClientSession, url: str, api_key: str | None) -> Any | None:
    """GET a JSON document; None when the route is absent or answers non-JSON."""
    async with session.get(url, headers=auth_headers(api_key), timeout=PROBE_TIMEOUT) as response:
        if response.status >= 300:
            return None
        body = await response.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


async def check_health(session: aiohttp.ClientSession, url: str, api_key: str | None,
                       endpoint: str = "/health", probe_timeout: aiohttp.ClientTimeout = PROBE_TIMEOUT) -> bool:
    if url.startswith("grpc://"):  # gRPC engines answer HealthCheck on their engine service instead
        return await grpc_health_check(url, probe_timeout.total or 5.0)
    try:
        async with session.get(url + endpoint, headers=auth_headers(api_key), timeout=probe_timeout) as response:
            await response.read()
            return 200 <= response.status < 300
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


async def probe_worker(session: aiohttp.ClientSession, url: str, api_key: str | None) -> WorkerMetadata:
    """Read a live worker's models and runtime. Raises ProbeError if it is not healthy."""
    if not await check_health(session, url, api_key):
        raise ProbeError(f"{url}/health did not answer 2xx")
    metadata = WorkerMetadata()
    try:
        models = await _get_json(session, url + "/v1/models", api_key)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise ProbeError(f"{url}/v1/models failed: {exc}") from exc
    if isinstance(models, dict) and isinstance(models.get("data"), list):
        metadata.model_cards = [card for card in models["data"] if isinstance(card, dict) and card.get("id")]
    owner = str(metadata.model_cards[0].get("owned_by", "")) if metadata.model_cards else ""
    metadata.runtime_type = _RUNTIME_BY_OWNER.get(owner.lower(), "generic")

    # Engine-specific server facts become labels (dp_size, max_running_requests, ...).
    server_info_path = "/get_server_info" if metadata.runtime_type != "vllm" else "/version"
    try:
        info = await _get_json(session, url + server_info_path, api_key)
    except (TimeoutError, aiohttp.ClientError, OSError):
        info = None
    if isinstance(info, dict):
        if metadata.runtime_type == "generic":
            metadata.runtime_type = "sglang" if server_info_path == "/get_server_info" else "vllm"
        for key in ("dp_size", "tp_size", "max_running_requests", "max_total_num_tokens", "model_path",
                    "version", "disaggregation_mode"):
            if key in info and isinstance(info[key], (str, int, float, bool)):
                metadata.labels[key] = str(info[key])
    return metadata
