"""Chat completions from a Generate stream: one JSON body, or SSE chunks as tokens arrive.

Each choice's token ids go through its stop decoder (whole characters, stops trimmed), then through
its `ChoiceOutput` -- THE PARSER HOOK: plain content today; tool calls and reasoning_content once a
parser factory is plugged in (see output.py) -- and then into OpenAI objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from shepherd.headers import REQUEST_ID_HEADER, ROUTED_WORKER_HEADER
from shepherd.routers.grpc.choices import Choice, new_choices, usage
from shepherd.routers.grpc.driver import collect, decode_complete, drive
from shepherd.routers.grpc.execution import EngineCall
from shepherd.routers.grpc.logprobs import chat_entries
from shepherd.routers.grpc.meta import ResponseMeta
from shepherd.routers.grpc.output import ChoiceOutput, OutputDelta, OutputFactory, PlainOutput
from shepherd.routers.grpc.prepare import Prepared
from shepherd.routers.grpc.sse import FrameBuffer, run_stream, start_engine_sse
from shepherd.tokenizer.stop import StopDecoder

_TAIL = b"]}\n\n"
_PLAIN_TAIL = b'},"logprobs":null,"finish_reason":null}]}\n\n'


def delta_fields(delta: OutputDelta | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if delta is None:
        return fields
    if delta.reasoning_content:
        fields["reasoning_content"] = delta.reasoning_content
    if delta.content:
        fields["content"] = delta.content
    if delta.tool_calls:
        fields["tool_calls"] = delta.tool_calls
    return fields


class _ChatSink:
    """Streaming: text -> ChoiceOutput.feed -> `chat.completion.chunk` frames."""

    def __init__(self, responder: ChatResponder, out: FrameBuffer, n: int) -> None:
        prepared = responder.prepared
        assert prepared.output is not None
        self._tokenizer = prepared.entry.tokenizer
        self._logprobs = prepared.sampling.logprobs
        self._outputs: list[ChoiceOutput] = [responder.outputs(prepared.output) for _ in range(n)]
        self._called_tools = [False] * n
        self._head = responder.meta.sse_head("chat.completion.chunk")
        self.out = out
        # Without a parser or logprobs each token's frame is a fixed prefix, the JSON string, a fixed suffix.
        self._plain = not self._logprobs and all(isinstance(o, PlainOutput) for o in self._outputs)
        self._content_prefix = [self._head + b'{"index":%d,"delta":{"content":' % i for i in range(n)]

    async def start(self, n: int) -> None:
        for index in range(n):
            role = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": None}
            self.out.add(self._head + orjson.dumps(role) + _TAIL)

    async def _emit(self, index: int, delta: OutputDelta | None, logprobs: list[dict[str, Any]] | None) -> None:
        fields = delta_fields(delta)
        if not fields and not logprobs:
            return
        if delta is not None and delta.tool_calls:
            self._called_tools[index] = True
        if logprobs and "content" not in fields:
            fields["content"] = ""
        body = {"index": index, "delta": fields, "logprobs": {"content": logprobs} if logprobs else None,
                "finish_reason": None}
        self.out.add(self._head + orjson.dumps(body) + _TAIL)

    async def text(self, choice: Choice, text: str, token_ids: Sequence[int], logprobs: Any | None) -> None:
        if self._plain:
            if text:
                self.out.add(self._content_prefix[choice.index] + orjson.dumps(text) + _PLAIN_TAIL)
            return
        entries = None
        if self._logprobs and logprobs is not None:
            entries = chat_entries(self._tokenizer, logprobs, choice.decoder.kept)
        await self._emit(choice.index, self._outputs[choice.index].feed(text) if text else None, entries)

    async def finish(self, choice: Choice) -> None:
        await self._emit(choice.index, self._outputs[choice.index].finish(), None)
        reason = "tool_calls" if self._called_tools[choice.index] else choice.finish_reason
        body = {"index": choice.index, "delta": {}, "logprobs": None, "finish_reason": reason,
                "matched_stop": choice.matched_stop}
        self.out.add(self._head + orjson.dumps(body) + _TAIL)


class ChatResponder:
    def __init__(self, prepared: Prepared, meta: ResponseMeta, outputs: OutputFactory) -> None:
        assert prepared.output is not None
        self.prepared = prepared
        self.meta = meta
        self.outputs = outputs
        self.choices: list[Choice] = []  # the answer's choices, once it is under way (usage for the access log)

    def decoder(self) -> StopDecoder:
        return StopDecoder(self.prepared.entry.tokenizer, self.prepared.stop)

    async def respond(self, engine: EngineCall, first: Any) -> web.Response:
        body = await self.completion(engine, first)
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={REQUEST_ID_HEADER: self.meta.request_id, ROUTED_WORKER_HEADER: engine.worker.url})

    async def completion(self, engine: EngineCall, first: Any) -> dict[str, Any]:
        """The whole `chat.completion` object."""
        prepared, sampling, meta = self.prepared, self.prepared.sampling, self.meta
        assert prepared.output is not None
        completes = await collect(engine, first, sampling.n)
        choices = self.choices
        bodies: list[dict[str, Any]] = []
        for index, complete in enumerate(completes):  # engines may leave `index` unset here: arrival order
            choice = Choice(index, self.decoder())
            text, kept = decode_complete(choice, complete)
            choices.append(choice)
            parsed = self.outputs(prepared.output).complete(text)  # the parser hook, whole-answer form
            message: dict[str, Any] = {"role": "assistant", "content": parsed.content}
            if parsed.reasoning_content:
                message["reasoning_content"] = parsed.reasoning_content
            finish = choice.finish_reason
            if parsed.tool_calls:
                message["tool_calls"] = parsed.tool_calls
                message["content"] = parsed.content or None
                finish = "tool_calls"
            logprobs = None
            if sampling.logprobs:
                logprobs = {"content": chat_entries(prepared.entry.tokenizer, complete.output_logprobs, kept)}
            bodies.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish,
                           "matched_stop": choice.matched_stop})
        return {"id": meta.response_id, "object": "chat.completion", "created": meta.created, "model": meta.model,
                "system_fingerprint": meta.fingerprint, "choices": bodies, "usage": usage(choices)}

    async def stream(self, request: web.Request, engine: EngineCall, first: Any) -> web.StreamResponse:
        sampling = self.prepared.sampling
        out = await start_engine_sse(request, self.meta.request_id, engine)
        choices = self.choices = new_choices(sampling.n, self.decoder)
        sink = _ChatSink(self, out, sampling.n)

        async def events() -> None:
            await sink.start(sampling.n)
            await drive(engine, first, choices, sink)
            if sampling.stream_usage:
                head = self.meta.sse_head("chat.completion.chunk")
                out.add(head + b'],"usage":' + orjson.dumps(usage(choices)) + b"}\n\n")

        await run_stream(out, engine, events())
        return out.response
