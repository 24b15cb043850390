"""The simulated engine's KV-cache event publisher: numbered batches, a replay window, snapshots.

The engine reports what its block cache does (blocks stored, with parent and token ids; blocks
removed by eviction; everything cleared by a flush); at the end of each scheduler step the events
of that step become one batch with the next sequence number. A subscriber gets live batches through
a bounded queue; one that falls behind is cut off (it reconnects and resumes, as a real consumer of
a ZMQ or gRPC stream would have to). A subscriber resuming from sequence N gets batches N.. from
the replay window when it still reaches back that far, otherwise a snapshot of the live blocks
(cleared, then every block parents first) numbered as the current sequence.

Fault switches for tests: `drop_batches` loses the next N batches on the way to subscribers (they
stay in the replay window, as a message lost on the wire would), `disconnect()` ends every stream.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# ("stored", parent hash or None, ((hash, token ids), ...)) | ("removed", (hash, ...)) | ("cleared",)
Event = tuple
Snapshot = Callable[[], list[Event]]


@dataclass
class Batch:
    seq: int
    events: list[Event]
    snapshot: bool = False  # a resync: the subscriber starts over from these events


@dataclass
class Subscription:
    queue: asyncio.Queue[Batch | None]
    initial: list[Batch] = field(default_factory=list)


class KvEventLog:
    def __init__(self, replay: int = 4096, queue_size: int = 1024) -> None:
        self.seq = 0
        self.drop_batches = 0
        self.batches_published = 0
        self.batches_dropped = 0
        self._pending: list[Event] = []
        self._history: deque[Batch] = deque(maxlen=max(1, replay))
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[Batch | None]] = set()

    # -- what the engine reports --------------------------------------------------------------

    def stored(self, parent: int | None, blocks: Sequence[tuple[int, tuple[int, ...]]]) -> None:
        if blocks:
            self._pending.append(("stored", parent, tuple(blocks)))

    def removed(self, hashes: Sequence[int]) -> None:
        if hashes:
            self._pending.append(("removed", tuple(hashes)))

    def cleared(self) -> None:
        self._pending.append(("cleared",))

    def flush(self) -> None:
        """End of a step: the step's events become one numbered batch."""
        if not self._pending:
            return
        self.seq += 1
        batch = Batch(self.seq, self._pending)
        self._pending = []
        self._history.append(batch)
        self.batches_published += 1
        if self.drop_batches > 0:
            self.drop_batches -= 1
            self.batches_dropped += 1
            return
        for queue in list(self._subscribers):
            if queue.full():  # too slow: cut it off; it will resume from where it got to
                self._subscribers.discard(queue)
                queue.get_nowait()
                queue.put_nowait(None)
            else:
                queue.put_nowait(batch)

    # -- subscribers --------------------------------------------------------------------------

    def subscribe(self, start: int, snapshot: Snapshot) -> Subscription:
        """Live batches from now on, preceded by a replay from `start` or a snapshot."""
        self.flush()
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        history = self._history
        if start > 0 and history and history[0].seq <= start <= self.seq + 1:
            replay = [b for b in history if b.seq >= start]
            return Subscription(queue, replay or [Batch(self.seq, [])])  # an empty batch: "in sync"
        if start > 0 and not history and start == self.seq + 1:
            return Subscription(queue, [Batch(self.seq, [])])
        return Subscription(queue, [Batch(self.seq, [("cleared",), *snapshot()], snapshot=True)])

    def history_from(self, start: int) -> list[Batch]:
        """The batches still in the replay window numbered `start` or later (a ZMQ replay request)."""
        return [batch for batch in self._history if batch.seq >= start]

    def unsubscribe(self, queue: asyncio.Queue[Batch | None]) -> None:
        self._subscribers.discard(queue)

    def disconnect(self) -> int:
        """End every live stream (a publisher restart, a dropped connection)."""
        count = len(self._subscribers)
        for queue in self._subscribers:
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
        self._subscribers.clear()
        return count

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)


class KvFaultError(ValueError):
    """A /sim/kv_events body that asks for something the log cannot do."""


def kv_event_faults(log: KvEventLog, cached_blocks: int, changes: object | None) -> dict[str, object]:
    """Apply a /sim/kv_events body (`drop_batches`: lose the next N; `disconnect`: end every stream)
    and report the log's state; None only reports."""
    disconnected = 0
    if changes is not None:
        if not isinstance(changes, dict):
            raise KvFaultError("the body must be a JSON object")
        drop = changes.get("drop_batches", 0)
        if not isinstance(drop, int) or isinstance(drop, bool) or drop < 0:
            raise KvFaultError("drop_batches must be a non-negative integer")
        log.drop_batches += drop
        if changes.get("disconnect"):
            disconnected = log.disconnect()
    return {"sequence": log.seq, "subscribers": log.subscribers, "published": log.batches_published,
            "dropped": log.batches_dropped, "pending_drops": log.drop_batches, "cached_blocks": cached_blocks,
            "disconnected": disconnected}
