"""The router for external providers: pick a provider worker for the model, call it in its own API.

Per request: find the external workers serving the model (refreshing the providers' model lists
once on a miss), let the model's policy choose among them, build the provider's request (as the
client sent it when the provider speaks the client's API, translated otherwise), and answer in the
client's API. A provider that answers 429 or 5xx, or cannot be reached, before anything reached the
client hands the request to another provider of the same model, when there is one left to try.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from shepherd.config import GatewayConfig
from shepherd.errors import GatewayError
from shepherd.observability.metrics import Metrics
from shepherd.observability.tracing import Tracing
from shepherd.policies.registry import PolicyRegistry
from shepherd.providers.kinds import api_path, provider_kind
from shepherd.providers.refresh import ModelRefresher
from shepherd.routers.common.execution import Execution, Lifecycle, PathLabels
from shepherd.routers.common.headers import routed_headers
from shepherd.routers.common.relay import no_answer, read_answer, relay_stream, relay_whole, who
from shepherd.routers.common.retry import error_answer
from shepherd.routers.common.selection import Selector, routing_request
from shepherd.routers.external.errors import AUTH_FAILED_CODE, provider_error_response
from shepherd.routers.external.headers import client_response_headers, provider_request_headers
from shepherd.routers.external.plans import Passthrough, Translation, client_api_for, plan_for
from shepherd.routers.external.relay import translate_stream, translate_whole
from shepherd.routers.external.translate.common import TranslationError
from shepherd.transport.base import Transport
from shepherd.transport.errors import UpstreamError
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker

_BUSY_STATUSES = frozenset({529})  # Anthropic's "overloaded"
_ERROR_BODY_LIMIT = 1 << 20
LABELS = PathLabels("external", "external", "external")

log = logging.getLogger("shepherd.router.external")


class ExternalRouter:
    def __init__(
        self,
        config: GatewayConfig,
        registry: WorkerRegistry,
        policies: PolicyRegistry,
        transport: Transport,
        refresher: ModelRefresher,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._config = config
        self._registry = registry
        self._policies = policies
        self._transport = transport
        self._refresher = refresher
        # A provider that just refused is not asked again for the same request.
        self.selector = Selector(registry, policies, metrics, repeat_when_all_tried=False)
        self.lifecycle: Lifecycle[Worker] = Lifecycle.for_path(LABELS, config, metrics, tracing)

    def _workers(self, model: str) -> list[Worker]:
        return [w for w in self._registry.for_model(model) if w.connection_mode == "external"]

    async def route(
        self,
        request: web.Request,
        upstream_path: str,
        raw_body: bytes | None,
        body: Mapping[str, Any] | None,
        method: str = "POST",
    ) -> web.StreamResponse:
        model = body.get("model") if body else None
        if method != "POST" or body is None or raw_body is None or not isinstance(model, str) or not model:
            raise GatewayError(400, "model_required", "Requests to external providers must name a 'model'",
                               param="model")
        workers = self._workers(model)
        if not workers:
            await self._refresher.refresh()
            workers = self._workers(model)
        if not workers:
            self.lifecycle.count_refusal(upstream_path, model, body, 404, "model_not_found")
            raise GatewayError(404, "model_not_found", f"The model `{model}` does not exist", param="model")
        canonical = _canonical(model, workers)
        policy = self._policies.for_model(canonical)
        routing = routing_request(request, upstream_path, body, self._config.policy_options)
        plans: dict[str, Passthrough | Translation] = {}  # one per provider kind, reused by retries

        def select(tried: frozenset[Worker]) -> Worker:
            return self.selector.pick(workers, routing, tried, model, policy, what="providers")

        async def attempt(execution: Execution[Worker], worker: Worker, final: bool) -> web.StreamResponse:
            return await self._attempt(execution, worker, upstream_path, raw_body, body, model, plans, final)

        return await self.lifecycle.run(request, upstream_path, model, body, select, attempt)

    async def _attempt(
        self,
        execution: Execution[Worker],
        worker: Worker,
        path: str,
        raw_body: bytes,
        body: Mapping[str, Any],
        model: str,
        plans: dict[str, Passthrough | Translation],
        final: bool,
    ) -> web.StreamResponse:
        request, request_id = execution.request, execution.request_id
        kind = provider_kind(worker.provider or "custom")
        upstream_model = worker.upstream_model(model)
        client_api = client_api_for(path)
        try:
            plan = plans.get(kind.name)
            if plan is None:
                plan = plans[kind.name] = plan_for(path, kind, body, upstream_model)
            payload = plan.request(raw_body, body, upstream_model)
        except TranslationError as exc:
            raise GatewayError(400, "unsupported_by_provider", exc.message, param=exc.param) from None
        stream = bool(body.get("stream"))
        headers = provider_request_headers(kind, worker.api_key, request.headers, request_id,
                                           self._config.gateway_keys, client_api=client_api, stream=stream)
        target = api_path(worker.url, kind, plan.backend_path)
        # Anthropic's 529 means busy, like a 429: no reason for the breaker to stop trying the provider.
        attempt = execution.attempt(worker, busy_statuses=_BUSY_STATUSES)
        try:
            try:
                upstream = await attempt.send(self._transport, "POST", target, headers, payload,
                                              execution.remaining())
            except UpstreamError as exc:
                raise no_answer(exc, final, who(attempt)) from None
            if upstream.status >= 400:
                error_body = await read_answer(attempt, _ERROR_BODY_LIMIT, who(attempt), final)
                response = provider_error_response(
                    upstream.status, error_body, upstream.headers, client_api=client_api, backend_api=kind.api,
                    gateway_credentials=worker.api_key is not None, secrets=[worker.api_key],
                    model=model, provider=kind.name)
                self._log_error(worker, kind.name, model, upstream.status, response, request_id)
                routed_headers(response.headers, request_id, worker.url)  # type: ignore[arg-type]
                return error_answer(response, upstream.status, final, who(attempt))
            out = routed_headers(client_response_headers(upstream.headers), request_id, worker.url)
            if isinstance(plan, Passthrough):
                if upstream.content_length is not None:
                    return await relay_whole(execution, attempt, out, final)
                return await relay_stream(execution, attempt, out)
            if stream:
                return await translate_stream(execution, attempt, plan.stream(), out)
            return await translate_whole(execution, attempt, plan, out, final)
        except asyncio.CancelledError:
            attempt.client_left()
            raise
        finally:
            attempt.close()

    @staticmethod
    def _log_error(worker: Worker, provider: str, model: str, status: int, response: web.Response,
                   request_id: str) -> None:
        if response.headers.get("X-SMG-Error-Code") == AUTH_FAILED_CODE:
            log.warning("request %s: the %s provider at %s rejected the gateway's credentials for model %s "
                        "(HTTP %d); check the worker's API key", request_id, provider, worker.url, model, status)
        else:
            log.info("request %s: the %s provider at %s answered HTTP %d for model %s", request_id, provider,
                     worker.url, status, model)


def _canonical(model: str, workers: Sequence[Worker]) -> str:
    """The listed id a requested name stands for, so an alias shares its model's policy."""
    for worker in workers:
        if model in worker.model_ids:
            return model
    return workers[0].upstream_model(model)
