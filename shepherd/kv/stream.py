"""One worker's KV-event stream as the index sees it, whatever carries it (gRPC or ZMQ).

A transport decodes each message into a `KvBatch`; `EventStream.apply` keeps the index honest by
sequence number:

* a batch numbered last+1 is applied; one numbered at or below the last is a repeat (a load-only
  heartbeat, a replay overlap) and only confirms the stream is in sync;
* a snapshot chunk (the publisher's resync) clears the worker first and then applies;
* a jump past last+1 means batches were lost: the worker leaves the index's trust (not live) and
  `Resubscribe(last+1)` asks the transport to fetch the missing batches (gRPC: subscribe again from
  there; ZMQ: ask the replay socket). If what comes back still does not start at last+1 (the
  publisher no longer has them), the worker's blocks are cleared and `Resubscribe(0)` asks for a
  fresh start: the index then knows only what follows, which may under-report but never over-reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from shepherd.kv.index import EngineHash, KvIndex

log = logging.getLogger("shepherd.kv")

# ("stored", parent engine hash or None, ((engine hash, token ids), ...), block size or None)
# | ("removed", (engine hash, ...)) | ("cleared",)
KvEvent = tuple


@dataclass(slots=True)
class KvBatch:
    seq: int
    events: Sequence[KvEvent] = field(default_factory=list)
    snapshot: tuple[int, int] | None = None  # (chunk index, chunk count) of a publisher's resync
    waiting_uncached_tokens: int | None = None  # the engine's queued prefill, when the batch carries load


class Resubscribe(Exception):
    """Leave the current stream and fetch again from `start` (0: a fresh start)."""

    def __init__(self, start: int) -> None:
        self.start = start


class EventStream:
    """The cursor of one worker's stream and what each batch does to the index."""

    def __init__(self, worker_id: str, index: KvIndex) -> None:
        self.worker_id = worker_id
        self.index = index
        self.last: int | None = None  # the last sequence applied
        self.resumed_from: int | None = None  # the start of the current fetch (None: fresh or in sync)
        # A replay is being read: the batches describe the engine as it was, not as it is, so the
        # worker is not trusted (live) until the replay has caught up with the live stream.
        self.catching_up = False
        self.gaps = 0

    def start_sequence(self) -> int:
        return 0 if self.last is None else self.last + 1

    def subscribed(self, start: int) -> None:
        self.resumed_from = start or None

    def start_over(self) -> None:
        """The missing batches cannot be had: forget the worker's blocks, trust only what follows."""
        self.index.clear(self.worker_id)
        self.index.set_live(self.worker_id, False)
        self.last = None
        self.resumed_from = None

    def apply(self, batch: KvBatch) -> None:
        index, worker_id = self.index, self.worker_id
        seq = batch.seq
        if batch.waiting_uncached_tokens is not None:
            index.set_load(worker_id, batch.waiting_uncached_tokens)
        if batch.snapshot is not None:
            chunk, count = batch.snapshot
            if chunk == 0:
                index.clear(worker_id)
            self._apply_events(batch.events)
            self.last = seq
            index.set_live(worker_id, chunk + 1 >= count and not self.catching_up)
            self.resumed_from = None
            return
        if self.last is not None and seq <= self.last:  # a repeat or heartbeat: in sync
            index.set_live(worker_id, not self.catching_up)
            self.resumed_from = None
            return
        if self.last is not None and seq != self.last + 1:
            self.gaps += 1
            index.gap(worker_id)
            if self.resumed_from is not None:  # we asked for the missing batches and did not get them
                log.info("kv events of %s: no replay from %d (got %d); rebuilding", worker_id, self.last + 1, seq)
                self.start_over()
                raise Resubscribe(0)
            log.info("kv events of %s: batches %d..%d lost; fetching them again", worker_id, self.last + 1, seq - 1)
            raise Resubscribe(self.last + 1)
        if self.last is None and self.resumed_from is None:
            index.clear(worker_id)  # a fresh start without a snapshot: only what follows is known
        self._apply_events(batch.events)
        self.last = seq
        self.resumed_from = None
        index.set_live(worker_id, not self.catching_up)

    def caught_up(self) -> None:
        """The replay is over: the index is as current as the live stream, trust it again."""
        self.catching_up = False
        if self.last is not None:
            self.index.set_live(self.worker_id, True)

    def _apply_events(self, events: Sequence[KvEvent]) -> None:
        index, worker_id = self.index, self.worker_id
        for event in events:
            kind = event[0]
            if kind == "stored":
                _, parent, blocks, size = event
                index.stored(worker_id, parent, blocks, size)
            elif kind == "removed":
                index.removed(worker_id, event[1])
            elif kind == "cleared":
                index.clear(worker_id, resync=False)


def named_blocks(hashes: Sequence[EngineHash], tokens: Sequence[int], block_size: int
                 ) -> list[tuple[EngineHash, Sequence[int]]]:
    """Pair each block hash with its tokens when an event carries them as one run (vLLM, SGLang)."""
    return [(h, tokens[i * block_size:(i + 1) * block_size]) for i, h in enumerate(hashes)]
