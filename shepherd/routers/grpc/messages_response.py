"""Anthropic Messages from a Generate stream: the chat pipeline's answer, in Messages' shapes.

A `/v1/messages` request is translated to a chat request (routers/external/translate, the same code
that serves Messages clients from OpenAI-compatible providers), prepared and generated like any chat
request, and its answer goes through the same parser hook. What differs is the last step: the whole
answer becomes an Anthropic `message`, and a stream's chat deltas are handed (as parsed chunks, no
JSON in between) to the one Chat->Messages stream translator, which writes Anthropic's event grammar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from shepherd.headers import REQUEST_ID_HEADER, ROUTED_WORKER_HEADER
from shepherd.routers.external.translate.openai_to_anthropic import chat_completion_to_message
from shepherd.routers.external.translate.stream_openai_to_anthropic import ChatStreamToMessages
from shepherd.routers.grpc.chat_response import ChatResponder, delta_fields
from shepherd.routers.grpc.choices import Choice, new_choices, usage
from shepherd.routers.grpc.driver import drive
from shepherd.routers.grpc.execution import EngineCall
from shepherd.routers.grpc.meta import ResponseMeta
from shepherd.routers.grpc.output import OutputDelta, OutputFactory
from shepherd.routers.grpc.prepare import Prepared
from shepherd.routers.grpc.sse import FrameBuffer, run_stream, start_engine_sse


class _MessagesSink:
    """Streaming: text -> ChoiceOutput.feed -> chat delta -> Anthropic events."""

    def __init__(self, responder: MessagesResponder, out: FrameBuffer,
                 translator: ChatStreamToMessages) -> None:
        prepared = responder.prepared
        assert prepared.output is not None
        self._output = responder.outputs(prepared.output)
        self._translator = translator
        self.out = out

    async def feed(self, chunk: dict[str, Any]) -> None:
        frames = self._translator.feed_chunk(chunk)
        if frames:
            self.out.add(frames)

    async def _emit(self, delta: OutputDelta | None) -> None:
        fields = delta_fields(delta)
        if fields:
            await self.feed({"choices": [{"index": 0, "delta": fields}]})

    async def start(self, meta: ResponseMeta, prompt_tokens: int) -> None:
        # message_start carries the input tokens: the prompt is known before the first token.
        await self.feed({"id": meta.response_id, "model": meta.model, "choices": [],
                          "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0}})

    async def text(self, choice: Choice, text: str, token_ids: Sequence[int], logprobs: Any | None) -> None:
        if text:
            await self._emit(self._output.feed(text))

    async def finish(self, choice: Choice) -> None:
        await self._emit(self._output.finish())
        await self.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": choice.finish_reason,
                                       "matched_stop": choice.matched_stop}]})


class MessagesResponder:
    def __init__(self, prepared: Prepared, meta: ResponseMeta, outputs: OutputFactory,
                 stop_sequences: Sequence[str]) -> None:
        self.prepared = prepared
        self.meta = meta
        self.outputs = outputs
        self._stop_sequences = tuple(stop_sequences)
        self._chat = ChatResponder(prepared, meta, outputs)

    @property
    def choices(self) -> list[Choice]:
        """The answer's choices, once it is under way (usage for the access log)."""
        return self._chat.choices

    async def respond(self, engine: EngineCall, first: Any) -> web.Response:
        completion = await self._chat.completion(engine, first)
        message = chat_completion_to_message(completion, stop_sequences=self._stop_sequences)
        return web.Response(body=orjson.dumps(message), content_type="application/json",
                            headers={REQUEST_ID_HEADER: self.meta.request_id, ROUTED_WORKER_HEADER: engine.worker.url})

    async def stream(self, request: web.Request, engine: EngineCall, first: Any) -> web.StreamResponse:
        out = await start_engine_sse(request, self.meta.request_id, engine)
        translator = ChatStreamToMessages(model=self.meta.model, stop_sequences=self._stop_sequences)
        sink = _MessagesSink(self, out, translator)
        choices = self._chat.choices = new_choices(1, self._chat.decoder)

        async def events() -> None:
            await sink.start(self.meta, len(self.prepared.input_ids))
            await drive(engine, first, choices, sink)
            await sink.feed({"choices": [], "usage": usage(choices)})
            out.add(translator.finish())  # message_delta (stop reason, usage), message_stop

        await run_stream(out, engine, events(), api="anthropic")
        return out.response
