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

    async def GetTokenizer(self, request: common_pb2.GetTokenizerRequest,  # noqa: N802 - RPC name
                           context: grpc.aio.ServicerContext) -> AsyncIterator[common_pb2.GetTokenizerChunk]:
        for data, digest in bundle.chunks(self.info.bundle()):
            yield common_pb2.GetTokenizerChunk(data=data, sha256=digest)
