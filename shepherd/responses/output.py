"""Chat Completions answers as Response objects: whole, or as the Responses event stream.

Output items come in the order OpenAI gives them: reasoning, then the assistant's message, then its
function calls. A stream follows OpenAI's grammar exactly: response.created, response.in_progress,
then per item output_item.added, (content_part.added, output_text.delta..., output_text.done,
content_part.done | reasoning_text.delta..., reasoning_text.done | function_call_arguments.delta...,
function_call_arguments.done), output_item.done, and response.completed (or response.incomplete
when the output hit max_output_tokens). Every event carries a sequence_number.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from shepherd.responses.request import ResponseRequest
from shepherd.storage.base import new_item_id

_ECHOED = ("instructions", "metadata", "temperature", "top_p", "user", "max_output_tokens", "tool_choice",
           "parallel_tool_calls", "top_logprobs", "truncation", "reasoning", "service_tier", "prompt_cache_key",
           "safety_identifier")


def base_response(request: ResponseRequest, response_id: str, status: str) -> dict[str, Any]:
    """The Response object before any output: the request's parameters echoed."""
    body = request.body
    response: dict[str, Any] = {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
        "background": request.background, "error": None, "incomplete_details": None, "model": request.model,
        "output": [], "previous_response_id": request.previous_response_id, "store": request.store,
        "usage": None, "completed_at": None,
    }
    for name in _ECHOED:
        response[name] = body.get(name)
    response["metadata"] = body.get("metadata") or {}
    response["tool_choice"] = body.get("tool_choice") or "auto"
    response["parallel_tool_calls"] = body.get("parallel_tool_calls") is not False
    response["truncation"] = body.get("truncation") or "disabled"
    # An mcp tool's credentials are the client's to keep: not echoed, not stored.
    response["tools"] = [{k: v for k, v in t.items() if k not in ("headers", "authorization")}
                         if isinstance(t, dict) and t.get("type") == "mcp" else t for t in body.get("tools") or []]
    raw_text = body.get("text")
    text: dict[str, Any] = raw_text if isinstance(raw_text, dict) else {}
    response["text"] = {**text, "format": text.get("format") or {"type": "text"}}
    response["reasoning"] = body.get("reasoning") or {"effort": None, "summary": None}
    if request.conversation_id is not None:
        response["conversation"] = {"id": request.conversation_id}
    return response


def usage_of(chat_usage: Any) -> dict[str, Any] | None:
    if not isinstance(chat_usage, dict):
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    prompt_details = chat_usage.get("prompt_tokens_details") or {}
    completion_details = chat_usage.get("completion_tokens_details") or {}
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": int(prompt_details.get("cached_tokens") or 0)},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)},
            "total_tokens": int(chat_usage.get("total_tokens") or prompt + completion)}


def _logprobs(choice_logprobs: Any) -> list[dict[str, Any]]:
    content = choice_logprobs.get("content") if isinstance(choice_logprobs, dict) else None
    if not isinstance(content, list):
        return []
    return [{"token": t.get("token", ""), "logprob": t.get("logprob", 0.0), "bytes": t.get("bytes") or [],
             "top_logprobs": [{"token": x.get("token", ""), "logprob": x.get("logprob", 0.0),
                               "bytes": x.get("bytes") or []} for x in t.get("top_logprobs") or []]}
            for t in content if isinstance(t, dict)]


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "status": status, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}] if text else []}


def _text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": parts}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def _finish(response: dict[str, Any], finish_reason: Any, usage: Any) -> dict[str, Any]:
    response["usage"] = usage_of(usage)
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"
    response["completed_at"] = int(time.time())
    return response


def turn_items(reasoning: Any, text: Any, logprobs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A model turn's reasoning and message items (none for empty parts)."""
    items: list[dict[str, Any]] = []
    if isinstance(reasoning, str) and reasoning:
        items.append(_reasoning_item(new_item_id("reasoning"), reasoning, "completed"))
    if isinstance(text, str) and text:
        items.append(_message_item(new_item_id("message"), [_text_part(text, logprobs or [])], "completed"))
    return items


def complete_from_chat(response: dict[str, Any], completion: dict[str, Any]) -> dict[str, Any]:
    """Fill `response` from a whole chat completion."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    output = turn_items(message.get("reasoning_content") or message.get("reasoning"), message.get("content"),
                        _logprobs(choice.get("logprobs")))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(_call_item(new_item_id("function_call"), str(call.get("id") or new_item_id("call")),
                                 str(function.get("name") or ""), str(function.get("arguments") or ""), "completed"))
    response["output"] = output
    return _finish(response, choice.get("finish_reason"), completion.get("usage"))


class EventStream:
    """Turns chat chunks into Responses events, building the final Response object as it goes."""

    def __init__(self, response: dict[str, Any], first_sequence: int = 0) -> None:
        self.response = response
        self.sequence = first_sequence
        self._kind: str | None = None  # the open item: reasoning | message | None
        self._item: dict[str, Any] | None = None
        self._text = ""
        self._logprobs: list[dict[str, Any]] = []
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its open function_call item
        self._finish_reason: Any = None
        self._usage: Any = None

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def snapshot(self) -> dict[str, Any]:
        return {**self.response, "output": list(self.response["output"])}

    def start(self) -> list[dict[str, Any]]:
        return [self.event("response.created", response=self.snapshot()),
                self.event("response.in_progress", response=self.snapshot())]

    def _index(self) -> int:
        return len(self.response["output"]) - 1

    def _open(self, kind: str) -> list[dict[str, Any]]:
        events = self._close()
        self._kind, self._text, self._logprobs = kind, "", []
        if kind == "reasoning":
            self._item = _reasoning_item(new_item_id("reasoning"), "", "in_progress")
        else:
            self._item = _message_item(new_item_id("message"), [], "in_progress")
        self.response["output"].append(self._item)
        index = self._index()
        events.append(self.event("response.output_item.added", output_index=index, item=dict(self._item)))
        if kind == "message":
            events.append(self.event("response.content_part.added", item_id=self._item["id"], output_index=index,
                                     content_index=0, part=_text_part("", [])))
        return events

    def _close(self) -> list[dict[str, Any]]:
        item, kind = self._item, self._kind
        if item is None:
            return []
        self._item = self._kind = None
        index = self.response["output"].index(item)
        events = []
        if kind == "reasoning":
            events.append(self.event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                     content_index=0, text=self._text))
            done = _reasoning_item(item["id"], self._text, "completed")
        else:
            part = _text_part(self._text, self._logprobs)
            events.append(self.event("response.output_text.done", item_id=item["id"], output_index=index,
                                     content_index=0, text=self._text, logprobs=self._logprobs))
            events.append(self.event("response.content_part.done", item_id=item["id"], output_index=index,
                                     content_index=0, part=part))
            done = _message_item(item["id"], [part], "completed")
        self.response["output"][index] = done
        events.append(self.event("response.output_item.done", output_index=index, item=done))
        return events

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return events
        choice = choices[0]
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            if self._kind != "reasoning":
                events += self._open("reasoning")
            assert self._item is not None
            self._text += reasoning
            events.append(self.event("response.reasoning_text.delta", item_id=self._item["id"],
                                     output_index=self._index(), content_index=0, delta=reasoning))
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._kind != "message":
                events += self._open("message")
            assert self._item is not None
            logprobs = _logprobs(choice.get("logprobs"))
            self._text += text
            self._logprobs += logprobs
            events.append(self.event("response.output_text.delta", item_id=self._item["id"],
                                     output_index=self._index(), content_index=0, delta=text, logprobs=logprobs))
        for call in delta.get("tool_calls") or []:
            events += self._tool_call(call)
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        return events

    def _tool_call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        index = int(call.get("index") or 0)
        function = call.get("function") or {}
        item = self._calls.get(index)
        if item is None:
            events += self._close()
            item = _call_item(new_item_id("function_call"), str(call.get("id") or new_item_id("call")),
                              str(function.get("name") or ""), "", "in_progress")
            self._calls[index] = item
            self.response["output"].append(item)
            events.append(self.event("response.output_item.added", output_index=self._index(), item=dict(item)))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item["arguments"] += arguments
            events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=self.response["output"].index(item), delta=arguments))
        return events

    # -- items the gateway makes itself (MCP: shepherd/responses/mcp.py) ---------------------------

    def _add(self, item: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        events = self._close()
        self.response["output"].append(item)
        index = self._index()
        events.append(self.event("response.output_item.added", output_index=index, item=dict(item)))
        return events, index

    def whole_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        events, index = self._add(item)
        events.append(self.event("response.output_item.done", output_index=index, item=dict(item)))
        return events

    def list_tools(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        events, index = self._add(item)
        events.append(self.event("response.mcp_list_tools.in_progress", item_id=item["id"], output_index=index))
        outcome = "failed" if item.get("error") else "completed"
        events.append(self.event(f"response.mcp_list_tools.{outcome}", item_id=item["id"], output_index=index))
        events.append(self.event("response.output_item.done", output_index=index, item=dict(item)))
        return events

    def call_started(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """An mcp_call about to run (`item` is updated in place as it goes; call_finished ends it)."""
        events, index = self._add(item)
        events[-1]["item"] = {**item, "arguments": "", "status": "in_progress"}
        ids = {"item_id": item["id"], "output_index": index}
        events.append(self.event("response.mcp_call_arguments.delta", **ids, delta=item["arguments"]))
        events.append(self.event("response.mcp_call_arguments.done", **ids, arguments=item["arguments"]))
        events.append(self.event("response.mcp_call.in_progress", **ids))
        return events

    def call_finished(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if not any(existing is item for existing in self.response["output"]):  # never started (not run)
            events, _ = self._add(item)
        index = next(i for i, existing in enumerate(self.response["output"]) if existing is item)
        outcome = "completed" if item["status"] == "completed" else "failed"
        events.append(self.event(f"response.mcp_call.{outcome}", item_id=item["id"], output_index=index))
        events.append(self.event("response.output_item.done", output_index=index, item=dict(item)))
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The closing events; the Response object is complete afterwards (not yet the terminal event)."""
        events = self._close()
        for item in self._calls.values():
            index = self.response["output"].index(item)
            events.append(self.event("response.function_call_arguments.done", item_id=item["id"],
                                     output_index=index, name=item["name"], arguments=item["arguments"]))
            item["status"] = "completed"
            events.append(self.event("response.output_item.done", output_index=index, item=dict(item)))
        _finish(self.response, self._finish_reason, self._usage)
        return events

    def terminal(self) -> dict[str, Any]:
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        return self.event(kind, response=self.snapshot())


async def events_from_chat(stream: AsyncIterable[dict[str, Any]],
                           builder: EventStream) -> AsyncIterator[dict[str, Any]]:
    """Every event after response.in_progress, up to (not including) the terminal one."""
    async for chunk in stream:
        for event in builder.feed(chunk):
            yield event
    for event in builder.finish():
        yield event


async def replay_events(response: dict[str, Any], after: int = -1) -> AsyncIterator[dict[str, Any]]:
    """The event stream of a response already finished (or no longer running here), from its record."""
    started = {**response, "status": "in_progress", "output": []}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": started}]
    for index, item in enumerate(response.get("output") or []):
        events.append({"type": "response.output_item.added", "output_index": index, "item": item})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    status = response.get("status")
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete",
                "failed": "response.failed"}.get(str(status))
    if terminal is not None:
        events.append({"type": terminal, "response": response})
    for sequence, event in enumerate(events):
        if sequence > after:
            yield {**event, "sequence_number": sequence}
