"""Where an HTTP worker's engine publishes its KV events, as the worker's labels declare it.

    kv_events_endpoint=tcp://HOST:PORT          the engine's ZMQ PUB socket (vLLM's `endpoint`)
    kv_events_replay_endpoint=tcp://HOST:PORT   its ROUTER replay socket (`replay_endpoint`; optional)
    kv_events_topic=TOPIC                       the topic it publishes on (`topic`; default: all)

The gateway connects to both; the engine binds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shepherd.config import kv_event_endpoint_problem as endpoint_problem

ENDPOINT_LABEL = "kv_events_endpoint"
REPLAY_LABEL = "kv_events_replay_endpoint"
TOPIC_LABEL = "kv_events_topic"


@dataclass(frozen=True)
class ZmqEndpoints:
    events: str
    replay: str | None = None
    topic: str = ""


def endpoints_from_labels(labels: Mapping[str, str]) -> ZmqEndpoints | None:
    """The publisher the labels declare (None: none)."""
    events = labels.get(ENDPOINT_LABEL)
    if not events:
        return None
    return ZmqEndpoints(events, labels.get(REPLAY_LABEL) or None, labels.get(TOPIC_LABEL, ""))


def endpoints_problem(endpoints: ZmqEndpoints) -> str | None:
    for endpoint in (endpoints.events, endpoints.replay):
        problem = endpoint_problem(endpoint) if endpoint is not None else None
        if problem is not None:
            return problem
    return None
