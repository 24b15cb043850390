"""The simulated HTTP engine's KV events over ZMQ, as vLLM's and SGLang's `ZmqEventPublisher` sends them.

A PUB socket carries every batch the engine's block cache produces (kv_events.KvEventLog) as
[topic, sequence (8 bytes big-endian, from 0), msgpack KVEventBatch]; a ROUTER socket answers a
replay request (the sequence to start from) with the batches still in the replay window, then the
end marker. The log's fault switches apply: a dropped batch never goes out on the PUB socket but
stays replayable, as a message lost on the wire would. `replay_enabled = False` makes the replay
socket ignore requests, as an engine whose replay endpoint is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import zmq
import zmq.asyncio

from shepherd.kv.zmq_wire import END_SEQ, encode_batch, parse_seq, seq_bytes
from shepherd.sim.engine import Engine
from shepherd.sim.kv_events import Batch

log = logging.getLogger("shepherd.sim")


def _wire_seq(batch: Batch) -> int:
    return batch.seq - 1  # the log numbers from 1 (gRPC's 0 means "from now"); vLLM's publisher from 0


class ZmqKvPublisher:
    def __init__(self, engine: Engine, endpoint: str, replay_endpoint: str | None = None, topic: str = "",
                 context: zmq.asyncio.Context | None = None) -> None:
        self.engine = engine
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self._topic = topic.encode()
        self._context = context or zmq.asyncio.Context.instance()
        self._pub: zmq.asyncio.Socket | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.replay_enabled = True
        self.sent = 0
        self.replays = 0

    def start(self) -> None:
        self._pub = self._context.socket(zmq.PUB)
        self._pub.bind(self.endpoint)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._publish()))
        if self.replay_endpoint is not None:
            self._router = self._context.socket(zmq.ROUTER)
            self._router.bind(self.replay_endpoint)
            self._tasks.append(loop.create_task(self._serve_replay()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for socket in (self._pub, self._router):
            if socket is not None:
                socket.close(linger=0)

    def _payload(self, batch: Batch) -> bytes:
        return encode_batch(batch.events, self.engine.params.block_size)

    async def _publish(self) -> None:
        events = self.engine.events
        assert self._pub is not None
        start = events.seq + 1
        while True:
            subscription = events.subscribe(start, self.engine.snapshot_events)
            try:
                # A PUB socket keeps no one in sync: only what was not sent yet goes out (after a cut-off,
                # the batches the queue lost, from the replay window).
                pending = [b for b in subscription.initial if not b.snapshot and b.events and b.seq >= start]
                while True:
                    for batch in pending:
                        await self._pub.send_multipart([self._topic, seq_bytes(_wire_seq(batch)), self._payload(batch)])
                        self.sent += 1
                        start = batch.seq + 1
                    item = await subscription.queue.get()
                    if item is None:  # cut off (slow, or the disconnect fault): carry on from `start`
                        break
                    pending = [item]
            finally:
                events.unsubscribe(subscription.queue)

    async def _serve_replay(self) -> None:
        router = self._router
        assert router is not None
        while True:
            frames = await router.recv_multipart()
            if len(frames) != 3 or not self.replay_enabled:
                continue
            identity, _, start = frames
            try:
                first = parse_seq(start)
            except ValueError:
                continue
            self.replays += 1
            for batch in self.engine.events.history_from(first + 1):
                await router.send_multipart([identity, b"", seq_bytes(_wire_seq(batch)), self._payload(batch)])
            await router.send_multipart([identity, b"", seq_bytes(END_SEQ), b""])
