"""Follow an HTTP worker's KV events on its engine's ZMQ publisher (vLLM's `--kv-events-config`,
SGLang's `--kv-events-config`): a SUB socket for the live batches, the ROUTER replay socket for what
was missed. The sequence rules are `EventStream`'s, the same as for gRPC streams:

* on connecting, the replay socket is asked for everything it still has (from 0), so the index
  starts from the engine's buffered history rather than from nothing; the worker is not live (it is
  routed by the approximate tree) until that replay, or any later one, has been read to its end:
  a long history takes seconds to apply, and until then it says what the engine held, not holds;
* a gap in the live sequence asks the replay socket for the missing batches (the worker is routed
  by the approximate tree meanwhile); if it no longer has them, does not answer within
  REPLAY_TIMEOUT_SECS, or the worker declared none, the worker's blocks are cleared and the batch
  that showed the gap starts the index afresh: it may under-report what the engine holds from then
  on, never claim a block the engine dropped;
* a live sequence number at or below the previous live one means the publisher restarted (a PUB
  socket never repeats): the worker starts over.
"""

from __future__ import annotations

import logging

import zmq
import zmq.asyncio

from shepherd.kv.endpoints import ZmqEndpoints
from shepherd.kv.stream import EventStream, Resubscribe
from shepherd.kv.zmq_wire import END_SEQ, MAX_PAYLOAD_BYTES, WireError, decode_batch, parse_seq, seq_bytes
from shepherd.workers.worker import Worker

log = logging.getLogger("shepherd.kv")

REPLAY_TIMEOUT_SECS = 2.0  # per answer frame from the replay socket
MAX_REPLAY_BATCHES = 100_000  # vLLM buffers 10,000 steps by default

class ZmqFollower:
    def __init__(self, worker: Worker, stream: EventStream, endpoints: ZmqEndpoints,
                 context: zmq.asyncio.Context) -> None:
        self.worker = worker
        self.stream = stream
        self.endpoints = endpoints
        self._context = context
        self._live_last: int | None = None
        self.replays = 0
        self.restarts = 0

    async def run(self) -> None:
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.MAXMSGSIZE, MAX_PAYLOAD_BYTES + 1024)
        sub.setsockopt(zmq.SUBSCRIBE, self.endpoints.topic.encode())
        sub.connect(self.endpoints.events)  # before the replay, so that nothing falls between the two
        try:
            await self._replay(0)
            while True:
                frames = await sub.recv_multipart()
                self._contact()
                if len(frames) != 3:
                    log.warning("kv events of %s: a message of %d frames, not 3; ignored", self.worker.url, len(frames))
                    continue
                try:
                    seq = parse_seq(frames[1])
                except WireError as exc:
                    log.warning("kv events of %s: %s; ignored", self.worker.url, exc)
                    continue
                if self._live_last is not None and seq <= self._live_last:
                    log.info("kv events of %s: sequence went back to %d; the publisher restarted", self.worker.url, seq)
                    self.restarts += 1
                    self.stream.start_over()
                self._live_last = seq
                await self._apply(seq, frames[2])
        finally:
            sub.close(linger=0)

    async def _apply(self, seq: int, payload: bytes) -> None:
        try:
            batch = decode_batch(seq, payload)
        except WireError as exc:
            log.warning("kv events of %s: batch %d unreadable (%s); starting over", self.worker.url, seq, exc)
            self.stream.start_over()
            return
        try:
            self.stream.apply(batch)
        except Resubscribe as again:
            if again.start:
                await self._replay(again.start)
            if self.stream.last is None:  # the missing batches are gone: this one starts the stream afresh
                self.stream.apply(batch)

    async def _replay(self, start: int) -> None:
        """Fetch the batches from `start` from the replay socket and apply them in order."""
        stream = self.stream
        replay = self.endpoints.replay
        if replay is None:
            if start:
                stream.start_over()
            return
        self.replays += 1
        stream.subscribed(start)
        stream.catching_up = True
        dealer = self._context.socket(zmq.DEALER)  # ROUTER replies [identity, b"", seq, payload]
        dealer.setsockopt(zmq.MAXMSGSIZE, MAX_PAYLOAD_BYTES + 1024)
        dealer.connect(replay)
        try:
            await dealer.send_multipart([b"", seq_bytes(start)])
            for _ in range(MAX_REPLAY_BATCHES):
                if not await dealer.poll(REPLAY_TIMEOUT_SECS * 1000):
                    log.info("kv events of %s: no answer from the replay socket %s", self.worker.url, replay)
                    break
                frames = await dealer.recv_multipart()
                if len(frames) != 3 or frames[0]:
                    continue
                seq = parse_seq(frames[1])
                if seq == END_SEQ:
                    break
                self._contact()
                try:
                    stream.apply(decode_batch(seq, frames[2]))
                except Resubscribe as again:
                    if again.start:  # a hole inside the replay itself
                        stream.start_over()
                        break
                    stream.subscribed(0)  # cleared: what the replay still holds is a fresh start
                except WireError as exc:
                    log.warning("kv events of %s: replayed batch %d unreadable (%s)", self.worker.url, seq, exc)
                    stream.start_over()
                    break
        except WireError as exc:
            log.warning("kv events of %s: replay answer unreadable (%s)", self.worker.url, exc)
        finally:
            dealer.close(linger=0)
            stream.catching_up = False
        if start and stream.resumed_from is not None:  # asked for the missing batches and got none
            stream.start_over()
        stream.resumed_from = None
        stream.caught_up()

    def _contact(self) -> None:
        if self.worker.liveness is not None:
            self.worker.liveness.contact()  # the engine is alive: lifts a stall
