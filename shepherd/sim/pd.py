"""Prefill/decode roles for the simulator, with a KV hand-over that behaves like the real thing.

A prefill worker runs the prompt's prefill and then publishes each request's KV under its transfer
key: SGLang's `bootstrap_room` (one per batch item); vLLM NIXL style, a transfer id it returns in
`kv_transfer_params`; or vLLM Mooncake style, the `transfer_id` the request's `kv_transfer_params`
carry (the answer then carries none: Mooncake pushes). It serves the published keys on its bootstrap
listener (`GET /kv/{key}`, answering with its engine id), as SGLang's prefill server does on its
bootstrap port. Its engine id (vLLM's kv_transfer_config engine_id) is `sim-<host>-<bootstrap port>`.

A decode worker, before producing a single token, asks the prefill's bootstrap listener (the
`bootstrap_host`/`bootstrap_port` in the request, vLLM NIXL's `remote_host`/`remote_port`, or Mooncake's
`remote_bootstrap_addr`) for every key of the request, and fails the request if the KV has not arrived
within its timeout, or came from an engine other than the `remote_engine_id` it was told. It then
decodes with the whole prompt already in its cache.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

_POLL_SECS = 0.005
_KEEP_SECS = 300.0
_MAX_KEYS = 100_000


class KvTransferError(Exception):
    """The decode side never received the KV it was told to expect."""


class KvStore:
    """Transfer keys whose KV a prefill worker holds: when published, and how much of it was cached."""

    def __init__(self, engine_id: str) -> None:
        self.engine_id = engine_id
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def publish(self, key: str, cached_tokens: int) -> None:
        now = time.monotonic()
        self._keys[key] = (now, cached_tokens)
        while self._keys and (len(self._keys) > _MAX_KEYS or next(iter(self._keys.values()))[0] < now - _KEEP_SECS):
            self._keys.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    async def serve(self, request: web.Request) -> web.Response:
        entry = self._keys.get(request.match_info["key"])
        if entry is not None:
            return web.json_response({"key": request.match_info["key"], "transferred": True,
                                      "cached_tokens": entry[1], "engine_id": self.engine_id})
        return web.json_response({"error": "no such transfer"}, status=404)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def transfer_keys(body: Mapping[str, Any]) -> list[str]:
    """The KV transfer keys a request carries (empty when it is not a PD request)."""
    params = body.get("kv_transfer_params")
    if isinstance(params, Mapping) and params.get("transfer_id"):
        return [str(params["transfer_id"])]
    rooms = body.get("bootstrap_room")
    if rooms is None:
        return []
    return [str(room) for room in _as_list(rooms)]


class PdRole:
    def __init__(self, role: str, host: str, bootstrap_port: int | None, timeout_secs: float) -> None:
        self.role = role
        self.host = host
        self.bootstrap_port = bootstrap_port
        self.timeout_secs = timeout_secs
        self.engine_id = f"sim-{host}-{bootstrap_port}"
        self.store = KvStore(self.engine_id)
        self._session: aiohttp.ClientSession | None = None
        self.transfers = 0  # KV hand-overs completed (published on prefill, received on decode)

    @property
    def is_prefill(self) -> bool:
        return self.role == "prefill"

    @property
    def is_decode(self) -> bool:
        return self.role == "decode"

    # -- prefill ------------------------------------------------------------------------------

    def prepare_prefill(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """vLLM style: the kv_transfer_params the prefill's answer hands to the decode side."""
        params = body.get("kv_transfer_params")
        if isinstance(params, Mapping) and params.get("do_remote_decode") and not params.get("transfer_id"):
            transfer_id = f"xfer-{uuid.uuid4().hex}"  # NIXL: the engine names the transfer
            return {"do_remote_prefill": True, "do_remote_decode": False, "transfer_id": transfer_id,
                    "remote_engine_id": self.engine_id, "remote_host": self.host,
                    "remote_port": self.bootstrap_port, "remote_block_ids": []}
        return None  # Mooncake (the request names the transfer) or SGLang (rooms): nothing to answer with

    def publish(self, body: Mapping[str, Any], answer_params: Mapping[str, Any] | None, cached: list[int],
                wrong_room: bool) -> None:
        """Make each sequence's KV available under its key (`cached`: prefix-cache hits per sequence)."""
        keys = [str(answer_params["transfer_id"])] if answer_params else transfer_keys(body)
        for index, key in enumerate(keys):
            hits = cached[index] if index < len(cached) else (cached[0] if cached else 0)
            self.store.publish(key + "-elsewhere" if wrong_room else key, hits)
            self.transfers += 1

    # -- decode -------------------------------------------------------------------------------

    async def receive(self, body: Mapping[str, Any]) -> list[int]:
        """Wait until the prefill side holds the KV for every key of this request; return each
        sequence's prefix-cache hits on the prefill side (what the decode reports as cached)."""
        keys = transfer_keys(body)
        if not keys:
            raise KvTransferError("a decode worker needs bootstrap_room or kv_transfer_params")
        params = body.get("kv_transfer_params")
        engine_id = None
        if isinstance(params, Mapping) and params.get("transfer_id"):
            engine_id = params.get("remote_engine_id")
            if params.get("remote_bootstrap_addr"):  # Mooncake
                address = str(params["remote_bootstrap_addr"])
            else:  # NIXL
                address = f"http://{params.get('remote_host')}:{params.get('remote_port')}" \
                    if params.get("remote_host") and params.get("remote_port") else ""
        else:
            host, port = _as_list(body.get("bootstrap_host"))[0], _as_list(body.get("bootstrap_port"))[0]
            address = f"http://{host}:{port}" if host and port else ""
        if not address:
            raise KvTransferError("the request names no bootstrap host and port to fetch the KV from")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        deadline = time.monotonic() + self.timeout_secs
        cached: list[int] = []
        for key in keys:
            url = f"{address.rstrip('/')}/kv/{key}"
            while True:
                try:
                    async with self._session.get(url) as response:
                        if response.status == 200:
                            found = await response.json()
                            if engine_id is not None and found.get("engine_id") != engine_id:
                                raise KvTransferError(f"KV {key} is held by engine {found.get('engine_id')!r}, "
                                                      f"not the remote_engine_id {engine_id!r}")
                            cached.append(int(found.get("cached_tokens", 0)))
                            break
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise KvTransferError(f"KV for room {key} did not arrive within {self.timeout_secs:g}s")
                await asyncio.sleep(_POLL_SECS)
            self.transfers += 1
        return cached

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def bootstrap_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/kv/{key}", self.store.serve)
        return app
