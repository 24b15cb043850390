"""Run-time knobs and counters of a simulated gRPC engine (set and read over its HTTP control port)."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import grpc

from shepherd.sim.faults import FaultError

_STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)


@dataclass
class GrpcFaults:
    response_text: str | None = None  # answer every request with this text (encoded by the real tokenizer)
    tokens_per_chunk: int = 1  # token ids per stream chunk (SGLang's stream_interval)
    chunk_delay_ms: float = 0.0  # extra pause before each chunk, on top of the cost model
    latency_ms: float = 0.0  # pause before a request starts
    error_code: str = ""  # fail Generate with this gRPC status name (e.g. UNAVAILABLE)
    error_after_chunks: int = -1  # -1: fail before answering; n: after n chunks
    healthy: bool = True  # what HealthCheck answers
    hang: bool = False  # accept Generate and never answer
    embed: bool = True  # serve the Embed RPC; false: answer UNIMPLEMENTED, as a generation model's engine does

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise FaultError(f"unknown fault {name!r}; known: {', '.join(sorted(known))}")
            current = getattr(self, name)
            if name == "response_text":
                if value is not None and not isinstance(value, str):
                    raise FaultError("response_text must be a string or null")
            elif name == "error_code":
                if not isinstance(value, str) or (value and value not in _STATUS_NAMES):
                    raise FaultError(f"error_code must be a gRPC status name, got {value!r}")
            elif isinstance(current, bool):
                if not isinstance(value, bool):
                    raise FaultError(f"{name} must be true or false")
            elif isinstance(current, int):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise FaultError(f"{name} must be an integer")
            elif not isinstance(value, (int, float)) or isinstance(value, bool):
                raise FaultError(f"{name} must be a number")
            setattr(self, name, value if name in ("response_text", "error_code") else type(current)(value))
        if self.tokens_per_chunk < 1:
            raise FaultError("tokens_per_chunk must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GrpcStats:
    requests_total: int = 0  # Generate calls received
    completed: int = 0  # streams that ran to their end
    aborts: int = 0  # Abort RPCs received
    cancelled: int = 0  # streams the client cancelled before their end
    errors_injected: int = 0
    in_flight: int = 0
    embeds_total: int = 0  # Embed calls received
    aborted_ids: deque[str] = field(default_factory=lambda: deque(maxlen=100))
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))

    def to_dict(self) -> dict[str, Any]:
        return {"requests_total": self.requests_total, "completed": self.completed, "aborts": self.aborts,
                "cancelled": self.cancelled, "errors_injected": self.errors_injected, "in_flight": self.in_flight,
                "embeds_total": self.embeds_total,
                "aborted_ids": list(self.aborted_ids)}
