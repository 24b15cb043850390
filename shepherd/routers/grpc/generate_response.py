"""SGLang's native `/generate` from a Generate stream.

Whole: one object (a list when n > 1) with `text`, the raw `output_ids` and `meta_info`. Streamed:
SGLang's shape, each event carrying the choice's cumulative text so far; unlike a plain decode of
each chunk, the text never holds a broken character and stops are trimmed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from shepherd.headers import REQUEST_ID_HEADER, ROUTED_WORKER_HEADER
from shepherd.routers.grpc.choices import Choice, new_choices
from shepherd.routers.grpc.driver import collect, decode_complete, drive
from shepherd.routers.grpc.execution import EngineCall
from shepherd.routers.grpc.logprobs import generate_entries
from shepherd.routers.grpc.meta import ResponseMeta
from shepherd.routers.grpc.prepare import Prepared
from shepherd.routers.grpc.sse import FrameBuffer, run_stream, start_engine_sse
from shepherd.tokenizer.stop import StopDecoder


def _finish_reason(choice: Choice) -> dict[str, Any] | None:
    if not choice.done:
        return None
    if choice.finish_reason == "length":
        return {"type": "length", "length": choice.completion_tokens}
    if choice.finish_reason == "stop":
        return {"type": "stop", "matched": choice.matched_stop}
    return {"type": choice.finish_reason}


class _GenerateSink:
    def __init__(self, responder: GenerateResponder, out: FrameBuffer) -> None:
        self._responder = responder
        self.out = out
        n = responder.prepared.sampling.n
        self._texts = [""] * n
        self._logprobs: list[list[list[Any]]] = [[] for _ in range(n)]

    async def _event(self, choice: Choice, ids: Sequence[int]) -> None:
        meta = self._responder.meta_info(choice, self._logprobs[choice.index])
        body = {"text": self._texts[choice.index], "output_ids": list(ids), "meta_info": meta, "index": choice.index}
        self.out.add(b"data: " + orjson.dumps(body) + b"\n\n")

    async def text(self, choice: Choice, text: str, token_ids: Sequence[int], logprobs: Any | None) -> None:
        kept = choice.decoder.kept if token_ids else 0
        if logprobs is not None and self._responder.prepared.sampling.logprobs:
            self._logprobs[choice.index] += generate_entries(logprobs, kept)
        if not text and not token_ids:
            return
        self._texts[choice.index] += text
        ids = token_ids[:kept] if kept < len(token_ids) else token_ids
        await self._event(choice, ids)

    async def finish(self, choice: Choice) -> None:
        await self._event(choice, [])


class GenerateResponder:
    def __init__(self, prepared: Prepared, meta: ResponseMeta, engine_request_id: str) -> None:
        self.prepared = prepared
        self.meta = meta
        self.engine_request_id = engine_request_id
        self.choices: list[Choice] = []  # the answer's choices, once it is under way (usage for the access log)

    def _decoder(self) -> StopDecoder:
        return StopDecoder(self.prepared.entry.tokenizer, self.prepared.stop)

    def meta_info(self, choice: Choice, logprobs: list[list[Any]]) -> dict[str, Any]:
        n = self.prepared.sampling.n
        info: dict[str, Any] = {
            "id": self.engine_request_id if n == 1 else f"{self.engine_request_id}-{choice.index}",
            "finish_reason": _finish_reason(choice), "prompt_tokens": choice.prompt_tokens,
            "completion_tokens": choice.completion_tokens, "cached_tokens": choice.cached_tokens,
            "reasoning_tokens": choice.reasoning_tokens, "weight_version": self.meta.fingerprint,
        }
        if choice.done:
            info["matched_stop"] = choice.matched_stop
            info["e2e_latency"] = round(time.monotonic() - self.meta.started, 6)
        if self.prepared.sampling.logprobs:
            info["output_token_logprobs"] = logprobs
        return info

    async def respond(self, engine: EngineCall, first: Any) -> web.Response:
        prepared = self.prepared
        completes = await collect(engine, first, prepared.sampling.n)
        items = []
        for index, complete in enumerate(completes):
            choice = Choice(index, self._decoder())
            self.choices.append(choice)
            text, kept = decode_complete(choice, complete)
            logprobs = generate_entries(complete.output_logprobs, kept) if prepared.sampling.logprobs else []
            items.append({"text": text, "output_ids": list(complete.output_ids),
                          "meta_info": self.meta_info(choice, logprobs)})
        body = items[0] if prepared.sampling.n == 1 else items
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={REQUEST_ID_HEADER: self.meta.request_id,
                                     ROUTED_WORKER_HEADER: engine.worker.url})

    async def stream(self, request: web.Request, engine: EngineCall, first: Any) -> web.StreamResponse:
        out = await start_engine_sse(request, self.meta.request_id, engine)
        choices = self.choices = new_choices(self.prepared.sampling.n, self._decoder)
        await run_stream(out, engine, drive(engine, first, choices, _GenerateSink(self, out)))
        return out.response
