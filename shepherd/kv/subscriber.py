"""Feed the KV index from each worker's KV-event publisher: the `SubscribeKvEvents` stream of a gRPC
worker, the ZMQ publisher an HTTP worker declares (zmq_follow.py). The transports differ only in how
they carry batches and fetch missed ones; the sequence rules are `EventStream`'s (stream.py).

For gRPC, a gap re-subscribes from last+1, so the engine replays what was missed or sends a
snapshot; if it answers with neither, the worker's blocks are cleared and rebuilt from a fresh
subscription. A broken stream marks the worker not live and reconnects with exponential backoff
(with jitter), resuming from last+1. A worker whose engine answers UNIMPLEMENTED, or an HTTP worker
that declares no publisher, has no events: it stays out of the index and the policy uses its
approximate tree for it.
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

from shepherd.kv.endpoints import ZmqEndpoints, endpoints_from_labels, endpoints_problem
from shepherd.kv.index import KvIndex
from shepherd.kv.stream import EventStream, KvBatch, KvEvent, Resubscribe
from shepherd.workers.registry import RegistryEvent
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.kv")


def grpc_batch(message: Any) -> KvBatch:
    """A `KvEventBatch` message as the index's batch."""
    events: list[KvEvent] = []
    for event in message.events:
        kind = event.WhichOneof("data")
        if kind == "stored":
            stored = event.stored
            if stored.HasField("locality") and stored.locality == common_pb2.KV_CACHE_LOCALITY_REMOTE:
                continue  # a shared pool's blocks, not this worker's
            parent = stored.parent_block_hash if stored.HasField("parent_block_hash") else None
            size = stored.blocks[0].block_size if stored.blocks else 0
            events.append(("stored", parent, [(b.block_hash, b.token_ids) for b in stored.blocks], size or None))
        elif kind == "removed":
            events.append(("removed", event.removed.block_hashes))
        elif kind == "cleared":
            events.append(("cleared",))
    snapshot = (message.snapshot.index, message.snapshot.count) if message.HasField("snapshot") else None
    load = message.load.waiting_uncached_tokens if message.HasField("load") else None
    return KvBatch(message.sequence_number, events, snapshot, load)


class KvEventSubscriptions:
    """Starts and stops one subscriber task per worker with events as workers come and go."""

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
        self._zmq: Any = None  # the zmq.asyncio context, made when the first HTTP worker declares a publisher
        self._declared: dict[str, ZmqEndpoints | None] = {}  # HTTP worker id -> the publisher it is followed on

    def on_registry_event(self, event: RegistryEvent, worker: Worker) -> None:
        if event is RegistryEvent.ADDED and worker.id not in self._tasks:
            self._start(worker)
        elif event is RegistryEvent.UPDATED and worker.connection_mode == "http" and (
                self._declared.get(worker.id) != endpoints_from_labels(worker.labels)):
            # The labels now declare another publisher (or none, or one for the first time): follow that.
            self._stop(worker.id)
            self._start(worker)
        elif event is RegistryEvent.REMOVED:
            self._stop(worker.id)

    def _start(self, worker: Worker) -> None:
        if worker.connection_mode == "http":
            self._declared[worker.id] = endpoints_from_labels(worker.labels)
        follow = self._transport(worker)
        if follow is None:
            return
        stream = self.streams[worker.id] = EventStream(worker.id, self.index)
        self._tasks[worker.id] = asyncio.get_running_loop().create_task(follow(worker, stream))

    def _stop(self, worker_id: str) -> None:
        task = self._tasks.pop(worker_id, None)
        if task is not None:
            task.cancel()
        self.streams.pop(worker_id, None)
        self._declared.pop(worker_id, None)
        self.without_events.discard(worker_id)
        self.index.forget(worker_id)

    def _transport(self, worker: Worker) -> Callable[[Worker, EventStream], Any] | None:
        if worker.connection_mode == "grpc":
            return self._follow_grpc
        if worker.connection_mode != "http":
            return None
        endpoints = endpoints_from_labels(worker.labels)
        if endpoints is None:
            return None
        problem = endpoints_problem(endpoints)
        if problem is not None:
            log.warning("%s: %s; routing to it uses the approximate tree", worker.url, problem)
            self.without_events.add(worker.id)
            return None
        return self._follow_zmq

    async def _follow_zmq(self, worker: Worker, stream: EventStream) -> None:
        import zmq
        import zmq.asyncio

        from shepherd.kv.zmq_follow import ZmqFollower  # pyzmq only when an HTTP worker declares a publisher

        if self._zmq is None:
            self._zmq = zmq.asyncio.Context()
        endpoints = endpoints_from_labels(worker.labels)
        assert endpoints is not None
        delay = self._initial
        while True:
            try:
                await ZmqFollower(worker, stream, endpoints, self._zmq).run()
            except zmq.ZMQError as exc:
                log.info("kv events of %s on %s failed (%s); reconnecting", worker.url, endpoints.events, exc)
            self.index.set_live(worker.id, False)
            await asyncio.sleep(delay * (1.0 + 0.2 * self._rng.uniform(-1.0, 1.0)))
            delay = min(delay * 2.0, self._max)

    async def _follow_grpc(self, worker: Worker, stream: EventStream) -> None:
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
                        stream.apply(grpc_batch(batch))
                        delay = self._initial
                        if worker.liveness is not None:  # the engine is alive: lifts a stall
                            if batch.HasField("load"):
                                worker.liveness.load_pushed()  # ... and its silence now means staleness
                            else:
                                worker.liveness.contact()
                    log.info("kv event stream of %s ended; reconnecting", worker.url)
                except Resubscribe as again:
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
        if self._zmq is not None:
            self._zmq.destroy(linger=0)  # closes any socket left, so terminating cannot block
            self._zmq = None
