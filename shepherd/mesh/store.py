"""What the mesh keeps in the shared store, behind one interface (Redis, or a local file channel).

The store holds *namespaces*: small maps (key -> bytes) with a version number that every write
moves forward, so a reader polls one number and reads the map only when it changed. A stream of
batched events (cache-aware routing) and token buckets (fleet rate limits) exist only on Redis.

Every call is bounded by the store's timeout; a failure raises StoreUnavailable, which the mesh
turns into "serve on the last known state" and a status that /readiness, the logs and a metric
report (see status.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class StoreUnavailable(Exception):
    """The shared store could not be reached in time."""


class SharedStore(ABC):
    kind: str  # "redis" | "local"

    @abstractmethod
    async def version(self, namespace: str) -> int: ...

    @abstractmethod
    async def generation(self, namespace: str) -> str:
        """A token that stays the same for as long as the store keeps the namespace's data (one is
        created when none exists), so a reader can tell "changed" from "lost"."""

    @abstractmethod
    async def read(self, namespace: str) -> tuple[int, dict[str, bytes]]:
        """(version, entries), read together."""

    @abstractmethod
    async def write(self, namespace: str, key: str, value: bytes | None, *, only_if_absent: bool = False) -> bool:
        """Set (or, with None, delete) one entry and move the version; False when `only_if_absent`
        found the key present (nothing written)."""

    async def close(self) -> None:
        return None
