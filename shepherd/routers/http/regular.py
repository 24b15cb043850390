"""The regular HTTP router: pick a worker, forward the request, relay the answer.

Bodies travel as the bytes the client sent; the parsed JSON is only read for routing. A response
with a Content-Length is relayed whole; anything else (SSE) is relayed chunk by chunk as it arrives.
Retries, deadlines, verdicts and metrics are the common lifecycle's (routers/common).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from shepherd.config import GatewayConfig
from shepherd.errors import GatewayError
from shepherd.observability.metrics import Metrics
from shepherd.observability.tracing import Tracing
from shepherd.policies.registry import PolicyRegistry
from shepherd.routers.common.execution import Execution, Lifecycle, PathLabels
from shepherd.routers.common.headers import client_response_headers, routed_headers, upstream_request_headers
from shepherd.routers.common.relay import no_answer, read_answer, relay_stream, relay_whole, who
from shepherd.routers.common.retry import RETRYABLE_STATUSES, RetryableFailure
from shepherd.routers.common.selection import Selector, overload_guard, routing_request
from shepherd.routers.grpc.prepare import chat_prompt_ids
from shepherd.routers.http.messages import (
    ANTHROPIC_PATHS,
    COUNT_TOKENS_PATH,
    count_tokens_missing,
    lacks,
    learn_missing,
    messages_via_chat,
    route_missing,
)
from shepherd.tokenizer.registry import TokenizerRegistry
from shepherd.transport.base import Transport
from shepherd.transport.errors import UpstreamError
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker

LABELS = PathLabels("http", "regular", "http")
CHAT_PATH = "/v1/chat/completions"


class HttpRouter:
    def __init__(
        self,
        config: GatewayConfig,
        registry: WorkerRegistry,
        policies: PolicyRegistry,
        transport: Transport,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._config = config
        self._transport = transport
        self.selector = Selector(registry, policies, metrics, overload=overload_guard(config, metrics))
        self.lifecycle: Lifecycle[Worker] = Lifecycle.for_path(LABELS, config, metrics, tracing)
        # Set when HTTP workers publish KV events: their model's tokenizer renders a chat prompt into the
        # token ids the engine will prefill, for a policy that matches those against the engine's blocks.
        self.routing_tokenizers: TokenizerRegistry | None = None

    async def route(
        self,
        request: web.Request,
        upstream_path: str,
        raw_body: bytes | None,
        body: Mapping[str, Any] | None,
        method: str = "POST",
    ) -> web.StreamResponse:
        """Forward the request to a worker chosen for its model, retrying elsewhere where safe."""
        model = body.get("model") if body else None
        tokens = (await self._routing_tokens(model, upstream_path, body)
                  if self.routing_tokenizers is not None else None)
        routing = routing_request(request, upstream_path, body, self._config.policy_options, tokens=tokens)
        selector = self.selector

        def select(tried: frozenset[Worker]) -> Worker:
            return selector.pick(selector.candidates(model, "http"), routing, tried, model)

        anthropic = upstream_path in ANTHROPIC_PATHS and body is not None

        async def attempt(execution: Execution[Worker], worker: Worker, final: bool) -> web.StreamResponse:
            if anthropic and lacks(worker, upstream_path):
                return await self._without_messages(execution, worker, upstream_path, body, final)
            payload = raw_body
            if worker.dp_rank is not None and body is not None:
                # A data-parallel rank is addressed in the body: the one case the bytes change.
                payload = orjson.dumps({**body, "data_parallel_rank": worker.dp_rank})
            response = await self.forward(execution, worker, method, upstream_path, payload, final,
                                          detect_missing=anthropic)
            if response is None:  # the engine has no such route: learned, then served without it
                learn_missing(worker, upstream_path)
                return await self._without_messages(execution, worker, upstream_path, body, final)
            return response

        return await self.lifecycle.run(request, upstream_path, model, body, select, attempt, routing)

    async def _routing_tokens(self, model: Any, path: str, body: Mapping[str, Any] | None) -> list[int] | None:
        tokenizers = self.routing_tokenizers
        if tokenizers is None or body is None or path != CHAT_PATH or not isinstance(model, str):
            return None
        if not self.selector.policies.for_model(model).wants_tokens():
            return None
        entry = tokenizers.get(model)
        if entry is None:
            return None
        try:
            return await chat_prompt_ids(body, entry, model)
        except GatewayError:  # not a chat this template renders: the engine will say so; route without ids
            return None

    async def _without_messages(self, execution: Execution[Any], worker: Worker, path: str,
                                body: Mapping[str, Any] | None, final: bool) -> web.StreamResponse:
        assert body is not None
        if path == COUNT_TOKENS_PATH:
            raise count_tokens_missing(worker)
        return await messages_via_chat(self._transport, self._config.gateway_keys, execution, worker, body, final)

    async def forward(self, execution: Execution[Any], worker: Worker, method: str, path: str,
                      payload: bytes | None, final: bool, detect_missing: bool = False) -> web.StreamResponse | None:
        """One attempt: send the request to `worker` and relay its answer. With `detect_missing`, None
        when the engine answered that it has no such route (nothing reached the client)."""
        request = execution.request
        headers = upstream_request_headers(request.headers, execution.request_id, worker.api_key,
                                           self._config.gateway_keys, has_body=payload is not None)
        attempt = execution.attempt(worker)
        try:
            try:
                upstream = await attempt.send(self._transport, method, path, headers, payload, execution.remaining())
            except UpstreamError as exc:
                raise no_answer(exc, final, who(attempt)) from None
            out = routed_headers(client_response_headers(upstream.headers), execution.request_id, worker.url)
            if detect_missing and upstream.status in (404, 405):
                answer = await read_answer(attempt, execution.lifecycle.max_response_bytes, who(attempt), final)
                if route_missing(upstream.status, answer):
                    return None
                return web.Response(status=upstream.status, body=answer, headers=out)
            if upstream.status in RETRYABLE_STATUSES and not final:
                answer = await read_answer(attempt, execution.lifecycle.max_response_bytes, who(attempt), final)
                raise RetryableFailure(
                    GatewayError(upstream.status, "upstream_error", f"{who(attempt)} answered {upstream.status}"),
                    web.Response(status=upstream.status, body=answer, headers=out))
            if upstream.content_length is not None:
                return await relay_whole(execution, attempt, out, final)
            return await relay_stream(execution, attempt, out)
        except asyncio.CancelledError:  # the client went away
            attempt.client_left()
            raise
        finally:
            attempt.close()
