"""The routing-policy interface.

A policy is a pure, synchronous choice: given the available workers for a request and the request's
routing features, return one of them (or None when none is acceptable). It never awaits, so a
decision costs microseconds and can be unit-tested and simulated without sockets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from shepherd.policies.request_text import extract_routing_text
from shepherd.workers.worker import Worker

MAX_ROUTING_KEY_BYTES = 128


class RoutingRequest:
    """What a policy may look at. Text, tokens and the routing key are derived only when asked for.

    The gRPC pipeline knows more: the rendered prompt as `text` and its token ids as `tokens`, which
    prefix-aware policies then match on directly. On the HTTP path tokens are known only when the
    client sent `input_ids`.
    """

    __slots__ = ("path", "body", "headers", "_text", "_tokens", "_key_headers", "_routing_key", "lineage", "observer")

    def __init__(
        self,
        path: str,
        body: Mapping[str, Any] | None,
        headers: Mapping[str, str],
        *,
        text: str | None = None,
        tokens: Sequence[int] | None = None,
        routing_key_headers: Sequence[str] = ("x-smg-routing-key",),
        lineage: str | None = None,
    ) -> None:
        self.path = path
        self.body = body
        self.headers = headers
        self._text = text
        self._tokens: tuple[int, ...] | None = tuple(tokens) if tokens is not None else None
        self._key_headers = routing_key_headers
        self._routing_key: str | None | bool = False  # False: not looked up yet
        # What the request continues (a Responses conversation or chain), for sticky sessions.
        self.lineage = lineage
        # Set by a policy that wants the chosen attempt's time to first byte (None: there was none);
        # the request lifecycle calls it once per attempt.
        self.observer: Callable[[float | None], None] | None = None

    @property
    def text(self) -> str:
        """The prompt as one string (chat messages joined by single spaces)."""
        if self._text is None:
            self._text = extract_routing_text(self.path, self.body)
        return self._text

    @property
    def tokens(self) -> tuple[int, ...] | None:
        """Token ids when the gateway tokenized the prompt or the client sent `input_ids`."""
        if self._tokens is None and self.body is not None:
            ids = self.body.get("input_ids")
            if isinstance(ids, list) and ids and isinstance(ids[0], list):
                ids = ids[0]  # a batch routes by its first sequence
            if isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids):
                self._tokens = tuple(ids)
        return self._tokens

    @property
    def routing_key(self) -> str | None:
        """The first valid routing-key header (a non-empty value of at most 128 UTF-8 bytes)."""
        if self._routing_key is False:
            self._routing_key = None
            for name in self._key_headers:
                value = self.headers.get(name)
                if value and len(value.encode()) <= MAX_ROUTING_KEY_BYTES:
                    self._routing_key = value
                    break
        return self._routing_key  # type: ignore[return-value]

    @property
    def estimated_tokens(self) -> int:
        """Prompt length in tokens: exact when known, else about four characters per token."""
        tokens = self.tokens
        if tokens is not None:
            return len(tokens)
        return max(1, len(self.text) // 4)


class Policy(ABC):
    """One load-balancing policy. Subclasses live in their own modules."""

    name: ClassVar[str]
    # The policy weighs the workers' loads itself. When every candidate is overloaded, the overload
    # veto (workers/overload.py) then leaves the choice among them to it instead of taking the
    # least loaded: that keeps a cache-aware policy's affinity where all engines are busy.
    balances_load: ClassVar[bool] = False

    @abstractmethod
    def select(self, workers: Sequence[Worker], request: RoutingRequest) -> Worker | None:
        """Choose among `workers` (already filtered to available ones, never empty)."""

    def on_worker_removed(self, worker: Worker) -> None:  # noqa: B027 - optional hook
        """Forget any state kept for `worker`."""

    def wants_tokens(self) -> bool:
        """Whether the prompt's token ids would change the pick, so that a path that does not tokenize
        (HTTP) should render and tokenize the prompt for it, as the engine will."""
        return False

    def maintain(self) -> None:  # noqa: B027 - optional hook
        """Periodic housekeeping (tree eviction, key expiry); called by the policy registry's timer."""


def least_loaded(workers: Sequence[Worker]) -> Worker:
    """The worker with the fewest in-flight requests; ties go to the one that has served fewer."""
    best = workers[0]
    best_key = (best.load, best.processed)
    for worker in workers[1:]:
        key = (worker.load, worker.processed)
        if key < best_key:
            best, best_key = worker, key
    return best
