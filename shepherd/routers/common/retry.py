"""Which failures move a request to another worker, and how long to wait before it moves."""

from __future__ import annotations

import random

from aiohttp import web

from shepherd.config import RetryConfig
from shepherd.errors import GatewayError

# Worker answers worth trying elsewhere while nothing reached the client (Anthropic's 529 is "busy").
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})


class RetryableFailure(Exception):
    """An attempt failed before anything reached the client; another worker may serve the request.

    `response` is the worker's own answer (relayed if no other attempt does better); without one,
    `error` is what the client gets."""

    def __init__(self, error: GatewayError, response: web.Response | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.response = response


def error_answer(response: web.Response, status: int, final: bool, who: str) -> web.Response:
    """A worker's error answer (already in the client's shape): tried elsewhere when its status is
    worth it and another attempt may follow, else what the client gets."""
    if status in RETRYABLE_STATUSES and not final:
        raise RetryableFailure(GatewayError(status, "upstream_error", f"{who} answered {status}"), response)
    return response


class Backoff:
    """Exponential backoff with jitter: initial * multiplier**n, capped, moved by +-jitter."""

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()

    def secs(self, retry_index: int) -> float:
        config = self._config
        delay = min(config.initial_backoff_ms * config.backoff_multiplier**retry_index, config.max_backoff_ms)
        jitter = delay * config.jitter_factor * self._rng.uniform(-1.0, 1.0)
        return max(0.0, delay + jitter) / 1000.0
