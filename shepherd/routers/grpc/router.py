"""The gRPC router: the routing path for models served by token-level gRPC engines.

Per request: find the model's tokenizer, prepare (template, tokenize, sampling, stop rules), pick a
gRPC worker with the model's policy (which sees the rendered prompt and its token ids), open the
Generate stream (the common lifecycle retries on another worker until one starts), then build the
API's response from the streamed token ids. Whatever happens, an unfinished engine request is aborted.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from shepherd.config import GatewayConfig
from shepherd.errors import GatewayError
from shepherd.observability.metrics import Metrics
from shepherd.observability.tracing import Tracing
from shepherd.policies.registry import PolicyRegistry
from shepherd.request_keys import REQUEST_ID, USAGE
from shepherd.routers.common.execution import Execution, Lifecycle, PathLabels
from shepherd.routers.common.selection import Selector, overload_guard, routing_request
from shepherd.routers.grpc.chat_response import ChatResponder
from shepherd.routers.grpc.choices import token_counts
from shepherd.routers.grpc.completion_response import CompletionResponder
from shepherd.routers.grpc.embeddings import EMBEDDINGS_PATH, GrpcEmbeddings
from shepherd.routers.grpc.execution import EngineCall, GrpcExecutor
from shepherd.routers.grpc.generate_response import GenerateResponder
from shepherd.routers.grpc.messages_response import MessagesResponder
from shepherd.routers.grpc.meta import ResponseMeta
from shepherd.routers.grpc.output import OutputFactory, PlainOutputFactory
from shepherd.routers.grpc.prepare import (
    COUNT_TOKENS_PATH,
    MESSAGES_PATH,
    Prepared,
    messages_as_chat,
    prepare_chat,
    prepare_completion,
    prepare_generate,
    request_rid,
)
from shepherd.tokenizer.registry import TokenizerEntry, TokenizerRegistry
from shepherd.workers.grpc_pool import GrpcClientPool
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker

_PREFIXES = {"/v1/chat/completions": "chatcmpl-", "/v1/completions": "cmpl-", "/generate": "",
             MESSAGES_PATH: "msg_"}
LABELS = PathLabels("grpc", "regular", "grpc")


class GrpcRouter:
    def __init__(self, config: GatewayConfig, registry: WorkerRegistry, policies: PolicyRegistry,
                 pool: GrpcClientPool, tokenizers: TokenizerRegistry, outputs: OutputFactory | None = None,
                 metrics: Metrics | None = None, tracing: Tracing | None = None) -> None:
        self._config = config
        self._tokenizers = tokenizers
        self.selector = Selector(registry, policies, metrics, overload=overload_guard(config, metrics))
        self.lifecycle: Lifecycle[Worker] = Lifecycle.for_path(LABELS, config, metrics, tracing)
        self.executor = GrpcExecutor(pool)
        self.embeddings = GrpcEmbeddings(config, self.selector, self.lifecycle, pool, tokenizers)
        # The parser hook: tool-call / reasoning parsing plugs in here (see output.py).
        self.outputs: OutputFactory = outputs or PlainOutputFactory()

    def tokenizer_for(self, model: str | None) -> TokenizerEntry:
        entry = self._tokenizers.get(model)
        if entry is None:
            raise GatewayError(500, "tokenizer_not_found", f"No tokenizer is registered for model `{model}`")
        return entry

    async def route(
        self,
        request: web.Request,
        upstream_path: str,
        raw_body: bytes | None,
        body: Mapping[str, Any] | None,
        method: str = "POST",
    ) -> web.StreamResponse:
        if body is not None and upstream_path == EMBEDDINGS_PATH:
            return await self.embeddings.route(request, body)
        if body is not None and upstream_path == COUNT_TOKENS_PATH:
            return await self._count_tokens(body)
        if upstream_path not in _PREFIXES or body is None:
            raise GatewayError(501, "not_implemented", f"{request.path} is not served by gRPC workers")
        model = body.get("model")
        entry = self.tokenizer_for(model)
        model_name = model or entry.model
        if upstream_path == "/v1/chat/completions":
            prepared = await prepare_chat(body, entry, self.outputs, model_name)
        elif upstream_path == MESSAGES_PATH:
            prepared = await prepare_chat(messages_as_chat(body, model_name), entry, self.outputs, model_name)
        elif upstream_path == "/v1/completions":
            prepared = await prepare_completion(body, entry)
        else:
            prepared = await prepare_generate(body, entry)

        client_id: str = request[REQUEST_ID]
        engine_id = request_rid(body) or f"{client_id}-{os.urandom(4).hex()}"
        prefix = _PREFIXES[upstream_path]
        meta = ResponseMeta(response_id=client_id if client_id.startswith(prefix) else prefix + client_id,
                            request_id=client_id, model=model_name)
        routing = routing_request(request, request.path, body, self._config.policy_options, text=prepared.text,
                                  tokens=prepared.input_ids)
        selector = self.selector

        def select(tried: frozenset[Worker]) -> Worker:
            return selector.pick(selector.candidates(model, "grpc"), routing, tried, model)

        async def attempt(execution: Execution[Worker], worker: Worker, final: bool) -> web.StreamResponse:
            engine, first = await self.executor.open(execution, worker, engine_id, prepared, final)
            if prepared.sampling.stream:
                execution.first_byte()  # the engine's first tokens: the stream's first frame follows at once
            meta.fingerprint = engine.client.weight_version
            try:
                return await self._respond(request, upstream_path, prepared, meta, engine, first, engine_id)
            except asyncio.CancelledError:  # the client went away
                engine.attempt.client_left()
                raise
            finally:
                engine.close()  # aborts the engine request unless every answer arrived

        return await self.lifecycle.run(request, upstream_path, model, body, select, attempt, routing)

    async def _respond(self, request: web.Request, path: str, prepared: Prepared, meta: ResponseMeta,
                       engine: EngineCall, first: Any, engine_id: str) -> web.StreamResponse:
        responder: ChatResponder | CompletionResponder | GenerateResponder | MessagesResponder
        if path == "/v1/chat/completions":
            responder = ChatResponder(prepared, meta, self.outputs)
        elif path == MESSAGES_PATH:
            responder = MessagesResponder(prepared, meta, self.outputs, prepared.sampling.stop)
        elif path == "/v1/completions":
            responder = CompletionResponder(prepared, meta)
        else:
            responder = GenerateResponder(prepared, meta, engine_id)
        try:
            if prepared.sampling.stream:
                return await responder.stream(request, engine, first)
            return await responder.respond(engine, first)
        finally:
            if responder.choices:  # the access log's and the recorder's tokens (counted anyway: no parsing)
                request[USAGE] = token_counts(responder.choices)

    async def _count_tokens(self, body: Mapping[str, Any]) -> web.Response:
        """Anthropic's count_tokens: the templated prompt's length in the model's own tokens."""
        model = body.get("model")
        entry = self.tokenizer_for(model)
        model_name = model or entry.model
        prepared = await prepare_chat(messages_as_chat({**body, "stream": False}, model_name), entry, self.outputs,
                                      model_name)
        return web.Response(body=orjson.dumps({"input_tokens": len(prepared.input_ids)}),
                            content_type="application/json")

    async def close(self) -> None:
        await self.executor.close()
