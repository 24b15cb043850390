"""Which models an external provider serves: its own model list, plus aliases for dated ids.

OpenAI-style providers answer `GET /v1/models` with `{"data": [{"id", ...}]}` and a Bearer key;
Anthropic wants `x-api-key` and `anthropic-version`, and pages its list (`has_more`, `last_id`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from shepherd.providers.aliases import alias_map
from shepherd.providers.error_body import parse_provider_error
from shepherd.providers.kinds import ProviderKind, api_path, auth_headers, provider_kind
from shepherd.providers.redact import redact
from shepherd.workers.errors import ProbeError
from shepherd.workers.metadata import WorkerMetadata
from shepherd.workers.spec import WorkerSpec

DISCOVERY_TIMEOUT = aiohttp.ClientTimeout(total=30)
_MAX_PAGES = 20
_PERMANENT_STATUSES = frozenset({400, 401, 403, 404})
MODEL_DISCOVERY_LABEL = "model_discovery"  # "provider" (listed, refreshed on a miss) or "static" (from the spec)


class PermanentProbeError(ProbeError):
    """Asking again will not help (a rejected key, a wrong URL): registration fails at once."""


async def list_models(
    session: aiohttp.ClientSession,
    base_url: str,
    kind: ProviderKind,
    api_key: str | None,
    request_timeout: aiohttp.ClientTimeout = DISCOVERY_TIMEOUT,
) -> list[str]:
    """The model ids the provider lists, in its order. Raises ProbeError with a key-free message."""
    parts = urlsplit(base_url)
    url = f"{parts.scheme}://{parts.netloc}{api_path(base_url, kind, '/v1/models')}"
    params = {"limit": "1000"} if kind.api == "anthropic" else {}
    ids: list[str] = []
    for _ in range(_MAX_PAGES):
        async with session.get(url, headers=auth_headers(kind, api_key), params=params,
                               timeout=request_timeout) as response:
            payload = await response.read()
            status = response.status
        if status >= 300:
            message = redact(parse_provider_error(payload).message, [api_key])
            error = PermanentProbeError if status in _PERMANENT_STATUSES else ProbeError
            raise error(f"{kind.name} model list at {url} answered HTTP {status}: {message}")
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise ProbeError(f"{kind.name} model list at {url} is not JSON") from None
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, list):
            raise ProbeError(f"{kind.name} model list at {url} has no 'data' list")
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
                ids.append(item["id"].removeprefix(kind.listed_id_prefix))
        if kind.api == "anthropic" and document.get("has_more") and document.get("last_id"):
            params = {**params, "after_id": str(document["last_id"])}
            continue
        break
    return list(dict.fromkeys(ids))


def model_cards(ids: list[str], kind: ProviderKind, aliases: dict[str, str]) -> list[dict[str, Any]]:
    by_target: dict[str, list[str]] = {}
    for alias, target in aliases.items():
        by_target.setdefault(target, []).append(alias)
    cards = []
    for model_id in ids:
        card: dict[str, Any] = {"id": model_id, "object": "model", "owned_by": kind.name}
        if model_id in by_target:
            card["aliases"] = sorted(by_target[model_id])
        cards.append(card)
    return cards


async def discover_external(session: aiohttp.ClientSession, spec: WorkerSpec) -> WorkerMetadata:
    """What an external worker serves: the spec's models when given, else the provider's list."""
    kind = provider_kind(spec.provider or "custom")
    if spec.model_cards:
        ids = [str(card["id"]) for card in spec.model_cards]
        for card in spec.model_cards:
            card.setdefault("owned_by", kind.name)
        source = "static"
    else:
        ids = await list_models(session, spec.url, kind, spec.api_key)
        if not ids:
            raise ProbeError(f"{kind.name} at {spec.url} lists no models")
        source = "provider"
    aliases = alias_map(ids)
    return WorkerMetadata(model_cards=spec.model_cards or model_cards(ids, kind, aliases), runtime_type="external",
                          labels={MODEL_DISCOVERY_LABEL: source}, connection_mode="external", provider=kind.name,
                          aliases=aliases)
