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
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from shepherd.api.errors import GatewayError
from shepherd.config import GatewayConfig
from shepherd.observability.metrics import Metrics
from shepherd.policies.base import RoutingRequest
from shepherd.policies.registry import PolicyRegistry
from shepherd.providers.kinds import api_path, provider_kind
from shepherd.providers.refresh import ModelRefresher
from shepherd.request_keys import MODEL, REQUEST_ID, WORKER
from shepherd.routers.attempt import Attempt, count_attempt, count_request
from shepherd.routers.external.errors import AUTH_FAILED_CODE, provider_error_response
from shepherd.routers.external.headers import client_response_headers, provider_request_headers
from shepherd.routers.external.plans import Passthrough, Translation, client_api_for, plan_for
from shepherd.routers.external.relay import (
    read_whole,
    relay_stream,
    relay_whole,
    translate_stream,
    translate_whole,
)
from shepherd.routers.external.translate.common import TranslationError
from shepherd.routers.http.headers import REQUEST_ID_HEADER, ROUTED_WORKER_HEADER
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.upstream import UpstreamError, UpstreamPool, UpstreamTimeout
from shepherd.workers.worker import Worker

_BUSY_STATUSES = frozenset({529})  # Anthropic's "overloaded"

log = logging.getLogger("shepherd.router.external")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
_ERROR_BODY_LIMIT = 1 << 20


class _TryAnother(Exception):
    """This provider failed before anything reached the client; another one may serve the request."""

    def __init__(self, response: web.Response | None = None, error: GatewayError | None = None) -> None:
        super().__init__("retryable provider failure")
        self.response = response
        self.error = error


class ExternalRouter:
    def __init__(
        self,
        config: GatewayConfig,
        registry: WorkerRegistry,
        policies: PolicyRegistry,
        upstream: UpstreamPool,
        refresher: ModelRefresher,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._registry = registry
        self._policies = policies
        self._upstream = upstream
        self._refresher = refresher
        self._metrics = metrics

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
        request[MODEL] = model
        started = time.perf_counter()
        try:
            response = await self._route(request, upstream_path, raw_body, body, model)
        except GatewayError as exc:
            self._record(model, upstream_path, body, exc.status, started, exc.code)
            raise
        self._record(model, upstream_path, body, response.status, started, None)
        return response

    def _record(self, model: str, endpoint: str, body: Mapping[str, Any], status: int, started: float,
                error_code: str | None) -> None:
        if self._metrics is not None:
            count_request(self._metrics, ("external", "external", "external"), model, endpoint, body, status,
                          started, error_code)

    async def _route(
        self, request: web.Request, upstream_path: str, raw_body: bytes, body: Mapping[str, Any], model: str
    ) -> web.StreamResponse:
        workers = self._workers(model)
        if not workers:
            await self._refresher.refresh()
            workers = self._workers(model)
            if not workers:
                raise GatewayError(404, "model_not_found", f"The model `{model}` does not exist", param="model")
        policy = self._policies.for_model(_canonical(model, workers))
        routing = RoutingRequest(upstream_path, body, request.headers,
                                 routing_key_headers=self._config.policy_options.routing_key_headers)
        request_id: str = request[REQUEST_ID]
        plans: dict[str, Passthrough | Translation] = {}
        tried: set[Worker] = set()
        last: _TryAnother | None = None
        for attempt in range(1 + self._config.retry_max_retries):
            available = [w for w in workers if w.is_available and w not in tried]
            worker = policy.select(available, routing) if available else None
            if worker is None:
                break
            tried.add(worker)
            request[WORKER] = worker.url  # for the access log, the status page and the traffic recorder
            if self._metrics is not None:
                self._metrics.selections(worker.worker_type.value, worker.connection_mode, model, policy.name,
                                         worker.url).inc()
                if attempt:
                    self._metrics.retries("external", upstream_path).inc()
            final = not any(w.is_available and w not in tried for w in workers)
            try:
                return await self._attempt(request, worker, upstream_path, raw_body, body, model, plans,
                                           request_id, final=final)
            except _TryAnother as failure:
                last = failure
                log.info("request %s: provider %s failed for model %s; trying another provider", request_id,
                         worker.url, model)
        if last is not None:
            if last.response is not None:
                return last.response
            assert last.error is not None
            raise last.error
        raise GatewayError(503, "no_available_workers", f"No available provider for model `{model}`",
                           headers={"Retry-After": "1"})

    async def _attempt(
        self,
        request: web.Request,
        worker: Worker,
        path: str,
        raw_body: bytes,
        body: Mapping[str, Any],
        model: str,
        plans: dict[str, Passthrough | Translation],
        request_id: str,
        *,
        final: bool,
    ) -> web.StreamResponse:
        kind = provider_kind(worker.provider or "custom")
        upstream_model = worker.upstream_model(model)
        client_api = client_api_for(path)
        try:
            plan = plans.get(kind.name)  # built once per provider kind, reused when a retry lands on the same kind
            if plan is None:
                plan = plans[kind.name] = plan_for(path, kind, body, upstream_model)
            payload = plan.request(raw_body, body, upstream_model)
        except TranslationError as exc:
            raise GatewayError(400, "unsupported_by_provider", exc.message, param=exc.param) from None
        stream = bool(body.get("stream"))
        headers = provider_request_headers(kind, worker.api_key, request.headers, request_id,
                                           self._config.gateway_keys, client_api=client_api, stream=stream)
        target = api_path(worker.url, kind, plan.backend_path)
        timeout = self._config.request_timeout_secs
        # Anthropic's 529 means busy, like a 429: no reason for the breaker to stop trying the provider.
        attempt = Attempt(worker, busy_statuses=_BUSY_STATUSES)
        outcome = attempt.outcome
        try:
            try:
                upstream = await attempt.send(self._upstream, "POST", target, headers, payload, timeout)
            except UpstreamTimeout:
                raise self._transport_failure(final, 504, "call_upstream_timeout",
                                              f"The {kind.name} provider did not answer in time") from None
            except UpstreamError as exc:
                raise self._transport_failure(final, 502, "call_upstream_connection_failed",
                                              f"Could not reach the {kind.name} provider: {exc}") from None
            if upstream.status >= 400:
                error_body = await read_whole(upstream, _ERROR_BODY_LIMIT, kind.name, outcome)
                response = provider_error_response(
                    upstream.status, error_body, upstream.headers, client_api=client_api, backend_api=kind.api,
                    gateway_credentials=worker.api_key is not None, secrets=[worker.api_key],
                    model=model, provider=kind.name)
                self._log_error(worker, kind.name, model, upstream.status, response, request_id)
                response.headers[REQUEST_ID_HEADER] = request_id
                response.headers[ROUTED_WORKER_HEADER] = worker.url
                if upstream.status in RETRYABLE_STATUSES and not final:
                    raise _TryAnother(response=response)
                return response
            out_headers = client_response_headers(upstream.headers)
            out_headers[REQUEST_ID_HEADER] = request_id
            out_headers[ROUTED_WORKER_HEADER] = worker.url
            limit = self._config.max_payload_size
            if isinstance(plan, Passthrough):
                if upstream.content_length is not None:
                    return await relay_whole(upstream, out_headers, limit, kind.name, outcome)
                return await relay_stream(request, upstream, out_headers, client_api, kind.name, outcome)
            if stream:
                return await translate_stream(request, upstream, plan.stream(), out_headers, kind.name, outcome)
            return await translate_whole(upstream, plan, out_headers, limit, kind.name, outcome)
        except asyncio.CancelledError:
            outcome.client_gone = True
            raise
        finally:
            attempt.close()
            if self._metrics is not None:
                count_attempt(self._metrics, "external", worker, model, outcome)

    @staticmethod
    def _transport_failure(final: bool, status: int, code: str, message: str) -> Exception:
        error = GatewayError(status, code, message)
        return error if final else _TryAnother(error=error)

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
