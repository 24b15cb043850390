"""A Chat Completions stream (OpenAI chunks) re-emitted as a Messages stream (Anthropic events).

Feed it the upstream's SSE events in order; it returns the bytes to send to the client. The output
follows Anthropic's grammar exactly: message_start, then for each content block its
content_block_start / *_delta / content_block_stop, then message_delta (stop reason and usage) and
message_stop. Text, reasoning and every tool call each get their own block; tool arguments travel as
input_json_delta fragments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from shepherd.routers.common.sse import SSEEvent, event_frame, stream_error_frame
from shepherd.routers.external.translate.common import mapping
from shepherd.routers.external.translate.openai_to_anthropic import (
    finish_to_stop,
    message_id,
    messages_usage,
    tool_use_id,
)


class ChatStreamToMessages:
    def __init__(self, *, model: str, stop_sequences: Sequence[str] = ()) -> None:
        self._model = model
        self._stop_sequences = stop_sequences
        self._started = False
        self._done = False
        self._open_index: int | None = None
        self._open_kind: str | None = None  # "text" | "thinking" | "tool"
        self._next_index = 0
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index -> content block index
        self._finish_reason: Any = None
        self._matched_stop: Any = None
        self._usage: Mapping[str, Any] | None = None
        self._saw_done = False

    @property
    def done(self) -> bool:
        """Whether the client's stream is complete (message_stop or error sent)."""
        return self._done

    def feed(self, event: SSEEvent) -> bytes:
        if self._done:
            return b""
        data = event.data.strip()
        if not data:
            return b""
        if data == "[DONE]":
            self._saw_done = True
            return self.finish()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self.fail("The provider sent a malformed stream event")
        if not isinstance(chunk, dict):
            return b""
        return self.feed_chunk(chunk)

    def feed_chunk(self, chunk: Mapping[str, Any]) -> bytes:
        """One chunk already parsed (the gateway's own gRPC pipeline hands them over without JSON)."""
        if self._done:
            return b""
        if chunk.get("error"):
            error = chunk["error"] if isinstance(chunk["error"], Mapping) else {"message": str(chunk["error"])}
            return self.fail(str(error.get("message") or "The provider reported an error"), "api_error")
        out: list[bytes] = []
        if not self._started:
            out.append(self._start(chunk))
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            delta = mapping(choice.get("delta"))
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.append(self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}))
                out.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(self._open("text", {"type": "text", "text": ""}))
                out.append(self._delta({"type": "text_delta", "text": content}))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, Mapping):
                    out.append(self._tool_delta(call))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self._matched_stop = choice.get("matched_stop")
        return b"".join(out)

    def finish(self) -> bytes:
        """The upstream stream ended. Closes the message, or reports an error if it was cut short."""
        if self._done:
            return b""
        if self._finish_reason is None and not self._saw_done:
            return self.fail("The provider ended the stream before it was complete")
        out = [self._start({})] if not self._started else []
        out.append(self._close())
        stop_reason, stop_sequence = finish_to_stop(self._finish_reason, self._matched_stop, bool(self._tool_blocks),
                                                    self._stop_sequences)
        usage = messages_usage(self._usage)
        out.append(event_frame("message_delta", {"type": "message_delta",
                                                 "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                                 "usage": usage}))
        out.append(event_frame("message_stop", {"type": "message_stop"}))
        self._done = True
        return b"".join(out)

    def fail(self, message: str, kind: str = "api_error") -> bytes:
        """End the client's stream with the error frame of its API."""
        if self._done:
            return b""
        self._done = True
        return stream_error_frame("anthropic", message, kind=kind, code=None)

    def whole_block(self, block: dict[str, Any]) -> bytes:
        """A content block the gateway made itself (an MCP call it ran), started and stopped at once."""
        if self._done:
            return b""
        out = b"" if self._started else self._start({})
        out += self._open("whole", block) + self._close()
        return out

    # -- blocks -------------------------------------------------------------------------------

    def _start(self, chunk: Mapping[str, Any]) -> bytes:
        self._started = True
        usage = messages_usage(chunk.get("usage"))
        message: dict[str, Any] = {"id": message_id(chunk.get("id")), "type": "message", "role": "assistant",
                   "model": chunk.get("model") or self._model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": usage}
        return event_frame("message_start", {"type": "message_start", "message": message})

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        if self._open_kind == kind and kind not in ("tool", "whole"):
            return b""
        out = self._close()
        index = self._next_index
        self._next_index += 1
        self._open_index, self._open_kind = index, kind
        return out + event_frame("content_block_start",
                                 {"type": "content_block_start", "index": index, "content_block": block})

    def _close(self) -> bytes:
        if self._open_index is None:
            return b""
        index = self._open_index
        self._open_index = self._open_kind = None
        return event_frame("content_block_stop", {"type": "content_block_stop", "index": index})

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        target = self._open_index if index is None else index
        return event_frame("content_block_delta", {"type": "content_block_delta", "index": target, "delta": delta})

    def _tool_delta(self, call: Mapping[str, Any]) -> bytes:
        position = call.get("index")
        if not isinstance(position, int):  # some servers omit the index: a call with an id is a new one
            position = len(self._tool_blocks) if call.get("id") or not self._tool_blocks else len(self._tool_blocks) - 1
        function = mapping(call.get("function"))
        out = b""
        if position not in self._tool_blocks:
            block = {"type": "tool_use", "id": tool_use_id(call.get("id")),
                     "name": str(function.get("name") or ""), "input": {}}
            out = self._open("tool", block)
            assert self._open_index is not None
            self._tool_blocks[position] = self._open_index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # A late fragment for an earlier call keeps that call's block index (clients index by it).
            out += self._delta({"type": "input_json_delta", "partial_json": arguments}, self._tool_blocks[position])
        return out
