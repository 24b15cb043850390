"""The simulated engine's HTTP surface (SGLang's by default, vLLM's with runtime="vllm").

Inference routes go through the same pipeline: authenticate, apply faults, build the prompt, start
one generation per choice, then answer whole or as SSE in the engine's format. Control routes under
`/sim/` let tests change faults and read counters at run time.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import logging
import math
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from shepherd.errors import GatewayError
from shepherd.routers.grpc.prepare import render_chat
from shepherd.sim.engine import Engine, EngineParams
from shepherd.sim.faults import FaultError, Faults, Stats
from shepherd.sim.formats import (
    ChatFormat,
    CompletionFormat,
    Context,
    Format,
    GenerateFormat,
    MessagesFormat,
    ResponsesFormat,
)
from shepherd.sim.generation import Generation
from shepherd.sim.kv_events import KvFaultError, kv_event_faults
from shepherd.sim.pd import KvTransferError, PdRole
from shepherd.sim.provider import ProviderPersona
from shepherd.sim.structured import structured_schema, structured_text, wants_fenced_json
from shepherd.sim.text import prompt_text, request_seed, tokenize
from shepherd.sim.tools import (
    ScriptedTurn,
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_stream,
    script_turn,
)

if TYPE_CHECKING:
    from shepherd.sim.zmq_events import ZmqKvPublisher
    from shepherd.tokenizer.registry import TokenizerEntry

log = logging.getLogger("shepherd.sim")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class SimConfig:
    model: str = "mock-model"
    runtime: str = "sglang"  # sglang | vllm: which engine's routes and metric names to speak
    engine: str = "realistic"  # realistic | canned
    output_tokens: int = 32  # answer length when the request sets no maximum
    gen_ms: float = 0.0  # canned mode: time to produce an answer
    max_model_len: int = 32768
    embedding_dim: int = 64
    api_key: str | None = None  # when set, requests must carry `Authorization: Bearer <key>` (or the provider's header)
    provider: str | None = None  # "openai" | "anthropic": act as that cloud provider instead of an engine
    extra_models: tuple[str, ...] = ()  # served besides `model` (change at run time with POST /sim/models)
    record_requests: int = 100  # how many recent requests /sim/requests keeps
    dp_size: int = 1  # data-parallel ranks, each its own engine (SGLang's --dp-size)
    role: str = "regular"  # regular | prefill | decode (PD disaggregation, see sim/pd.py)
    pd_timeout_secs: float = 5.0  # decode: how long to wait for the prefill's KV
    messages_api: bool = True  # serve /v1/messages (+ count_tokens); false: a 404 there, like an older engine
    kv_events: bool = True  # gRPC: serve SubscribeKvEvents (off: the engine has no event stream)
    kv_event_replay: int = 4096  # batches kept for subscribers resuming after a gap
    # HTTP: tokenize chat and completion prompts with this tokenizer (its chat template rendered first), as
    # a real engine does, so that a gateway with the same tokenizer can match prompts to the KV events;
    # None: one id per word (shepherd.sim.text)
    tokenizer_path: str | None = None
    params: EngineParams = field(default_factory=EngineParams)


MAX_EMBEDDING_DIMENSIONS = 65536


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return _json({"object": "error", "message": message, "type": kind, "param": None, "code": status}, status)


def _max_new(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_new_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    params = body.get("sampling_params")
    if isinstance(params, dict) and isinstance(params.get("max_new_tokens"), int):
        return int(params["max_new_tokens"])
    return None


class SimWorker:
    """One simulated engine on one port."""

    def __init__(self, config: SimConfig, faults: Faults | None = None, name: str = "sim",
                 host: str = "127.0.0.1", bootstrap_port: int | None = None) -> None:
        self.config = config
        self.pd = PdRole(config.role, host, bootstrap_port, config.pd_timeout_secs) if config.role != "regular" \
            else None
        self.faults = faults or Faults()
        self.stats = Stats()
        self.stats.recent = type(self.stats.recent)(maxlen=max(1, config.record_requests))
        self.name = name
        realistic = config.engine == "realistic"
        self.engines: list[Engine | None] = [Engine(config.params) if realistic else None
                                             for _ in range(max(1, config.dp_size))]
        self.engine = self.engines[0]
        self.requests_by_rank = [0] * len(self.engines)
        self._next_rank = 0
        self._rng = random.Random(hash(name))
        self._served = 0
        self.served_models = [config.model, *config.extra_models]
        self.persona = ProviderPersona(config.provider, config.api_key) if config.provider else None
        self.kv_publisher: ZmqKvPublisher | None = None  # set by SimCluster when KV events go out over ZMQ
        self.tokenizer: TokenizerEntry | None = None  # set by SimCluster from config.tokenizer_path
        self.app = self._build_app()

    # -- app ----------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        routes = app.router
        routes.add_get("/health", self.health)
        routes.add_get("/v1/models", self.models)
        if self.persona is not None:  # a provider has its API and nothing of an engine's
            if self.persona.api == "anthropic":
                routes.add_post("/v1/messages", self._inference(MessagesFormat()))
                routes.add_post("/v1/messages/count_tokens", self._guarded(self.count_tokens))
            else:
                routes.add_post("/v1/chat/completions", self._inference(ChatFormat()))
                routes.add_post("/v1/completions", self._inference(CompletionFormat()))
                routes.add_post("/v1/responses", self._inference(ResponsesFormat()))
                routes.add_post("/v1/embeddings", self._guarded(self.embeddings))
            self._add_sim_routes(routes)
            return app
        routes.add_get("/health_generate", self.health_generate)
        routes.add_get("/metrics", self.metrics)
        routes.add_post("/v1/chat/completions", self._inference(ChatFormat()))
        routes.add_post("/v1/completions", self._inference(CompletionFormat()))
        routes.add_post("/generate", self._inference(GenerateFormat()))
        if self.config.messages_api:
            routes.add_post("/v1/messages", self._inference(MessagesFormat()))
            routes.add_post("/v1/messages/count_tokens", self._guarded(self.count_tokens))
        routes.add_post("/v1/responses", self._inference(ResponsesFormat()))
        routes.add_post("/v1/embeddings", self._guarded(self.embeddings))
        routes.add_post("/v1/rerank", self._guarded(self.rerank))
        routes.add_post("/v1/classify", self._guarded(self.classify))
        if self.config.runtime == "vllm":
            routes.add_get("/version", self.version)
            routes.add_post("/reset_prefix_cache", self.flush_cache)
        else:
            routes.add_get("/get_model_info", self.model_info)
            routes.add_get("/model_info", self.model_info)
            routes.add_get("/get_server_info", self.server_info)
            routes.add_get("/server_info", self.server_info)
            routes.add_get("/get_load", self.get_load)
            routes.add_get("/v1/loads", self.loads)
            routes.add_post("/flush_cache", self.flush_cache)
        if self.pd is not None:
            routes.add_get("/kv/{key}", self.pd.store.serve)
        self._add_sim_routes(routes)
        return app

    def _add_sim_routes(self, routes: web.UrlDispatcher) -> None:
        routes.add_get("/sim/stats", self.sim_stats)
        routes.add_get("/sim/faults", self.sim_faults)
        routes.add_post("/sim/faults", self.sim_faults)
        routes.add_get("/sim/requests", self.sim_requests)
        routes.add_post("/sim/reset", self.sim_reset)
        routes.add_get("/sim/kv_events", self.sim_kv_events)
        routes.add_post("/sim/kv_events", self.sim_kv_events)
        routes.add_get("/sim/models", self.sim_models)
        routes.add_post("/sim/models", self.sim_models)

    async def close(self) -> None:
        if self.kv_publisher is not None:
            await self.kv_publisher.stop()
        if self.pd is not None:
            await self.pd.close()
        for engine in self.engines:
            if engine is not None:
                await engine.stop()

    def _engine_for(self, body: dict[str, Any]) -> Engine | None:
        """The rank the request names (`data_parallel_rank`), else the next one in turn."""
        rank = body.get("data_parallel_rank")
        if not isinstance(rank, int) or not 0 <= rank < len(self.engines):
            rank = self._next_rank
            self._next_rank = (self._next_rank + 1) % len(self.engines)
        self.requests_by_rank[rank] += 1
        return self.engines[rank]

    # -- the inference pipeline ---------------------------------------------------------------

    def _guarded(self, handler: Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]) -> Handler:
        """Authentication, faults, accounting and body parsing around an inference handler."""

        async def handle(request: web.Request) -> web.StreamResponse:
            stats = self.stats
            stats.requests_total += 1
            stats.by_path[request.path] = stats.by_path.get(request.path, 0) + 1
            stats.in_flight += 1
            try:
                response = await self._handle(request, handler)
            except _StreamCut as cut:
                if cut.by_client:
                    stats.aborted += 1
                return cut.response
            except asyncio.CancelledError:
                stats.aborted += 1
                raise
            finally:
                stats.in_flight -= 1
            return response

        return handle

    async def _handle(
        self, request: web.Request, handler: Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        faults = self.faults
        self._served += 1
        if 0 <= faults.exit_after < self._served:
            log.warning("%s: exit_after=%d reached; exiting", self.name, faults.exit_after)
            os._exit(3)
        raw = await request.read()
        if self.config.record_requests:
            self.stats.recent.append({"path": request.path, "headers": {str(k): v for k, v in request.headers.items()},
                                      "body": raw[:65536].decode(errors="replace"), "time": time.time()})
        if self.persona is not None:
            denied = self.persona.authenticate(request.headers)
            if denied is not None:
                return denied
        elif self.config.api_key and request.headers.get("Authorization") != f"Bearer {self.config.api_key}":
            return self._error(401, "Invalid API key", "authentication_error")
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.hang:
            await asyncio.sleep(10**9)
        if faults.error_rate > 0 and self._rng.random() < faults.error_rate:
            self.stats.errors_injected += 1
            return self._error(faults.error_status, "injected fault", "server_error")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._error(400, "The request body is not valid JSON")
        if not isinstance(body, dict):
            return self._error(400, "The request body must be a JSON object")
        response = await handler(request, body)
        self.stats.completed += 1
        return response

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
        if self.persona is not None:
            return self.persona.error(status, message)
        return _error(status, message, kind)

    def _inference(self, fmt: Format) -> Handler:
        async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
            return await self._generate(request, body, fmt)

        return self._guarded(handler)

    def _prompts(self, body: dict[str, Any], fmt: Format) -> tuple[list[list[int]], bool]:
        """Token ids of each prompt, and whether the request is a batch (SGLang /generate)."""
        if isinstance(fmt, GenerateFormat):
            ids = body.get("input_ids")
            if isinstance(ids, list) and ids and isinstance(ids[0], list):
                return [list(map(int, seq)) for seq in ids], True
            if isinstance(ids, list):
                return [list(map(int, ids))], False
            text = body.get("text")
            if isinstance(text, list):
                return [tokenize(str(t)) for t in text], True
        entry = self.tokenizer
        if entry is not None and isinstance(fmt, ChatFormat) and isinstance(body.get("messages"), list):
            try:
                return [entry.encode(render_chat(body, entry, self.config.model).text, False)], False
            except GatewayError:
                pass  # a chat the template cannot render: counted by words, as without a tokenizer
        if entry is not None and isinstance(fmt, CompletionFormat):
            return [entry.encode(prompt_text(body), True)], False
        return [tokenize(prompt_text(body))], False

    async def _generate(self, request: web.Request, body: dict[str, Any], fmt: Format) -> web.StreamResponse:
        if self.persona is not None:
            rejected = self.persona.check_request(body, self.served_models)
            if rejected is not None:
                return rejected
        if isinstance(fmt, (ChatFormat, MessagesFormat)):
            turn = script_turn(body, "anthropic" if isinstance(fmt, MessagesFormat) else "openai")
            if turn is not None:
                return await self._scripted(request, body, fmt, turn)
        prompts, batched = self._prompts(body, fmt)
        requested = _max_new(body)
        max_new = requested if requested is not None else self.config.output_tokens
        if max_new < 0:
            return self._error(400, "max_tokens must not be negative")
        if any(len(p) + max_new > self.config.max_model_len for p in prompts):
            return self._error(400, f"This model's maximum context length is {self.config.max_model_len} tokens")
        finish = "length" if requested is not None else "stop"
        if self.config.provider == "anthropic" and requested is not None and requested >= self.config.output_tokens:
            # Anthropic clients must always send max_tokens: as that provider it is a ceiling, not a length.
            max_new, finish = self.config.output_tokens, "stop"
        n = body.get("n", 1) if not batched else 1
        if not isinstance(n, int) or n < 1 or n > 128:
            return self._error(400, "n must be an integer between 1 and 128")
        pd, handover, transferred = self.pd, None, None
        if pd is not None and pd.is_decode:
            try:
                transferred = await pd.receive(body)  # no token before the prefill's KV is here
            except KvTransferError as exc:
                return _error(500, str(exc), "server_error")
        elif pd is not None:
            handover = pd.prepare_prefill(body)
            max_new = min(max_new, 1)  # a prefill worker computes the prompt and one token
        gens: list[Generation] = []
        engine = self._engine_for(body)
        schema = structured_schema(body) if isinstance(fmt, ChatFormat) else None
        if schema is not None:
            max_new = max(max_new, 1)  # a JSON document takes at least one token
        for p_index, prompt in enumerate(prompts):
            for choice in range(n):
                seed = request_seed(self.config.model, prompt, max_new, body.get("seed"), p_index, choice)
                gen = Generation(prompt, max_new, seed, finish, engine, self.config.gen_ms / 1000,
                                 prefilled=transferred is not None)
                if schema is not None:
                    gen.replace_text(structured_text(schema, seed, fenced=wants_fenced_json(body)))
                if transferred:  # report the prefill side's cache hits, as the KV arrived with them
                    gen.reported_cached = transferred[min(len(gens), len(transferred) - 1)]
                gens.append(gen)
        if pd is not None and pd.is_prefill:
            return await self._prefill_answer(request, body, fmt, gens, handover)
        ctx = Context(request_id=self._request_id(request, fmt), model=str(body.get("model") or self.config.model),
                      body=body, batched=batched, prompt_logprobs=pd is None or not pd.is_decode)
        if body.get("stream"):
            return await self._stream(request, fmt, gens, ctx)
        try:
            await asyncio.gather(*(g.wait() for g in gens))
        except asyncio.CancelledError:
            for gen in gens:
                gen.abandon()
            raise
        return _json(fmt.response(gens, ctx))

    async def _scripted(
        self, request: web.Request, body: dict[str, Any], fmt: Format, turn: ScriptedTurn
    ) -> web.StreamResponse:
        """A tool call or a tool-result echo (see sim/tools.py), whole or streamed."""
        ctx = Context(request_id=self._request_id(request, fmt), model=str(body.get("model") or self.config.model),
                      body=body)
        anthropic = isinstance(fmt, MessagesFormat)
        if not body.get("stream"):
            if anthropic:
                return _json(anthropic_message(turn, ctx.request_id, ctx.model))
            return _json(openai_completion(turn, ctx.request_id, ctx.model, ctx.created))
        frames = (anthropic_stream(turn, ctx.request_id, ctx.model) if anthropic else
                  openai_stream(turn, ctx.request_id, ctx.model, ctx.created, ctx.include_usage))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
        return response

    async def _prefill_answer(self, request: web.Request, body: dict[str, Any], fmt: Format,
                              gens: list[Generation], handover: dict[str, Any] | None) -> web.StreamResponse:
        """Run the prefill, publish its KV for the decode side, then answer as the engine would."""
        assert self.pd is not None
        try:
            await asyncio.gather(*(g.wait() for g in gens))
        except asyncio.CancelledError:
            for gen in gens:
                gen.abandon()
            raise
        self.pd.publish(body, handover, [g.cached_tokens for g in gens], wrong_room=self.faults.pd_wrong_room)
        ctx = Context(request_id=self._request_id(request, fmt), model=str(body.get("model") or self.config.model),
                      body=body, batched=isinstance(body.get("text"), list))
        if body.get("stream"):
            return await self._stream(request, fmt, gens, ctx)
        answer = fmt.response(gens, ctx)
        if handover is not None and isinstance(answer, dict):
            answer["kv_transfer_params"] = handover
        return _json(answer)

    @staticmethod
    def _request_id(request: web.Request, fmt: Format) -> str:
        prefix = {ChatFormat: "chatcmpl-", CompletionFormat: "cmpl-", MessagesFormat: "msg_",
                  ResponsesFormat: "resp_"}.get(type(fmt), "")
        return prefix + uuid.uuid4().hex

    async def _stream(
        self, request: web.Request, fmt: Format, gens: list[Generation], ctx: Context
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        drop_after = self.faults.drop_after_chunks
        chunks = 0

        async def send(frame: bytes) -> None:
            nonlocal chunks
            if not frame:
                return
            if 0 <= drop_after <= chunks:
                raise _DroppedByFault
            await response.write(frame)
            chunks += 1

        # The opening frames (the chat role delta, Anthropic's message_start with its cached-token
        # count) go out with the first token, as vLLM and SGLang send them: with the first output of
        # the engine, not while the request still waits for admission. A client, and the gateway's
        # time-to-first-token bookkeeping, sees the first body byte when the first token is ready.
        start: bytes | None = None
        try:
            if fmt.opens_at_once:
                start = fmt.stream_start(gens, ctx)
                await send(start)
            async for index, gen, token in _merged_tokens(gens):
                if start is None:
                    start = fmt.stream_start(gens, ctx)
                    await send(start)
                await send(fmt.stream_token(index, gen, token, ctx))
                if token + 1 == gen.completion_tokens:
                    await send(fmt.stream_finish(index, gen, ctx))
            if start is None:  # no generation produced a token
                await send(fmt.stream_start(gens, ctx))
            for index, gen in enumerate(gens):
                if gen.completion_tokens == 0:
                    await send(fmt.stream_finish(index, gen, ctx))
            await send(fmt.stream_end(gens, ctx))
            await response.write_eof()
        except _DroppedByFault:
            for gen in gens:
                gen.abandon()
            assert request.transport is not None
            request.transport.abort()  # a crash mid-stream: no terminating chunk
            raise _StreamCut(response, by_client=False) from None
        except ConnectionResetError:  # the client went away between two chunks
            for gen in gens:
                gen.abandon()
            raise _StreamCut(response, by_client=True) from None
        except asyncio.CancelledError:  # the client went away (counted by the guard)
            for gen in gens:
                gen.abandon()
            raise
        return response

    # -- other inference routes ---------------------------------------------------------------

    @staticmethod
    def _inputs(value: Any) -> list[str]:
        """The texts of an `input`: a string, a list of strings, token ids, or lists of token ids.
        Anything else (a number, a boolean, a mixed list) is the client's mistake: an empty list."""
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not value:
            return []
        if all(_is_token_id(v) for v in value):
            return [" ".join(map(str, value))]
        texts: list[str] = []
        for item in value:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list) and item and all(_is_token_id(v) for v in item):
                texts.append(" ".join(map(str, item)))
            else:
                return []
        return texts

    async def count_tokens(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if not isinstance(body.get("messages"), list):
            return self._error(400, "'messages' must be a list")
        return _json({"input_tokens": len(tokenize(prompt_text(body)))})

    async def embeddings(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        inputs = self._inputs(body.get("input"))
        if not inputs:
            return self._error(400, "'input' must be a string, a list of strings or a list of token ids")
        dimensions = body.get("dimensions", self.config.embedding_dim) or self.config.embedding_dim
        if not _is_token_id(dimensions) or not 0 < dimensions <= MAX_EMBEDDING_DIMENSIONS:
            return self._error(400, f"'dimensions' must be an integer from 1 to {MAX_EMBEDDING_DIMENSIONS}")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = self._vector(text, dimensions)
            embedding: Any = base64.b64encode(array.array("f", vector).tobytes()).decode() if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(tokenize(text)) for text in inputs)
        return _json({"object": "list", "data": data, "model": body.get("model") or self.config.model,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _vector(self, text: str, dim: int) -> list[float]:
        rng = random.Random(request_seed("embed", text))
        vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    async def rerank(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list) or \
                not all(isinstance(d, str) for d in documents):
            return self._error(400, "'query' (a string) and 'documents' (a list of strings) are required")
        query_words = set(query.lower().split())
        results: list[dict[str, Any]] = []
        for index, text in enumerate(documents):
            overlap = len(query_words & set(text.lower().split()))
            score = overlap + (request_seed(query, text) % 1000) / 10000
            results.append({"score": score, "document": text, "index": index,
                            "meta_info": {"prompt_tokens": len(tokenize(query + " " + text))}})
        results.sort(key=lambda r: -r["score"])
        top_n = body.get("top_n")
        return _json(results[:top_n] if isinstance(top_n, int) and top_n > 0 else results)

    async def classify(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        inputs = self._inputs(body.get("input", body.get("text")))
        if not inputs:
            return self._error(400, "'input' must be a string or a list of strings")
        data = []
        for index, text in enumerate(inputs):
            positive = (request_seed("classify", text) % 1000) / 1000
            probs = [round(1 - positive, 4), round(positive, 4)]
            data.append({"index": index, "label": "LABEL_1" if positive >= 0.5 else "LABEL_0", "probs": probs,
                         "num_classes": 2})
        tokens = sum(len(tokenize(text)) for text in inputs)
        return _json({"id": "classify-" + uuid.uuid4().hex, "object": "list", "created": int(time.time()),
                      "model": body.get("model") or self.config.model, "data": data,
                      "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}})

    # -- engine info and control --------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        status = self.faults.health_status
        return web.Response(status=status, text="OK" if status < 400 else "unhealthy")

    async def health_generate(self, request: web.Request) -> web.Response:
        if self.faults.health_status >= 400 or self.faults.hang:
            return web.Response(status=503, text="unhealthy")
        await Generation([1], 1, 0, "length", self.engine).wait()
        return web.Response(text="OK")

    async def models(self, request: web.Request) -> web.Response:
        self.stats.model_lists += 1
        if self.persona is not None:
            denied = self.persona.authenticate(request.headers)
            return denied if denied is not None else self.persona.model_list(self.served_models)
        owner = "vllm" if self.config.runtime == "vllm" else "sglang"
        cards = [{"id": model, "object": "model", "created": 0, "owned_by": owner, "root": model,
                  "max_model_len": self.config.max_model_len} for model in self.served_models]
        return _json({"object": "list", "data": cards})

    async def version(self, request: web.Request) -> web.Response:
        return _json({"version": "0.11.0+shepherd.sim"})

    async def model_info(self, request: web.Request) -> web.Response:
        return _json({"model_path": self.config.model, "tokenizer_path": self.config.model, "is_generation": True,
                      "preferred_sampling_params": None, "weight_version": "default",
                      "has_image_understanding": False, "has_audio_understanding": False,
                      "model_type": "shepherd_sim", "architectures": ["SimForCausalLM"]})

    async def server_info(self, request: web.Request) -> web.Response:
        params = self.config.params
        return _json({"model_path": self.config.model, "served_model_name": self.config.model, "tp_size": 1,
                      "dp_size": len(self.engines), "max_running_requests": params.max_running,
                      "max_total_num_tokens": params.kv_capacity_tokens, "context_length": self.config.max_model_len,
                      "page_size": params.block_size, "disaggregation_mode": "null", "version": "shepherd-sim",
                      "internal_states": [{"last_gen_throughput": self._gen_throughput()}]})

    def _gen_throughput(self) -> float:
        return sum(e.gen_throughput for e in self.engines if e is not None)

    def _load_row(self, rank: int = 0) -> dict[str, Any]:
        engine, params = self.engines[rank], self.config.params
        running = engine.num_running if engine else self.stats.in_flight
        waiting = engine.num_waiting if engine else 0
        used = engine.used_tokens if engine else 0
        usage = engine.token_usage if engine else 0.0
        return {"dp_rank": rank, "num_running_reqs": running, "num_waiting_reqs": waiting,
                "num_waiting_uncached_tokens": engine.waiting_uncached_tokens if engine else 0,
                "num_total_reqs": running + waiting, "num_used_tokens": used,
                "max_total_num_tokens": params.kv_capacity_tokens, "token_usage": usage,
                "gen_throughput": engine.gen_throughput if engine else 0.0,
                "cache_hit_rate": engine.cache_hit_rate if engine else 0.0, "utilization": usage,
                "max_running_requests": params.max_running}

    async def loads(self, request: web.Request) -> web.Response:
        return _json({"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "dp_rank_count": len(self.engines),
                      "loads": [self._load_row(rank) for rank in range(len(self.engines))]})

    async def get_load(self, request: web.Request) -> web.Response:
        rows = [self._load_row(rank) for rank in range(len(self.engines))]
        return _json([{"dp_rank": row["dp_rank"], "num_reqs": row["num_total_reqs"],
                       "num_waiting_reqs": row["num_waiting_reqs"], "num_tokens": row["num_used_tokens"]}
                      for row in rows])

    async def metrics(self, request: web.Request) -> web.Response:
        row = self._load_row()
        label = f'{{model_name="{self.config.model}"}}'
        if self.config.runtime == "vllm":
            gauges = {"vllm:num_requests_running": row["num_running_reqs"],
                      "vllm:num_requests_waiting": row["num_waiting_reqs"],
                      "vllm:kv_cache_usage_perc": row["token_usage"],
                      "vllm:gpu_cache_usage_perc": row["token_usage"],
                      "vllm:gpu_prefix_cache_hit_rate": row["cache_hit_rate"]}
        else:
            gauges = {"sglang:num_running_reqs": row["num_running_reqs"],
                      "sglang:num_queue_reqs": row["num_waiting_reqs"], "sglang:token_usage": row["token_usage"],
                      "sglang:gen_throughput": row["gen_throughput"], "sglang:cache_hit_rate": row["cache_hit_rate"],
                      "sglang:utilization": row["utilization"]}
        lines = []
        for name, value in gauges.items():
            lines += [f"# HELP {name} Simulated engine gauge.", f"# TYPE {name} gauge", f"{name}{label} {value}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def flush_cache(self, request: web.Request) -> web.Response:
        for engine in self.engines:
            if engine is not None:
                engine.flush_cache()
        return web.Response(text="Cache flushed.")

    async def sim_stats(self, request: web.Request) -> web.Response:
        stats = self.stats.to_dict()
        stats["requests_by_rank"] = list(self.requests_by_rank)
        if self.pd is not None:
            stats["kv_transfers"] = self.pd.transfers
        if self.engine is not None:
            stats["engine"] = self._load_row()
        return _json(stats)

    async def sim_faults(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.read())
                if not isinstance(changes, dict):
                    raise FaultError("the body must be a JSON object of fault settings")
                self.faults.update(changes)
            except (orjson.JSONDecodeError, FaultError) as exc:
                return _error(400, str(exc))
        return _json(self.faults.to_dict())

    async def sim_models(self, request: web.Request) -> web.Response:
        """GET: the served models. POST {"models": [...]}: serve these besides the primary model."""
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                return _error(400, "the body must be JSON")
            models = changes.get("models") if isinstance(changes, dict) else None
            if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
                return _error(400, "'models' must be a list of model ids")
            self.served_models = [self.config.model, *(m for m in models if m != self.config.model)]
        return _json({"models": self.served_models})

    async def sim_requests(self, request: web.Request) -> web.Response:
        return _json(list(self.stats.recent))

    async def sim_kv_events(self, request: web.Request) -> web.Response:
        """KV-event faults (kv_events.kv_event_faults), plus `replay`: false makes the ZMQ replay socket
        ignore requests (an engine whose replay endpoint is gone), true brings it back."""
        engine, publisher = self.engine, self.kv_publisher
        if engine is None:
            return _error(400, "the canned engine has no KV cache")
        try:
            changes = orjson.loads(await request.read()) if request.method == "POST" else None
            if isinstance(changes, dict) and "replay" in changes:
                if publisher is None or not isinstance(changes["replay"], bool):
                    raise KvFaultError("replay (a boolean) needs a ZMQ publisher with a replay endpoint")
                publisher.replay_enabled = changes.pop("replay")
            body = kv_event_faults(engine.events, engine.cached_blocks(), changes)
        except (orjson.JSONDecodeError, KvFaultError) as exc:
            return _error(400, str(exc))
        if publisher is not None:
            body.update(zmq_sent=publisher.sent, zmq_replays=publisher.replays, replay=publisher.replay_enabled)
        return _json(body)

    async def sim_reset(self, request: web.Request) -> web.Response:
        self.faults = Faults()
        recent = self.stats.recent
        recent.clear()
        self.stats = Stats(recent=recent)
        self._served = 0
        self.served_models = [self.config.model, *self.config.extra_models]
        self.requests_by_rank = [0] * len(self.engines)
        if self.pd is not None:
            self.pd.transfers = 0
        for engine in self.engines:
            if engine is not None:
                engine.flush_cache()
        return _json({"status": "reset"})


class _DroppedByFault(Exception):
    """The drop_after_chunks fault fired."""


class _StreamCut(Exception):
    """A stream ended early; the guard counts it and returns the half-sent response."""

    def __init__(self, response: web.StreamResponse, by_client: bool) -> None:
        super().__init__("stream cut")
        self.response = response
        self.by_client = by_client


async def _merged_tokens(gens: list[Generation]):  # type: ignore[no-untyped-def]
    """(choice index, generation, token index) for every token, in the order they are produced."""
    if len(gens) == 1:
        gen = gens[0]
        produced = 0
        async for count in gen.stream():
            for token in range(produced, produced + count):
                yield 0, gen, token
            produced += count
        return
    queue: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()

    async def pump(index: int, gen: Generation) -> None:
        async for count in gen.stream():
            queue.put_nowait((index, count))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    waiter = asyncio.ensure_future(asyncio.gather(*tasks))
    waiter.add_done_callback(lambda _: queue.put_nowait(None))
    so_far = [0] * len(gens)
    try:
        while (item := await queue.get()) is not None:
            index, count = item
            for token in range(so_far[index], so_far[index] + count):
                yield index, gens[index], token
            so_far[index] += count
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
