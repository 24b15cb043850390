"""The simulated SGLang scheduler service (`sglang.grpc.scheduler.SglangScheduler`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from smg_grpc_proto import sglang_scheduler_pb2 as pb
from smg_grpc_proto import sglang_scheduler_pb2_grpc as pb_grpc

from shepherd.sim.grpc.common import CommonRpcs
from shepherd.sim.grpc.core import InjectedError, Piece, SimGenerate, logprobs_message


class SglangSim(CommonRpcs, pb_grpc.SglangSchedulerServicer):
    messages = pb

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[pb.GenerateResponse]:
        ids = list(request.tokenized.input_ids)
        params = request.sampling_params
        if not ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tokenized.input_ids must not be empty")
        if params.stop:  # the real worker runs with skip_tokenizer_init and cannot match strings
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "stop strings are not supported when the tokenizer is skipped")
        record: dict[str, Any] = {}
        if self.core.record_requests:
            record = json_format.MessageToDict(request, preserving_proto_field_name=True)
            record["input_ids"] = ids
            record["constraint"] = params.WhichOneof("constraint")
            record["metadata"] = {key: str(value) for key, value in context.invocation_metadata() or ()}
        top = request.top_logprobs_num if request.return_logprob else None
        generate = SimGenerate(
            request_id=request.request_id, input_ids=ids,
            max_new=params.max_new_tokens if params.HasField("max_new_tokens") else None,
            stop_token_ids=list(params.stop_token_ids), ignore_eos=params.ignore_eos, n=params.n or 1,
            stream=request.stream, logprobs=top, require_reasoning=request.require_reasoning, record=record)
        try:
            async for piece in self.core.generate(generate):
                if piece.outcome is None:
                    if request.stream:
                        yield pb.GenerateResponse(request_id=request.request_id, chunk=self._chunk(piece, top))
                else:
                    yield pb.GenerateResponse(request_id=request.request_id, complete=self._complete(piece, top))
        except InjectedError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))

    @staticmethod
    def _chunk(piece: Piece, top: int | None) -> pb.GenerateStreamChunk:
        chunk = pb.GenerateStreamChunk(token_ids=piece.token_ids, prompt_tokens=piece.prompt_tokens,
                                       completion_tokens=piece.completion_tokens, cached_tokens=piece.cached_tokens,
                                       reasoning_tokens=piece.reasoning_tokens, index=piece.index)
        if top is not None:
            chunk.output_logprobs.CopyFrom(logprobs_message(pb, piece.token_ids, top))
        return chunk

    @staticmethod
    def _complete(piece: Piece, top: int | None) -> pb.GenerateComplete:
        outcome = piece.outcome
        assert outcome is not None
        complete = pb.GenerateComplete(output_ids=piece.all_ids, finish_reason=outcome.finish_reason,
                                       prompt_tokens=piece.prompt_tokens, completion_tokens=piece.completion_tokens,
                                       cached_tokens=piece.cached_tokens, reasoning_tokens=piece.reasoning_tokens,
                                       index=piece.index)
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
        found = self.core.abort([request.request_id])
        return pb.AbortResponse(success=True, message="aborted" if found else "not running")

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
                           ) -> pb.GetModelInfoResponse:
        info, tokenizer = self.info, self.core.tokenizer
        return pb.GetModelInfoResponse(
            model_path=info.tokenizer_path, tokenizer_path=info.tokenizer_path, is_generation=True,
            weight_version=info.weight_version, served_model_name=info.model, max_context_length=info.max_model_len,
            vocab_size=tokenizer.vocab_size, model_type="qwen3", eos_token_ids=list(tokenizer.eos_token_ids),
            pad_token_id=tokenizer.eos_token_ids[-1] if tokenizer.eos_token_ids else 0,
            max_req_input_len=info.max_model_len - 1, architectures=["Qwen3ForCausalLM"],
            default_sampling_params_json=info.default_sampling_params_json)

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
                            ) -> pb.GetServerInfoResponse:
        info, params = self.info, self.info.params
        response = pb.GetServerInfoResponse(
            active_requests=self.core.stats.in_flight, uptime_seconds=time.time() - self.core.started_at,
            sglang_version="shepherd-sim", server_type="grpc", max_total_num_tokens=params.kv_capacity_tokens)
        response.server_args.update({"model_path": info.tokenizer_path, "served_model_name": info.model,
                                     "tensor_parallel_size": 1, "data_parallel_size": 1,
                                     "max_running_requests": params.max_running, "page_size": params.block_size,
                                     "context_length": info.max_model_len})
        response.scheduler_info.update({"max_total_num_tokens": params.kv_capacity_tokens})
        return response
