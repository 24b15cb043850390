"""vLLM PD over HTTP: what the prefill worker's KV connector asks of the two legs (SMG's connector modes).

* NIXL: the prefill leg carries `{"do_remote_decode": true, "do_remote_prefill": false}`; the engine
  answers with the `kv_transfer_params` the decode leg needs, which the gateway relays.
* Mooncake (push based): the gateway mints a transfer id; the prefill leg carries it, and the decode leg
  gets params built from the prefill worker's registration (engine id, bootstrap address), since the
  engine returns none. Without a known engine id nothing can be minted and the decode recomputes.
* Passthrough (any other connector a worker was registered with): the prefill leg is not tagged;
  whatever `kv_transfer_params` it returns are relayed.

The connector comes from the prefill worker's registration (`kv_connector`, `kv_engine_id`, as SMG's
`POST /workers` and discovery file take them). A worker registered without one (`--prefill URL`) is
treated as NIXL, vLLM's usual PD connector; SMG treats it as passthrough, which for a NIXL engine
means no hand-over at all (README, PD).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from shepherd.workers.worker import Worker

MOONCAKE_CONNECTOR = "MooncakeConnector"
NIXL_CONNECTOR = "NixlConnector"
DEFAULT_BOOTSTRAP_PORT = 8998  # vLLM's VLLM_MOONCAKE_BOOTSTRAP_PORT default

Mode = Literal["nixl", "mooncake", "passthrough"]  # smg_pd_kv_connector_mode_total{mode}


@dataclass(frozen=True)
class KvHandoff:
    """One sequential PD dispatch's KV hand-over, decided from its prefill worker."""

    mode: Mode
    transfer_id: str | None = None  # Mooncake with a known engine id
    engine_id: str | None = None
    bootstrap_addr: str | None = None

    def prefill_params(self) -> dict[str, Any] | None:
        """The prefill leg's kv_transfer_params (None: the leg is not tagged)."""
        if self.mode == "nixl":
            return {"do_remote_decode": True, "do_remote_prefill": False}
        if self.transfer_id is not None:
            return {"do_remote_decode": True, "do_remote_prefill": False, "transfer_id": self.transfer_id}
        return None

    def decode_params(self, returned: Any) -> dict[str, Any] | None:
        """The decode leg's kv_transfer_params, given what the prefill answered with (None: the decode
        recomputes the prompt)."""
        if self.mode == "mooncake":
            if self.transfer_id is None:
                return None
            return {"do_remote_decode": False, "do_remote_prefill": True, "transfer_id": self.transfer_id,
                    "remote_engine_id": self.engine_id, "remote_bootstrap_addr": self.bootstrap_addr}
        return returned if isinstance(returned, dict) and returned else None

    @property
    def needs_returned_params(self) -> bool:
        """Whether a prefill answer without kv_transfer_params is a failed hand-over (NIXL only)."""
        return self.mode == "nixl"


def handoff_for(prefill: Worker) -> KvHandoff:
    connector = prefill.kv_connector
    if connector == MOONCAKE_CONNECTOR:
        engine_id = _engine_id(prefill)
        port = prefill.bootstrap_port or DEFAULT_BOOTSTRAP_PORT
        return KvHandoff("mooncake", transfer_id=f"xfer-{uuid7()}" if engine_id else None, engine_id=engine_id,
                         bootstrap_addr=f"http://{prefill.bootstrap_host}:{port}")
    if connector is None or connector == NIXL_CONNECTOR:
        return KvHandoff("nixl")
    return KvHandoff("passthrough")


def _engine_id(prefill: Worker) -> str | None:
    """The engine core's connector id. With data parallelism vLLM suffixes the configured id per rank
    (`<id>_dp<rank>`), so a DP engine is minted for only on a pinned rank (--dp-aware); an engine whose
    reported dp_size does not parse has an unknown topology, and is not minted for either."""
    base = prefill.kv_engine_id
    if not base:
        return None
    if prefill.dp_rank is not None:
        return f"{base}_dp{prefill.dp_rank}"
    reported = prefill.labels.get("dp_size")  # the engine's own report, present without --dp-aware too
    if reported is None:
        return base
    try:
        dp_size = int(reported)
    except ValueError:
        return None
    return base if dp_size == 1 else None


def uuid7() -> uuid.UUID:
    """RFC 9562 version 7 (time-ordered), as SMG mints its transfer ids (the stdlib has it from 3.14)."""
    value = (time.time_ns() // 1_000_000 & (1 << 48) - 1) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = value & ~(0xF << 76) | 0x7 << 76  # version
    value = value & ~(0x3 << 62) | 0x2 << 62  # variant
    return uuid.UUID(int=value)
