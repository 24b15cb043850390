"""The simulated vLLM engine service (`vllm.grpc.engine.VllmEngine`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from smg_grpc_proto import vllm_engine_pb2 as pb
from smg_grpc_proto import vllm_engine_pb2_grpc as pb_grpc

from shepherd.sim.grpc.common import CommonRpcs
from shepherd.sim.grpc.core import InjectedError, Piece, SimGenerate, logprobs_message


class VllmSim(CommonRpcs, pb_grpc.VllmEngineServicer):
    messages = pb

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[pb.GenerateResponse]:
        if request.WhichOneof("input") == "text":
            ids = self.core.tokenizer.encode(request.text, True)
        else:
            ids = list(request.tokenized.input_ids)
        if not ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the prompt must not be empty")
        params = request.sampling_params
        record: dict[str, Any] = {}
        if self.core.record_requests:
            record = json_format.MessageToDict(request, preserving_proto_field_name=True)
            record["input_ids"] = ids
            record["constraint"] = params.WhichOneof("constraint")
            record["metadata"] = {key: str(value) for key, value in context.invocation_metadata() or ()}
        top = params.logprobs if params.HasField("logprobs") else None
        generate = SimGenerate(
            request_id=request.request_id, input_ids=ids,
            max_new=params.max_tokens if params.HasField("max_tokens") else None,
            stop_token_ids=list(params.stop_token_ids), stop_strings=list(params.stop),
            ignore_eos=params.ignore_eos, n=params.n or 1, seed=params.seed if params.HasField("seed") else None,
            stream=request.stream, logprobs=top, record=record)
        sent_prompt: set[int] = set()
        counted = [0] * generate.n
        try:
            async for piece in self.core.generate(generate):
                if piece.outcome is None:
                    if request.stream:
                        yield pb.GenerateResponse(chunk=self._chunk(piece, top, sent_prompt, counted))
                else:
                    yield pb.GenerateResponse(complete=self._complete(piece, top))
        except InjectedError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))

    @staticmethod
    def _chunk(piece: Piece, top: int | None, sent_prompt: set[int], counted: list[int]) -> pb.GenerateStreamChunk:
        # vLLM counts are deltas: the prompt once per choice, then the new tokens of each chunk.
        first = piece.index not in sent_prompt
        sent_prompt.add(piece.index)
        delta = piece.completion_tokens - counted[piece.index]
        counted[piece.index] = piece.completion_tokens
        chunk = pb.GenerateStreamChunk(token_ids=piece.token_ids, prompt_tokens=piece.prompt_tokens if first else 0,
                                       completion_tokens=delta, cached_tokens=piece.cached_tokens if first else 0,
                                       index=piece.index)
        if top is not None:
            chunk.output_logprobs.CopyFrom(logprobs_message(pb, piece.token_ids, top))
        return chunk

    @staticmethod
    def _complete(piece: Piece, top: int | None) -> pb.GenerateComplete:
        outcome = piece.outcome
        assert outcome is not None
        complete = pb.GenerateComplete(output_ids=piece.all_ids, finish_reason=outcome.finish_reason,
                                       prompt_tokens=piece.prompt_tokens, completion_tokens=piece.completion_tokens,
                                       cached_tokens=piece.cached_tokens, index=piece.index)
        if outcome.matched_token_id is not None:
            complete.matched_token_id = outcome.matched_token_id
        elif outcome.matched_stop_str is not None:
            complete.matched_stop_str = outcome.matched_stop_str
        if top is not None:
            complete.output_logprobs.CopyFrom(logprobs_message(pb, piece.all_ids, top))
        return complete

    async def HealthCheck(self, request: pb.HealthCheckRequest, context: grpc.aio.ServicerContext
                          ) -> pb.HealthCheckResponse:
        healthy = self.core.faults.healthy
        return pb.HealthCheckResponse(healthy=healthy, message="ok" if healthy else "unhealthy (fault)")

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        self.core.abort(list(request.request_ids))
        return pb.AbortResponse()

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
                           ) -> pb.GetModelInfoResponse:
        info, tokenizer = self.info, self.core.tokenizer
        return pb.GetModelInfoResponse(
            model_path=info.tokenizer_path, tokenizer_path=info.tokenizer_path, is_generation=True,
            served_model_name=info.model, max_context_length=info.max_model_len, vocab_size=tokenizer.vocab_size,
            model_type="qwen3", architectures=["Qwen3ForCausalLM"], eos_token_ids=list(tokenizer.eos_token_ids),
            max_req_input_len=info.max_model_len - 1, default_sampling_params_json=info.default_sampling_params_json)

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
                            ) -> pb.GetServerInfoResponse:
        params = self.info.params
        return pb.GetServerInfoResponse(active_requests=self.core.stats.in_flight,
                                        uptime_seconds=time.time() - self.core.started_at, server_type="vllm-grpc",
                                        data_parallel_size=1, block_size=params.block_size,
                                        max_num_seqs=params.max_running)
