"""`/v1/embeddings` on gRPC workers: tokenize here, one Embed RPC per input, OpenAI's response shape.

Both engine services in smg-grpc-proto (SGLang's scheduler, vLLM's engine) have a unary
`Embed(EmbedRequest{request_id, tokenized}) -> {embedding, prompt_tokens, embedding_dim}`. The inputs
of one request go to one worker together, under the common lifecycle: a worker that fails before
answering (unavailable, busy, a server error) hands the whole request to another. An engine that
does not serve embeddings (a generation model; the RPC answers UNIMPLEMENTED) gives the client a
501 that says so.
"""

from __future__ import annotations

import array
import asyncio
import base64
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import orjson
from aiohttp import web

from shepherd.config import GatewayConfig
from shepherd.errors import GatewayError
from shepherd.headers import REQUEST_ID_HEADER, ROUTED_WORKER_HEADER
from shepherd.request_keys import REQUEST_ID
from shepherd.routers.common.attempt import Attempt
from shepherd.routers.common.execution import Execution, Lifecycle
from shepherd.routers.common.relay import failure
from shepherd.routers.common.retry import RETRYABLE_STATUSES
from shepherd.routers.common.selection import Selector, routing_request
from shepherd.routers.grpc.errors import worker_error
from shepherd.routers.grpc.params import invalid, token_ids
from shepherd.tokenizer.registry import TokenizerEntry, TokenizerRegistry
from shepherd.workers.grpc_pool import GrpcClientPool
from shepherd.workers.worker import Worker

EMBEDDINGS_PATH = "/v1/embeddings"
MAX_INPUTS = 2048  # OpenAI's own limit on inputs per request
_NO_ANSWER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN})


def embedding_inputs(body: Mapping[str, Any]) -> list[str | list[int]]:
    """`input` as a list of texts or token-id lists (OpenAI's four spellings)."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise invalid("'input' must be a string, a list of strings, or token ids", "input")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [token_ids(value, "input")]
    if len(value) > MAX_INPUTS:
        raise invalid(f"'input' holds more than {MAX_INPUTS} items", "input")
    inputs: list[str | list[int]] = []
    for item in value:
        if isinstance(item, str):
            inputs.append(item)
        elif isinstance(item, list) and item:
            inputs.append(token_ids(item, "input"))
        else:
            raise invalid("each 'input' item must be a string or a non-empty list of token ids", "input")
    return inputs


def _encoding(body: Mapping[str, Any]) -> str:
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64", None):
        raise invalid("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    if body.get("dimensions") is not None:
        raise invalid("'dimensions' is not supported on gRPC workers: the engine's Embed RPC returns the model's "
                      "own size", "dimensions")
    return encoding or "float"


class GrpcEmbeddings:
    def __init__(self, config: GatewayConfig, selector: Selector, lifecycle: Lifecycle[Worker],
                 pool: GrpcClientPool, tokenizers: TokenizerRegistry) -> None:
        self._config = config
        self._selector = selector
        self._lifecycle = lifecycle
        self._pool = pool
        self._tokenizers = tokenizers

    async def route(self, request: web.Request, body: Mapping[str, Any]) -> web.StreamResponse:
        model = body.get("model")
        entry = self._tokenizers.get(model)
        if entry is None:
            raise GatewayError(500, "tokenizer_not_found", f"No tokenizer is registered for model `{model}`")
        encoding = _encoding(body)
        inputs = embedding_inputs(body)
        tokenized = [await self._tokenize(entry, item) for item in inputs]
        texts = [item if isinstance(item, str) else "" for item in inputs]
        model_name = model or entry.model
        request_id: str = request[REQUEST_ID]
        routing = routing_request(request, request.path, body, self._config.policy_options, text=" ".join(texts),
                                  tokens=tokenized[0])
        selector = self._selector

        def select(tried: frozenset[Worker]) -> Worker:
            return selector.pick(selector.candidates(model, "grpc"), routing, tried, model)

        async def attempt(execution: Execution[Worker], worker: Worker, final: bool) -> web.StreamResponse:
            vectors, prompt_tokens = await self._embed(execution, worker, request_id, tokenized, texts, final)
            data = [{"object": "embedding", "index": i, "embedding": _encoded(vector, encoding)}
                    for i, vector in enumerate(vectors)]
            answer = {"object": "list", "data": data, "model": model_name,
                      "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
            return web.Response(body=orjson.dumps(answer), content_type="application/json",
                                headers={REQUEST_ID_HEADER: request_id, ROUTED_WORKER_HEADER: worker.url})

        return await self._lifecycle.run(request, EMBEDDINGS_PATH, model, body, select, attempt)

    @staticmethod
    async def _tokenize(entry: TokenizerEntry, item: str | list[int]) -> list[int]:
        if isinstance(item, list):
            return item
        ids = await entry.encode_async(item, True)
        if not ids:
            raise invalid("an 'input' item is empty", "input")
        return ids

    async def _embed(self, execution: Execution[Worker], worker: Worker, request_id: str,
                     tokenized: Sequence[list[int]], texts: Sequence[str], final: bool
                     ) -> tuple[list[list[float]], int]:
        client = self._pool.get(worker.url)
        if client is None:  # removed while we chose it
            raise failure(final, 503, "no_available_workers", f"Worker {worker.url} is going away")
        attempt = execution.attempt(worker)
        try:
            timeout = execution.remaining()
            prefix = f"{request_id}-{os.urandom(4).hex()}"
            calls = [client.embed(f"{prefix}-{i}", ids, text, timeout, api_key=worker.api_key)
                     for i, (ids, text) in enumerate(zip(tokenized, texts, strict=True))]
            try:
                answers = await asyncio.gather(*calls)
            except grpc.aio.AioRpcError as exc:
                raise _failure(attempt, exc, client.runtime.name, final) from None
            except asyncio.CancelledError:
                attempt.client_left()
                raise
            attempt.answered(200)
            attempt.outcome.complete = True
            execution.first_byte()
            return [vector for vector, _ in answers], sum(count for _, count in answers)
        finally:
            attempt.close()

def _failure(attempt: Attempt, exc: grpc.aio.AioRpcError, runtime: str, final: bool) -> Exception:
    """The client's error for a failed Embed RPC (retryable where another worker may answer)."""
    code, url = exc.code(), attempt.worker.url
    if code is grpc.StatusCode.UNIMPLEMENTED:
        attempt.answered(501)
        return GatewayError(501, "embeddings_not_supported",
                            f"Worker {url} ({runtime} engine) does not serve embeddings: its Embed RPC answered "
                            f"UNIMPLEMENTED ({exc.details() or 'no details'}); route embeddings to an embedding model")
    error = worker_error(exc, url)
    if code in _NO_ANSWER:
        attempt.failed()
    else:
        attempt.answered(error.status)
    if error.status in RETRYABLE_STATUSES:
        return failure(final, error.status, error.code, error.message)
    return error


def _encoded(vector: list[float], encoding: str) -> Any:
    if encoding == "base64":  # what the openai SDK asks for by default: little-endian float32
        return base64.b64encode(array.array("f", vector).tobytes()).decode()
    return vector
