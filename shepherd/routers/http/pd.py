"""Prefill/decode disaggregation over HTTP: one request, two workers.

SGLang style (parallel): the gateway picks a prefill and a decode worker (each with its own policy),
adds `bootstrap_host`, `bootstrap_port` and a fresh random `bootstrap_room` (one per batch item) to the
body, and sends that same body to both at once. The prefill hands its KV to the decode side through
the room; the client gets the decode worker's answer. The prefill's answer is drained first: it says
whether the hand-over can succeed, and with `return_logprob` its prompt logprobs are prepended to the
decode's.

vLLM style (sequential, for vLLM prefill workers or `--pd-transfer vllm`): the prefill runs first with
one output token and `kv_transfer_params` asking for a remote decode; the decode then runs with the
`kv_transfer_params` the prefill returned (NIXL), or ones the gateway minted (Mooncake): see
kv_connector.py.

PD admission (pd_admission.py) may hold a request before the pair is dispatched: for a prefill slot on
its prefill worker (held until the prefill has answered) and for room in the decode engine's running
window (held until the answer is relayed).

Either way a failure before any byte reached the client is retried on a fresh pair (with fresh rooms,
through the common lifecycle); the other half of a failed pair is cancelled, never left running.
Each leg carries its own worker's API key.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from shepherd.config import GatewayConfig
from shepherd.errors import GatewayError
from shepherd.middleware.slots import Slot
from shepherd.observability.metrics import Metrics
from shepherd.observability.tracing import Tracing
from shepherd.policies.base import RoutingRequest
from shepherd.policies.registry import PolicyRegistry
from shepherd.routers.common.attempt import Attempt
from shepherd.routers.common.execution import Execution, Lifecycle, PathLabels
from shepherd.routers.common.headers import client_response_headers, routed_headers, upstream_request_headers
from shepherd.routers.common.relay import failure, no_answer, read_answer, relay_stream, relay_whole
from shepherd.routers.common.retry import RETRYABLE_STATUSES, RetryableFailure
from shepherd.routers.common.selection import Selector, overload_guard, routing_request
from shepherd.routers.http.kv_connector import handoff_for
from shepherd.routers.http.pd_admission import PdAdmission
from shepherd.transport.base import Transport
from shepherd.transport.errors import UpstreamError
from shepherd.workers.registry import WorkerRegistry
from shepherd.workers.worker import Worker, WorkerType

log = logging.getLogger("shepherd.pd")

MAX_ROOM = 2**63 - 1
LABELS = PathLabels("http", "pd", "http")

Pair = tuple[Worker, Worker]  # (prefill, decode)


class PdRouter:
    def __init__(
        self,
        config: GatewayConfig,
        registry: WorkerRegistry,
        prefill_policies: PolicyRegistry,
        decode_policies: PolicyRegistry,
        transport: Transport,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._config = config
        self._registry = registry
        overload = overload_guard(config, metrics)
        self._prefill = Selector(registry, prefill_policies, metrics, overload=overload)
        self._decode = Selector(registry, decode_policies, metrics, overload=overload)
        self._transport = transport
        self.admission = PdAdmission(config.pd_admission,
                                     metrics.overload_shed("dispatch").inc if metrics is not None else None)
        self._rng = random.SystemRandom()
        self.lifecycle: Lifecycle[Pair] = Lifecycle.for_path(LABELS, config, metrics, tracing)

    # -- selection ----------------------------------------------------------------------------

    def _pick(self, selector: Selector, kind: WorkerType, model: str | None, routing: RoutingRequest,
              tried: frozenset[Worker]) -> Worker:
        # A model no worker of this kind lists falls back to every worker of the kind (engines in PD
        # mode often report no model until they serve one).
        candidates = self._registry.for_model(model, kind) or self._registry.of_type(kind)
        if kind is WorkerType.PREFILL:  # a prefill worker with a free admission slot, while there is one
            roomy = tuple(w for w in candidates if self.admission.prefill_room(w))
            if any(w.is_available and w not in tried for w in roomy):
                candidates = roomy
        return selector.pick(candidates, routing, tried, model, what=f"{kind.value} workers")

    def _sequential(self, prefill: Worker) -> bool:
        mode = self._config.pd_transfer
        return mode == "vllm" or (mode == "auto" and prefill.runtime_type == "vllm")

    # -- entry point --------------------------------------------------------------------------

    async def route(
        self,
        request: web.Request,
        upstream_path: str,
        raw_body: bytes | None,
        body: Mapping[str, Any] | None,
        method: str = "POST",
    ) -> web.StreamResponse:
        if body is None:
            return await self._engine_info(request, upstream_path)
        model = body.get("model")
        routing = routing_request(request, upstream_path, body, self._config.policy_options)

        def select(tried: frozenset[Worker]) -> Pair:
            return (self._pick(self._prefill, WorkerType.PREFILL, model, routing, tried),
                    self._pick(self._decode, WorkerType.DECODE, model, routing, tried))

        async def attempt(execution: Execution[Pair], pair: Pair, final: bool) -> web.StreamResponse:
            prefill, decode = pair
            prefilling = await self.admission.prefill(prefill, execution.remaining())
            try:
                decoding = await self.admission.decode(decode, execution.remaining())
                try:
                    if self._sequential(prefill):
                        return await self._prefill_then_decode(execution, upstream_path, body, prefill, decode,
                                                               final, prefilling)
                    return await self._both_at_once(execution, upstream_path, body, prefill, decode, final,
                                                    prefilling)
                finally:
                    decoding.release()
            finally:
                prefilling.release()

        return await self.lifecycle.run(request, upstream_path, model, body, select, attempt)

    def _headers(self, execution: Execution[Pair], worker: Worker) -> dict[str, str]:
        """Each leg carries its own worker's key (prefill and decode fleets may differ)."""
        return upstream_request_headers(execution.request.headers, execution.request_id, worker.api_key,
                                        self._config.gateway_keys)

    # -- SGLang: parallel dispatch ------------------------------------------------------------

    async def _both_at_once(self, execution: Execution[Pair], path: str, body: Mapping[str, Any], prefill: Worker,
                            decode: Worker, final: bool, prefilling: Slot) -> web.StreamResponse:
        payload = orjson.dumps(self._with_bootstrap(path, body, prefill))
        timeout = execution.remaining()
        legs = (execution.attempt(prefill), execution.attempt(decode))
        try:
            dispatched = time.perf_counter()
            for leg in legs:
                leg.start(self._transport, "POST", path, self._headers(execution, leg.worker), payload, timeout)
            prefill_leg, decode_leg = legs
            # The prefill first: its answer tells whether the hand-over can succeed (and carries the
            # prompt logprobs). Its body is drained completely before any decode byte is relayed.
            try:
                prefill_body = await self._read_leg(execution, prefill_leg, "prefill", final)
            except (GatewayError, RetryableFailure):
                self._count(execution, "pd_bootstrap_failures", prefill)
                raise
            prefilling.release()  # its prefill is done: the next request may have the slot
            self._observe(execution, "pd_prefill_duration", prefill, dispatched)
            await self._decode_head(execution, decode_leg, final, prefill, handed_over=True)
            self._observe(execution, "pd_ttft", prefill, dispatched)
            transform = self._logprob_merger(body, prefill_body)
            return await self._answer(execution, decode_leg, final, transform)
        except asyncio.CancelledError:  # the client went away
            for leg in legs:
                leg.client_left()
            raise
        finally:
            for leg in legs:
                leg.close()

    def _with_bootstrap(self, path: str, body: Mapping[str, Any], prefill: Worker) -> dict[str, Any]:
        batch = _batch_size(path, body)
        host, port = prefill.bootstrap_host, prefill.bootstrap_port
        extra: dict[str, Any]
        if batch is None:
            extra = {"bootstrap_host": host, "bootstrap_port": port, "bootstrap_room": self._rng.randint(0, MAX_ROOM)}
        else:
            extra = {"bootstrap_host": [host] * batch, "bootstrap_port": [port] * batch,
                     "bootstrap_room": [self._rng.randint(0, MAX_ROOM) for _ in range(batch)]}
        return {**body, **extra}

    # -- vLLM: prefill, then decode -----------------------------------------------------------

    async def _prefill_then_decode(self, execution: Execution[Pair], path: str, body: Mapping[str, Any],
                                   prefill: Worker, decode: Worker, final: bool,
                                   prefilling: Slot) -> web.StreamResponse:
        decode_body = dict(body)
        legs: list[Attempt] = []
        handoff = handoff_for(prefill)
        metrics = execution.lifecycle.metrics
        if metrics is not None:
            metrics.pd_kv_connector_mode(handoff.mode).inc()
        if (body.get("n") or 1) != 1:
            prefilling.release()  # no prefill leg: the decode recomputes the prompt
        try:
            dispatched = time.perf_counter()
            if (body.get("n") or 1) == 1:  # with n > 1 the decode recomputes the prompt itself
                prefill_leg = execution.attempt(prefill)
                legs.append(prefill_leg)
                prefill_leg.start(self._transport, "POST", path, self._headers(execution, prefill),
                                  orjson.dumps(_prefill_only(path, body, handoff.prefill_params())),
                                  execution.remaining())
                answer = await self._read_leg(execution, prefill_leg, "prefill", final)
                prefilling.release()
                self._observe(execution, "pd_prefill_duration", prefill, dispatched)
                try:
                    returned = orjson.loads(answer).get("kv_transfer_params")
                except (orjson.JSONDecodeError, AttributeError):
                    returned = None
                params = handoff.decode_params(returned)
                if params:
                    decode_body["kv_transfer_params"] = params
                elif handoff.needs_returned_params:  # NIXL: the decode will recompute the prompt
                    self._count(execution, "pd_kv_transfer_failures", prefill)
            prefilled = time.perf_counter()
            decode_leg = execution.attempt(decode)
            legs.append(decode_leg)
            decode_leg.start(self._transport, "POST", path, self._headers(execution, decode),
                             orjson.dumps(decode_body), execution.remaining())
            handed_over = "kv_transfer_params" in decode_body
            await self._decode_head(execution, decode_leg, final, prefill, handed_over)
            if handed_over:
                self._observe(execution, "pd_kv_transfer_duration", prefill, prefilled)
            self._observe(execution, "pd_ttft", prefill, dispatched)
            return await self._answer(execution, decode_leg, final, None)
        except asyncio.CancelledError:  # the client went away
            for leg in legs:
                leg.client_left()
            raise
        finally:
            for leg in legs:
                leg.close()

    # -- shared steps -------------------------------------------------------------------------

    @staticmethod
    def _observe(execution: Execution[Pair], histogram: str, prefill: Worker, since: float) -> None:
        """smg_pd_ttft_seconds / smg_pd_prefill_duration_seconds, from the dispatch of the pair."""
        metrics = execution.lifecycle.metrics
        if metrics is not None:
            family = getattr(metrics, histogram)
            family("pd", metrics.model_label(execution.model), prefill.runtime_type).observe(
                time.perf_counter() - since)

    @staticmethod
    def _count(execution: Execution[Pair], counter: str, prefill: Worker) -> None:
        metrics = execution.lifecycle.metrics
        if metrics is not None:
            getattr(metrics, counter)("pd", metrics.model_label(execution.model), prefill.runtime_type).inc()

    async def _decode_head(self, execution: Execution[Pair], leg: Attempt, final: bool, prefill: Worker,
                           handed_over: bool) -> None:
        """The decode leg's response head. After a good prefill, no answer or a server error from the
        decode is a failed KV hand-over (counted whether it is then retried or relayed)."""
        try:
            await self._await_head(leg, "decode", final)
        except (GatewayError, RetryableFailure):
            if handed_over:
                self._count(execution, "pd_kv_transfer_failures", prefill)
            raise
        assert leg.response is not None
        if handed_over and leg.response.status >= 500:
            self._count(execution, "pd_kv_transfer_failures", prefill)

    async def _await_head(self, leg: Attempt, role: str, final: bool) -> None:
        assert leg.task is not None
        try:
            await leg.task  # the send marks the worker failed when it gave no answer
        except UpstreamError as exc:
            raise no_answer(exc, final, f"the {role} worker {leg.worker.url}") from None

    async def _read_leg(self, execution: Execution[Pair], leg: Attempt, role: str, final: bool) -> bytes:
        """The leg's whole answer; a worker error becomes a (retryable where safe) gateway error."""
        await self._await_head(leg, role, final)
        assert leg.response is not None
        data = await read_answer(leg, execution.lifecycle.max_response_bytes, f"the {role} worker", final)
        status = leg.response.status
        if status >= 400:
            message = f"The {role} worker {leg.worker.url} answered {status}: {data[:500].decode(errors='replace')}"
            if status in RETRYABLE_STATUSES:
                raise failure(final, status, f"{role}_upstream_error", message)
            raise GatewayError(status, f"{role}_upstream_error", message)
        return data

    async def _answer(self, execution: Execution[Pair], leg: Attempt, final: bool,
                      transform: Any) -> web.StreamResponse:
        """Relay the decode worker's answer (a retryable error status is retried while nothing was sent)."""
        response = leg.response
        assert response is not None
        headers = routed_headers(client_response_headers(response.headers), execution.request_id, leg.worker.url)
        if response.status in RETRYABLE_STATUSES and not final:
            data = await read_answer(leg, execution.lifecycle.max_response_bytes, "the decode worker", final)
            raise RetryableFailure(GatewayError(response.status, "decode_upstream_error",
                                                f"The decode worker answered {response.status}: "
                                                f"{data[:500].decode(errors='replace')}"),
                                   web.Response(status=response.status, body=data, headers=headers))
        if response.content_length is not None:
            return await relay_whole(execution, leg, headers, final, transform)
        return await relay_stream(execution, leg, headers, transform)

    def _logprob_merger(self, body: Mapping[str, Any], prefill_answer: bytes) -> Any:
        """With return_logprob, prepend the prefill's prompt logprobs to every decode event that has them."""
        if not body.get("return_logprob"):
            return None
        prompt_logprobs = _input_logprobs(prefill_answer)
        if not prompt_logprobs:
            return None

        def merge(data: bytes) -> bytes:
            if data.startswith(b"data: {") or data.startswith(b"data: ["):
                merged = _merge_json(data[6:].strip(), prompt_logprobs)
                return b"data: " + merged + b"\n\n" if merged is not None else data
            if data.startswith((b"{", b"[")):
                merged = _merge_json(data, prompt_logprobs)
                return merged if merged is not None else data
            return data

        return merge

    async def _engine_info(self, request: web.Request, path: str) -> web.StreamResponse:
        """GET passthroughs: engine info from a prefill worker; /health_generate checks a whole pair."""
        prefills = [w for w in self._registry.of_type(WorkerType.PREFILL) if w.is_available]
        decodes = [w for w in self._registry.of_type(WorkerType.DECODE) if w.is_available]
        if not prefills or (path == "/health_generate" and not decodes):
            raise GatewayError(503, "server_selection_failed", "No available prefill/decode pair")
        if path != "/health_generate":
            upstream = await self._transport.request("GET", prefills[0].base_url, path, {}, None, 30)
            try:
                data = await upstream.read(self._config.max_payload_size)
            finally:
                upstream.close()
            return web.Response(status=upstream.status, body=data,
                                content_type=upstream.headers.get("content-type", "application/json").split(";")[0])
        statuses = []
        for worker in (self._rng.choice(prefills), self._rng.choice(decodes)):
            try:
                answer = await self._transport.request("GET", worker.base_url, path, {}, None, 30)
                await answer.read()
                statuses.append(answer.status)
            except UpstreamError:
                statuses.append(0)
        if all(200 <= status < 300 for status in statuses):
            return web.Response(text="OK")
        raise GatewayError(503, "health_generate_failed", f"The prefill/decode pair answered {statuses}")


def _batch_size(path: str, body: Mapping[str, Any]) -> int | None:
    """How many sequences one request carries (each gets its own bootstrap room), or None for one."""
    if path == "/generate":
        text, ids = body.get("text"), body.get("input_ids")
        if isinstance(text, list):
            return len(text)
        if isinstance(ids, list) and ids and isinstance(ids[0], list):
            return len(ids)
        return None
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        return n
    prompt = body.get("prompt")
    if path == "/v1/completions" and isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return len(prompt)
    return None


def _prefill_only(path: str, body: Mapping[str, Any], kv_params: dict[str, Any] | None) -> dict[str, Any]:
    """vLLM's prefill request: one output token, no streaming, tagged for the KV connector's hand-over."""
    prefill = {k: v for k, v in body.items() if k not in ("stream_options", "min_tokens")}
    prefill["stream"] = False
    if "n" in prefill:
        prefill["n"] = 1
    if path == "/v1/responses":
        prefill["max_output_tokens"] = 1
    elif path == "/v1/chat/completions" and "max_completion_tokens" in body:
        prefill["max_completion_tokens"] = 1
        prefill.pop("max_tokens", None)
    else:
        prefill["max_tokens"] = 1
    if kv_params is not None:
        prefill["kv_transfer_params"] = kv_params
    return prefill


def _input_logprobs(answer: bytes) -> dict[int, list[Any]]:
    """Per batch index, the prompt logprobs in a prefill answer (JSON, or the last SSE event per index)."""
    found: dict[int, list[Any]] = {}

    def take(item: Any, index: int) -> None:
        if isinstance(item, dict):
            meta = item.get("meta_info")
            if isinstance(meta, dict) and isinstance(meta.get("input_token_logprobs"), list):
                found[int(item.get("index", index))] = meta["input_token_logprobs"]

    documents: list[Any] = []
    if answer.lstrip().startswith((b"{", b"[")):
        try:
            documents.append(orjson.loads(answer))
        except orjson.JSONDecodeError:
            return found
    else:
        for line in answer.split(b"\n"):
            if line.startswith(b"data: {"):
                try:
                    documents.append(orjson.loads(line[6:]))
                except orjson.JSONDecodeError:
                    continue
    for document in documents:
        for index, item in enumerate(document if isinstance(document, list) else [document]):
            take(item, index)
    return found


def _merge_json(data: bytes, prompt_logprobs: dict[int, list[Any]]) -> bytes | None:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    items = document if isinstance(document, list) else [document]
    changed = False
    for position, item in enumerate(items):
        meta = item.get("meta_info") if isinstance(item, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("input_token_logprobs"), list):
            prefix = prompt_logprobs.get(int(item.get("index", position)))
            if prefix:
                meta["input_token_logprobs"] = prefix + meta["input_token_logprobs"]
                changed = True
    return orjson.dumps(document) if changed else None

