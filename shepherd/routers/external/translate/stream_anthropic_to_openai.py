"""A Messages stream (Anthropic events) re-emitted as a Chat Completions stream (OpenAI chunks).

Feed it the upstream's SSE events in order; it returns the bytes to send to the client: a first
chunk with the assistant role, content / reasoning_content / tool_calls deltas, a last chunk with the
finish_reason, a usage chunk when the client asked for one (`stream_options.include_usage`), then
`data: [DONE]`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from shepherd.routers.common.sse import DONE_FRAME, SSEEvent, data_frame, stream_error_frame
from shepherd.routers.external.translate.anthropic_to_openai import STOP_TO_FINISH, chat_id, chat_usage
from shepherd.routers.external.translate.common import mapping


class MessagesStreamToChat:
    def __init__(self, *, model: str, include_usage: bool, created: int | None = None) -> None:
        self._model = model
        self._include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        self._id = chat_id(None)
        self._started = False
        self._done = False
        self._tool_positions: dict[int, int] = {}  # content block index -> OpenAI tool_calls index
        self._stop_reason: Any = None
        self._usage: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        """Whether the client's stream is complete ([DONE] sent)."""
        return self._done

    def feed(self, event: SSEEvent) -> bytes:
        if self._done or not event.data.strip():
            return b""
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return self.fail("The provider sent a malformed stream event")
        if not isinstance(data, Mapping):
            return b""
        kind = data.get("type") or event.event
        if kind == "message_start":
            message = mapping(data.get("message"))
            self._id = chat_id(message.get("id"))
            self._model = str(message.get("model") or self._model)
            self._merge_usage(message.get("usage"))
            return self._start()
        out = b"" if self._started else self._start()
        if kind == "content_block_start":
            out += self._block_start(data)
        elif kind == "content_block_delta":
            out += self._block_delta(data)
        elif kind == "message_delta":
            delta = mapping(data.get("delta"))
            if delta.get("stop_reason"):
                self._stop_reason = delta["stop_reason"]
            self._merge_usage(data.get("usage"))
        elif kind == "message_stop":
            out += self._finish()
        elif kind == "error":
            error = mapping(data.get("error"))
            out += self.fail(str(error.get("message") or "The provider reported an error"),
                             str(error.get("type") or "api_error"))
        return out  # ping and content_block_stop need nothing on the OpenAI side

    def finish(self) -> bytes:
        """The upstream stream ended; without a message_stop the answer is incomplete."""
        if self._done:
            return b""
        return self.fail("The provider ended the stream before it was complete")

    def fail(self, message: str, kind: str = "api_error") -> bytes:
        """End the client's stream with the error frame of its API."""
        if self._done:
            return b""
        self._done = True
        return stream_error_frame("openai", message, kind=kind, code=None)

    # -- pieces -------------------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                                 "model": self._model,
                                 "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish_reason}]}
        if self._include_usage:
            chunk["usage"] = None
        return data_frame(chunk)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._chunk({"role": "assistant", "content": ""})

    def _block_start(self, data: Mapping[str, Any]) -> bytes:
        block = mapping(data.get("content_block"))
        index = data.get("index")
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return self._chunk({"content": str(block["text"])})
        if kind == "tool_use" and isinstance(index, int):
            position = len(self._tool_positions)
            self._tool_positions[index] = position
            initial = block.get("input")
            arguments = orjson.dumps(initial).decode() if isinstance(initial, Mapping) and initial else ""
            return self._chunk({"tool_calls": [{"index": position, "id": str(block.get("id", "")), "type": "function",
                                                "function": {"name": str(block.get("name", "")),
                                                             "arguments": arguments}}]})
        return b""

    def _block_delta(self, data: Mapping[str, Any]) -> bytes:
        delta = mapping(data.get("delta"))
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._chunk({"content": str(delta["text"])})
        if kind == "thinking_delta" and delta.get("thinking"):
            return self._chunk({"reasoning_content": str(delta["thinking"])})
        if kind == "input_json_delta" and delta.get("partial_json"):
            position = self._tool_positions.get(data.get("index"))  # type: ignore[arg-type]
            if position is not None:
                return self._chunk({"tool_calls": [{"index": position,
                                                    "function": {"arguments": str(delta["partial_json"])}}]})
        return b""

    def _finish(self) -> bytes:
        self._done = True
        finish = STOP_TO_FINISH.get(str(self._stop_reason), "stop")
        out = self._chunk({}, finish)
        if self._include_usage:
            out += data_frame({"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                               "model": self._model, "choices": [], "usage": chat_usage(self._usage)})
        return out + DONE_FRAME

    def _merge_usage(self, usage: Any) -> None:
        if isinstance(usage, Mapping):  # message_delta counts are cumulative: later values replace earlier
            self._usage.update({k: v for k, v in usage.items() if v is not None})
