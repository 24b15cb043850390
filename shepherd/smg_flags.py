"""What `shepherd launch` does with each `smg launch` flag it does not implement.

The reference list of SMG's flags (name, aliases, default, help) is `shepherd/data/smg_launch_flags.json`,
written by `scripts/dump_smg_flags.py` from the SMG release named in it. Every flag there is either
accepted by `shepherd launch` with SMG's meaning (declared in cli.py) or listed below, and
`shepherd launch` refuses a listed flag (from the command line, the environment or a --config file)
with the one line `refusal_message` builds; the test in tests/unit/test_smg_flags.py checks both.

To turn a flag on when its feature lands: declare it in cli.py and delete its line here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Refusal:
    feature: str  # what Shepherd lacks, named as an operator would look for it
    instead: str  # what to do instead (drop the flag, or the Shepherd flag that covers the need)
    owner: str | None = None  # the work that builds it; None: Shepherd leaves it out on purpose

    def message(self, flag: str) -> str:
        status = f"not built yet ({self.owner})" if self.owner else "not supported by Shepherd"
        return f"{flag}: {self.feature} is {status}; {self.instead}"


def _not_built(feature: str, owner: str, instead: str = "drop the flag until it lands") -> Refusal:
    return Refusal(feature, instead, owner)


_MM = Refusal("multimodal tensor transport and media preprocessing", "drop the flag; media is passed to the "
              "engine inside the request body")
_KV_ANNOTATIONS = Refusal("vLLM KV-connector pod annotations", "register the prefill's kv_connector and "
                          "kv_engine_id with POST /workers or a --discovery-file entry")
_EPD = Refusal("encode-prefill-decode (EPD) disaggregation", "use --pd-disaggregation with --prefill/--decode")
_WARMUP = Refusal("the cache-aware warm-up slice for new workers", "drop the flag")
_SELECTION = Refusal("event-driven cache-aware selection tuning", "drop the flag; tune cache_aware with "
                     "--cache-threshold and --balance-*-threshold")
_ORACLE = Refusal("Oracle history storage", "use --history-backend postgres, redis, sqlite or memory")
_MESH = _not_built("the HA mesh", "issue 18")
_KV_INDEX = Refusal("a separate KV-event cache index with its own TTL", "the KV-event index is on with "
                    "--kv-index positional and --policy precise_cache; entries leave it when the engine evicts")
_RL = Refusal("the RL control plane (/v1/rl)", "call the engines' control routes directly")


REFUSED: dict[str, Refusal] = {
    "--upstream-http2": Refusal("HTTP/2 to workers", "drop the flag; workers are spoken to over pooled "
                                "HTTP/1.1 keep-alive connections"),
    "--encode-policy": _EPD, "--epd-disaggregation": _EPD, "--encode": _EPD, "--encode-selector": _EPD,
    "--worker-warmup-secs": _WARMUP, "--worker-warmup-share": _WARMUP, "--worker-warmup-blocks": _WARMUP,
    "--worker-warmup-thin-ratio": _WARMUP, "--worker-warmup-divert-every": _WARMUP,
    "--selection-policy": _SELECTION, "--selection-accounting-ttl-ms": _SELECTION, "--overlap-decay": _SELECTION,
    "--selection-temperature": _SELECTION,
    "--cache-index": _KV_INDEX, "--cache-ttl-secs": _KV_INDEX,
    "--dp-minimum-tokens-scheduler": Refusal("the minimum-tokens DP rank scheduler", "use --dp-aware, which "
                                             "routes to each rank as a worker of its own"),
    "--enable-igw": Refusal("a separate multi-model (IGW) mode", "drop the flag; Shepherd always serves every "
                            "model its workers report"),
    "--enable-rl": _RL, "--rl-control-timeout-secs": _RL, "--rl-fanout-concurrency": _RL,
    "--job-queue-capacity": Refusal("the control-plane job queue", "drop the flag; worker changes run as "
                                    "bounded background tasks"),
    "--job-queue-concurrency": Refusal("the control-plane job queue", "drop the flag; worker changes run as "
                                       "bounded background tasks"),
    "--multimodal-tensor-transport": _MM, "--multimodal-shm-min-bytes": _MM, "--multimodal-max-inflight-bytes": _MM,
    "--mm-per-request-image-limit": _MM, "--mm-processing": _MM, "--mm-pixel-cache-mb": _MM,
    "--mm-pixel-rdma": _MM, "--mm-allowed-media-domains": _MM, "--mm-allow-private-media-hosts": _MM,
    "--rdma-listen-ip": _MM, "--rdma-slot-ttl-s": _MM, "--log-mm-timing": _MM,
    "--kv-connector-annotation": _KV_ANNOTATIONS,
    "--kv-engine-id-annotation": _KV_ANNOTATIONS,
    "--router-selector": _MESH,
    "--jemalloc-prof-dir": Refusal("jemalloc heap profiles", "profile the Python process with a sampling "
                                   "profiler (e.g. py-spy)"),
    "--storage-context-headers": Refusal("storage hook request context", "drop the flag"),
    "--storage-hook-wasm-path": Refusal("WASM storage hooks", "use --history-backend with a supported store"),
    "--schema-config": Refusal("history table/column remapping", "drop the flag; Shepherd migrates its own "
                               "history schema at start-up"),
    "--backend": Refusal("a fixed backend runtime", "drop the flag; each worker's runtime is detected at "
                         "registration, and cloud providers are added with --external-provider"),
    "--zmq-engine-count": Refusal("ZMQ workers", "serve the engine over HTTP or gRPC"),
    "--oracle-wallet-path": _ORACLE, "--oracle-tns-alias": _ORACLE, "--oracle-connect-descriptor": _ORACLE,
    "--oracle-username": _ORACLE, "--oracle-password": _ORACLE, "--oracle-external-auth": _ORACLE,
    "--oracle-pool-min": _ORACLE, "--oracle-pool-max": _ORACLE, "--oracle-pool-timeout-secs": _ORACLE,
    "--control-plane-audit-enabled": Refusal("a separate control-plane audit log", "drop the flag; every "
                                             "worker change is logged at info level"),
    "--enable-mesh": _MESH, "--mesh-server-name": _MESH, "--mesh-host": _MESH, "--mesh-advertise-host": _MESH,
    "--mesh-port": _MESH, "--mesh-peer-urls": _MESH, "--mesh-tls-ca-cert": _MESH, "--mesh-tls-cert": _MESH,
    "--mesh-tls-key": _MESH,
}

# Values of accepted flags that name a feature Shepherd lacks: (flag, value) -> refusal.
REFUSED_VALUES: dict[tuple[str, str], Refusal] = {
    ("--parser", "symphony"): Refusal("the Symphony parser", "use --parser legacy (the per-model parsers)"),
    ("--history-backend", "oracle"): _ORACLE,
    # SMG's second layout of the same index (chains stored as runs, for lock-free lookups): it routes
    # exactly as the positional one, so a second implementation would only be a second copy.
    ("--kv-index", "chain"): Refusal("the run-length 'chain' layout of the KV-event index", "use --kv-index "
                                     "positional (each block is named by its whole prefix, which answers the "
                                     "same lookups)"),
}



def _missing_parsers() -> dict[tuple[str, str], Refusal]:
    """SMG's tool/reasoning parser names that Shepherd's registries lack (the registries hold SMG's aliases
    where the format is the same)."""
    from shepherd.parsers.reasoning import REASONING_PARSER_NAMES
    from shepherd.parsers.tool import TOOL_PARSER_NAMES

    refusals: dict[tuple[str, str], Refusal] = {}
    for flag, known, kind in (("--tool-call-parser", TOOL_PARSER_NAMES, "tool-call"),
                              ("--reasoning-parser", REASONING_PARSER_NAMES, "reasoning")):
        for name in reference_flag(flag)["choices"] or ():
            if name not in known:
                refusals[(flag, name)] = Refusal(
                    f"the {name!r} {kind} parser", f"name one of {', '.join(sorted(known))} "
                    "(passthrough: no parsing), or leave the flag out to detect it from the model name")
    return refusals


def reference() -> dict[str, Any]:
    """SMG's own flag list: {"source", "version", "flags": [{"flag", "aliases", "takes_value", ...}]}."""
    text = resources.files("shepherd.data").joinpath("smg_launch_flags.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def reference_flag(flag: str) -> dict[str, Any]:
    for entry in reference()["flags"]:
        if flag == entry["flag"] or flag in entry["aliases"]:
            return dict(entry)
    raise KeyError(flag)


REFUSED_VALUES.update(_missing_parsers())
