"""Text completions (`/v1/completions`) from a Generate stream, whole or as SSE chunks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from shepherd.headers import REQUEST_ID_HEADER, ROUTED_WORKER_HEADER
from shepherd.routers.grpc.choices import Choice, new_choices, usage
from shepherd.routers.grpc.driver import collect, decode_complete, drive
from shepherd.routers.grpc.execution import EngineCall
from shepherd.routers.grpc.logprobs import CompletionLogprobs
from shepherd.routers.grpc.meta import ResponseMeta
from shepherd.routers.grpc.prepare import Prepared
from shepherd.routers.grpc.sse import FrameBuffer, run_stream, start_engine_sse
from shepherd.tokenizer.stop import StopDecoder

_TAIL = b"]}\n\n"


class _CompletionSink:
    def __init__(self, responder: CompletionResponder, out: FrameBuffer) -> None:
        self._prepared = responder.prepared
        self._head = responder.meta.sse_head("text_completion")
        self.out = out
        self._offsets = [0] * self._prepared.sampling.n

    async def _frame(self, body: dict[str, Any]) -> None:
        self.out.add(self._head + orjson.dumps(body) + _TAIL)

    async def start(self, echo: str) -> None:
        for index in range(len(self._offsets)):
            if echo:
                self._offsets[index] = len(echo)
                await self._frame({"index": index, "text": echo, "logprobs": None, "finish_reason": None})

    async def text(self, choice: Choice, text: str, token_ids: Sequence[int], logprobs: Any | None) -> None:
        lp = None
        if self._prepared.sampling.logprobs and logprobs is not None:
            collected = CompletionLogprobs()
            collected.add(self._prepared.entry.tokenizer, logprobs, choice.decoder.kept, self._offsets[choice.index])
            lp = collected.to_dict()
        if not text and not lp:
            return
        self._offsets[choice.index] += len(text)
        await self._frame({"index": choice.index, "text": text, "logprobs": lp, "finish_reason": None})

    async def finish(self, choice: Choice) -> None:
        await self._frame({"index": choice.index, "text": "", "logprobs": None, "finish_reason": choice.finish_reason,
                           "matched_stop": choice.matched_stop})


class CompletionResponder:
    def __init__(self, prepared: Prepared, meta: ResponseMeta) -> None:
        self.prepared = prepared
        self.meta = meta
        self.choices: list[Choice] = []  # the answer's choices, once it is under way (usage for the access log)

    def _decoder(self) -> StopDecoder:
        return StopDecoder(self.prepared.entry.tokenizer, self.prepared.stop)

    def _echo(self) -> str:
        prepared = self.prepared
        if not prepared.echo:
            return ""
        return prepared.text or prepared.entry.tokenizer.decode(prepared.input_ids, skip_special_tokens=False)

    async def respond(self, engine: EngineCall, first: Any) -> web.Response:
        prepared, meta = self.prepared, self.meta
        completes = await collect(engine, first, prepared.sampling.n)
        echo = self._echo()
        choices = self.choices
        bodies: list[dict[str, Any]] = []
        for index, complete in enumerate(completes):
            choice = Choice(index, self._decoder())
            text, kept = decode_complete(choice, complete)
            choices.append(choice)
            logprobs = None
            if prepared.sampling.logprobs:
                collected = CompletionLogprobs()
                collected.add(prepared.entry.tokenizer, complete.output_logprobs, kept, len(echo))
                logprobs = collected.to_dict()
            bodies.append({"index": index, "text": echo + text, "logprobs": logprobs,
                           "finish_reason": choice.finish_reason, "matched_stop": choice.matched_stop})
        body = {"id": meta.response_id, "object": "text_completion", "created": meta.created, "model": meta.model,
                "system_fingerprint": meta.fingerprint, "choices": bodies, "usage": usage(choices)}
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={REQUEST_ID_HEADER: meta.request_id, ROUTED_WORKER_HEADER: engine.worker.url})

    async def stream(self, request: web.Request, engine: EngineCall, first: Any) -> web.StreamResponse:
        sampling = self.prepared.sampling
        out = await start_engine_sse(request, self.meta.request_id, engine)
        choices = self.choices = new_choices(sampling.n, self._decoder)
        sink = _CompletionSink(self, out)

        async def events() -> None:
            await sink.start(self._echo())
            await drive(engine, first, choices, sink)
            if sampling.stream_usage:
                head = self.meta.sse_head("text_completion")
                out.add(head + b'],"usage":' + orjson.dumps(usage(choices)) + b"}\n\n")

        await run_stream(out, engine, events())
        return out.response
