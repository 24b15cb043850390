"""What the simulated SGLang and vLLM services have in common: their constructor and the RPCs both
answer the same way. Each service's own message classes come from its `messages` module."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import grpc
from smg_grpc_proto.generated import common_pb2

from shepherd.sim.grpc.core import InjectedError, SimCore, load_row
from shepherd.sim.grpc.info import SimInfo
from shepherd.sim.kv_events import Batch
from shepherd.tokenizer import bundle


class CommonRpcs:
    messages: ModuleType  # the service's generated messages (sglang_scheduler_pb2 or vllm_engine_pb2)

    def __init__(self, core: SimCore, info: SimInfo) -> None:
        self.core = core
        self.info = info

    async def Embed(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 - RPC name
        ids = list(request.tokenized.input_ids)
        if not ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tokenized.input_ids must not be empty")
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        try:
            vector = self.core.embed(ids, metadata)
        except InjectedError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        return self.messages.EmbedResponse(embedding=vector, prompt_tokens=len(ids), embedding_dim=len(vector))

    async def GetLoads(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802 - RPC name
        row = load_row(self.core, self.info.params)
        messages = self.messages
        return messages.GetLoadsResponse(timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                         version="shepherd-sim", dp_rank_count=1,
                                         loads=[messages.SchedulerLoad(**row)])

    async def FlushCache(self, request: common_pb2.FlushCacheRequest,  # noqa: N802 - RPC name
                         context: grpc.aio.ServicerContext) -> common_pb2.FlushCacheResponse:
        if self.core.engine is not None:
            self.core.engine.flush_cache()
        return common_pb2.FlushCacheResponse(success=True, message="flushed")

    async def SubscribeKvEvents(self, request: common_pb2.SubscribeKvEventsRequest,  # noqa: N802 - RPC name
                                context: grpc.aio.ServicerContext) -> AsyncIterator[common_pb2.KvEventBatch]:
        engine = self.core.engine
        if engine is None or not self.core.kv_events:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this engine publishes no KV events")
            return
        log_ = engine.events
        subscription = log_.subscribe(request.start_sequence_number, engine.snapshot_events)
        try:
            for first in subscription.initial:
                yield kv_batch_message(first, engine.params.block_size, load_row(self.core, self.info.params))
            while True:
                batch = await subscription.queue.get()
                if batch is None:  # cut off (too slow, or a disconnect fault)
                    return
                yield kv_batch_message(batch, engine.params.block_size, load_row(self.core, self.info.params))
        finally:
            log_.unsubscribe(subscription.queue)

    async def GetTokenizer(self, request: common_pb2.GetTokenizerRequest,  # noqa: N802 - RPC name
                           context: grpc.aio.ServicerContext) -> AsyncIterator[common_pb2.GetTokenizerChunk]:
        for data, digest in bundle.chunks(self.info.bundle()):
            yield common_pb2.GetTokenizerChunk(data=data, sha256=digest)


def kv_batch_message(batch: Batch, block_size: int, load: dict[str, Any]) -> common_pb2.KvEventBatch:
    """One published batch as the proto's KvEventBatch (a snapshot is sent as a single chunk)."""
    events = []
    for event in batch.events:
        if event[0] == "stored":
            _, parent, blocks = event
            stored = common_pb2.KvBlocksStored(
                blocks=[common_pb2.KvBlock(block_hash=key, token_ids=tokens, block_size=block_size)
                        for key, tokens in blocks])
            if parent is not None:
                stored.parent_block_hash = parent
            events.append(common_pb2.KvCacheEvent(stored=stored))
        elif event[0] == "removed":
            events.append(common_pb2.KvCacheEvent(removed=common_pb2.KvBlocksRemoved(block_hashes=event[1])))
        else:
            events.append(common_pb2.KvCacheEvent(cleared=common_pb2.KvCacheCleared()))
    message = common_pb2.KvEventBatch(sequence_number=batch.seq, timestamp=time.time(), events=events, dp_rank=0)
    if batch.snapshot:
        stored_count = sum(len(e[2]) for e in batch.events if e[0] == "stored")
        message.snapshot.CopyFrom(common_pb2.KvSnapshotChunk(index=0, count=1, blocks=stored_count))
    message.load.CopyFrom(common_pb2.EngineLoad(
        running_requests=load["num_running_reqs"], waiting_requests=load["num_waiting_reqs"],
        waiting_uncached_tokens=load["num_waiting_uncached_tokens"], token_usage=load["token_usage"],
        gen_throughput=load["gen_throughput"]))
    return message
