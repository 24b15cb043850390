"""Feed the KV index from each gRPC worker's `SubscribeKvEvents` stream.

One task per gRPC worker. Sequence numbers keep the index honest:

* a batch numbered last+1 is applied; one numbered at or below the last is a repeat (a load-only
  heartbeat, a replay overlap) and only confirms the stream is in sync;
* a snapshot chunk (the publisher's resync) clears the worker first and then applies;
* a jump past last+1 means batches were lost: the worker leaves the index's trust (not live) and
  the task re-subscribes from last+1, so the engine replays what was missed or sends a snapshot;
  if it answers with neither, the worker's blocks are cleared and rebuilt from a fresh subscription.

A broken stream marks the worker not live and reconnects with exponential backoff (with jitter), resuming
from last+1. A worker whose engine answers UNIMPLEMENTED has no events: it stays out of the index and
the policy uses its approximate tree for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import grpc
from smg_grpc_proto.generated import common_pb2

from shepherd.kv.index import KvIndex
from shepherd.workers.registry import RegistryEvent
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.kv")


class _Resubscribe(Exception):
    """Leave the current stream and subscribe again from `start`."""

    def __init__(self, start: int) -> None:
        self.start = start


class EventStream:
    """The cursor of one worker's stream and what each batch does to the index."""

    def __init__(self, worker_id: str, index: KvIndex) -> None:
        self.worker_id = worker_id
        self.index = index
        self.last: int | None = None  # the last sequence applied
        self.resumed_from: int | None = None  # the start of the current subscription (None: fresh)
        self.gaps = 0

    def start_sequence(self) -> int:
        return 0 if self.last is None else self.last + 1

    def subscribed(self, start: int) -> None:
        self.resumed_from = start or None

    def apply(self, batch: Any) -> None:
        index, worker_id = self.index, self.worker_id
        seq = batch.sequence_number
        if batch.HasField("load"):
            index.set_load(worker_id, batch.load.waiting_uncached_tokens)
        if batch.HasField("snapshot"):
            if batch.snapshot.index == 0:
                index.clear(worker_id)
            self._apply_events(batch)
            self.last = seq
            index.set_live(worker_id, batch.snapshot.index + 1 >= batch.snapshot.count)
            self.resumed_from = None
            return
        if self.last is not None and seq <= self.last:  # a repeat or heartbeat: in sync
            index.set_live(worker_id, True)
            self.resumed_from = None
            return
        if self.last is not None and seq != self.last + 1:
            self.gaps += 1
            index.gap(worker_id)
            if self.resumed_from is not None:  # we asked for a replay and did not get it: start over
                log.info("kv events of %s: no replay from %d (got %d); rebuilding", worker_id, self.last + 1, seq)
                index.clear(worker_id)
                self.last = None
                raise _Resubscribe(0)
            log.info("kv events of %s: batches %d..%d lost; resubscribing", worker_id, self.last + 1, seq - 1)
            raise _Resubscribe(self.last + 1)
        if self.last is None and self.resumed_from is None:
            index.clear(worker_id)  # a fresh subscription without a snapshot: only what follows is known
        self._apply_events(batch)
        self.last = seq
        self.resumed_from = None
        index.set_live(worker_id, True)

    def _apply_events(self, batch: Any) -> None:
        index, worker_id = self.index, self.worker_id
        for event in batch.events:
            kind = event.WhichOneof("data")
            if kind == "stored":
                stored = event.stored
                if stored.HasField("locality") and stored.locality == common_pb2.KV_CACHE_LOCALITY_REMOTE:
                    continue  # a shared pool's blocks, not this worker's
                parent = stored.parent_block_hash if stored.HasField("parent_block_hash") else None
                size = stored.blocks[0].block_size if stored.blocks else 0
                index.stored(worker_id, parent, ((b.block_hash, b.token_ids) for b in stored.blocks), size or None)
            elif kind == "removed":
                index.removed(worker_id, event.removed.block_hashes)
            elif kind == "cleared":
                index.clear(worker_id, resync=False)


class KvEventSubscriptions:
    """Starts and stops one subscriber task per gRPC worker as workers come and go."""

    def __init__(self, index: KvIndex, client_for: Callable[[str], Any], initial_backoff: float = 0.1,
                 max_backoff: float = 5.0, rng: random.Random | None = None) -> None:
        self.index = index
        self._client_for = client_for  # url -> a GrpcWorkerClient (its `.stub`), or None while not connected
        self._initial = initial_backoff
        self._max = max_backoff
        self._rng = rng or random.Random()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.streams: dict[str, EventStream] = {}
        self.without_events: set[str] = set()

    def on_registry_event(self, event: RegistryEvent, worker: Worker) -> None:
        if worker.connection_mode != "grpc":
            return
        if event is RegistryEvent.ADDED and worker.id not in self._tasks:
            stream = self.streams[worker.id] = EventStream(worker.id, self.index)
            self._tasks[worker.id] = asyncio.get_running_loop().create_task(self._follow(worker, stream))
        elif event is RegistryEvent.REMOVED:
            task = self._tasks.pop(worker.id, None)
            if task is not None:
                task.cancel()
            self.streams.pop(worker.id, None)
            self.without_events.discard(worker.id)
            self.index.forget(worker.id)

    async def _follow(self, worker: Worker, stream: EventStream) -> None:
        delay = self._initial
        start = 0
        while True:
            client = self._client_for(worker.url)
            if client is not None:
                stream.subscribed(start)
                call = client.stub.SubscribeKvEvents(common_pb2.SubscribeKvEventsRequest(
                    start_sequence_number=start))
                try:
                    async for batch in call:
                        stream.apply(batch)
                        delay = self._initial
                        if worker.liveness is not None:  # the engine is alive: lifts a stall
                            if batch.HasField("load"):
                                worker.liveness.load_pushed()  # ... and its silence now means staleness
                            else:
                                worker.liveness.contact()
                    log.info("kv event stream of %s ended; reconnecting", worker.url)
                except _Resubscribe as again:
                    call.cancel()
                    start = again.start
                    continue
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                        log.info("%s publishes no KV events; routing to it uses the approximate tree", worker.url)
                        self.index.forget(worker.id)
                        self.without_events.add(worker.id)
                        return
                    log.info("kv event stream of %s failed (%s); reconnecting", worker.url, exc.code().name)
                finally:
                    call.cancel()
            self.index.set_live(worker.id, False)
            start = stream.start_sequence()
            await asyncio.sleep(delay * (1.0 + 0.2 * self._rng.uniform(-1.0, 1.0)))
            delay = min(delay * 2.0, self._max)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
