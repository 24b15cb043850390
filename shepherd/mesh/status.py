"""Whether the shared store answers: one object every mesh task reports to, read by /readiness
(details), the metrics (smg_mesh_store_up) and the logs (one line per transition, not per call)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("shepherd.mesh")


class MeshStatus:
    def __init__(self, store_kind: str) -> None:
        self.store_kind = store_kind
        self.connected = True  # optimistic until the first call says otherwise
        self.since = time.time()
        self.last_error = ""
        self.errors = 0  # failed store calls, for the metric
        self.last_sync_at = 0.0  # wall time of the last successful read of shared state

    def ok(self) -> None:
        if not self.connected:
            log.warning("mesh: the %s store answers again after %.1fs; catching up with the shared state",
                        self.store_kind, time.time() - self.since)
            self.connected, self.since, self.last_error = True, time.time(), ""

    def synced(self) -> None:
        self.last_sync_at = time.time()

    def failed(self, error: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{error.__class__.__name__}: {error}"[:200]
        if self.connected:
            log.warning("mesh: the %s store is unreachable (%s); serving on the last known state",
                        self.store_kind, self.last_error)
            self.connected, self.since = False, time.time()

    def details(self) -> dict[str, object]:
        body: dict[str, object] = {"store": self.store_kind, "connected": self.connected,
                                   "since": round(self.since, 3),
                                   "last_sync_age_secs": round(time.time() - self.last_sync_at, 3)
                                   if self.last_sync_at else None}
        if not self.connected:
            body["state"] = "serving on last known state"
            body["last_error"] = self.last_error
        return body
