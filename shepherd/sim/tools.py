"""Deterministic tool use for the simulator, in both the OpenAI and the Anthropic API.

* When the conversation ends with tool results, the answer is text that quotes them
  ("Tool result: ..."), so a test can see a result make the whole round trip.
* Otherwise, when the request offers tools and either forces one (tool_choice) or the last user
  message names one, the answer is a call to that tool. Required string arguments take the last
  word of the user's message ("... get_weather for Paris" -> {"city": "Paris"}); other types get a
  fixed value of their type.
* Anything else is an ordinary generated answer (None here).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shepherd.sim.formats import DONE, sse, sse_event
from shepherd.sim.text import prompt_text, tokenize


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return orjson.dumps(self.arguments).decode()


@dataclass
class ScriptedTurn:
    text: str
    call: ToolCall | None
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.text.split()) + (len(tokenize(self.call.arguments_json)) + 1 if self.call else 0)


def script_turn(body: Mapping[str, Any], api: str) -> ScriptedTurn | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    prompt_tokens = len(tokenize(prompt_text(body)))
    results = _trailing_tool_results(messages, api)
    if results:
        return ScriptedTurn("Tool result: " + " | ".join(results), None, prompt_tokens)
    tools = _tools(body.get("tools"), api)
    if not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none" or (isinstance(choice, Mapping) and choice.get("type") == "none"):
        return None
    user_text = _last_user_text(messages)
    name = _forced_tool(choice, api, tools) or next((name for name in tools if name in user_text), None)
    if name is None:
        return None
    call = ToolCall(("toolu_" if api == "anthropic" else "call_") + uuid.uuid4().hex[:24], name,
                    _arguments(tools[name], user_text))
    lead = f"Calling {name}." if api == "anthropic" else ""  # Claude usually says something first
    return ScriptedTurn(lead, call, prompt_tokens)


def _tools(raw: Any, api: str) -> dict[str, Mapping[str, Any]]:
    """tool name -> its JSON schema."""
    tools: dict[str, Mapping[str, Any]] = {}
    for tool in raw if isinstance(raw, list) else []:
        if not isinstance(tool, Mapping):
            continue
        spec = tool.get("function") if api == "openai" else tool
        if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
            schema = spec.get("parameters") if api == "openai" else spec.get("input_schema")
            tools[spec["name"]] = schema if isinstance(schema, Mapping) else {}
    return tools


def _forced_tool(choice: Any, api: str, tools: Mapping[str, Any]) -> str | None:
    """The tool the request forces, None when the model may choose."""
    first = next(iter(tools))
    if choice == "required" or (isinstance(choice, Mapping) and choice.get("type") == "any"):
        return first
    if isinstance(choice, Mapping):
        if api == "openai" and isinstance(choice.get("function"), Mapping):
            return str(choice["function"].get("name") or first)
        if api == "anthropic" and choice.get("type") == "tool":
            return str(choice.get("name") or first)
    return None


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def _trailing_tool_results(messages: Sequence[Any], api: str) -> list[str]:
    if api == "openai":
        results: list[str] = []
        for message in reversed(messages):
            if not isinstance(message, Mapping) or message.get("role") != "tool":
                break
            results.insert(0, _text(message.get("content")))
        return results
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "user" or not isinstance(last.get("content"), list):
        return []
    return [_text(block.get("content")) for block in last["content"]
            if isinstance(block, Mapping) and block.get("type") == "tool_result"]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text")) for part in content
                        if isinstance(part, Mapping) and isinstance(part.get("text"), str))
    return ""


def _arguments(schema: Mapping[str, Any], user_text: str) -> dict[str, Any]:
    found = schema.get("properties")
    properties: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    required = schema.get("required")
    names = [n for n in required if n in properties] if isinstance(required, list) else list(properties)
    words = [w.strip(".,!?;:'\"") for w in user_text.split()]
    last_word = next((w for w in reversed(words) if w), "sim")
    samples = {"string": last_word, "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}
    arguments: dict[str, Any] = {}
    for name in names:
        prop = properties[name] if isinstance(properties[name], Mapping) else {}
        enum = prop.get("enum")
        arguments[name] = enum[0] if isinstance(enum, list) and enum else samples.get(str(prop.get("type")), last_word)
    return arguments


# -- OpenAI Chat Completions ----------------------------------------------------------------------

def _openai_usage(turn: ScriptedTurn) -> dict[str, Any]:
    return {"prompt_tokens": turn.prompt_tokens, "completion_tokens": turn.completion_tokens,
            "total_tokens": turn.prompt_tokens + turn.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0}}


def _openai_tool_calls(call: ToolCall) -> list[dict[str, Any]]:
    return [{"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}]


def openai_completion(turn: ScriptedTurn, request_id: str, model: str, created: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if turn.call:
        message["tool_calls"] = _openai_tool_calls(turn.call)
    return {"id": request_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if turn.call else "stop"}],
            "usage": _openai_usage(turn)}


def openai_stream(turn: ScriptedTurn, request_id: str, model: str, created: int, include_usage: bool) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                                "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                             "finish_reason": finish}]}
        if include_usage:
            body["usage"] = None
        return sse(body)

    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"content": piece}) for piece in _pieces(turn.text)]
    if turn.call:
        call = turn.call
        frames.append(chunk({"tool_calls": [{"index": 0, "id": call.id, "type": "function",
                                             "function": {"name": call.name, "arguments": ""}}]}))
        frames += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                   for part in _thirds(call.arguments_json)]
    frames.append(chunk({}, "tool_calls" if turn.call else "stop"))
    if include_usage:
        frames.append(sse({"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [], "usage": _openai_usage(turn)}))
    frames.append(DONE)
    return frames


# -- Anthropic Messages ---------------------------------------------------------------------------

def _anthropic_usage(turn: ScriptedTurn) -> dict[str, Any]:
    return {"input_tokens": turn.prompt_tokens, "output_tokens": turn.completion_tokens,
            "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


def anthropic_message(turn: ScriptedTurn, request_id: str, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": turn.text}] if turn.text else []
    if turn.call:
        content.append({"type": "tool_use", "id": turn.call.id, "name": turn.call.name, "input": turn.call.arguments})
    return {"id": request_id, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": "tool_use" if turn.call else "end_turn", "stop_sequence": None,
            "usage": _anthropic_usage(turn)}


def anthropic_stream(turn: ScriptedTurn, request_id: str, model: str) -> list[bytes]:
    start: dict[str, Any] = {"id": request_id, "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None,
             "usage": {**_anthropic_usage(turn), "output_tokens": 1}}
    frames = [sse_event("message_start", {"type": "message_start", "message": start})]
    index = 0
    if turn.text:
        frames.append(sse_event("content_block_start", {"type": "content_block_start", "index": index,
                                                        "content_block": {"type": "text", "text": ""}}))
        frames.append(sse_event("ping", {"type": "ping"}))
        frames += [sse_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "text_delta", "text": piece}})
                   for piece in _pieces(turn.text)]
        frames.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if turn.call:
        call = turn.call
        frames.append(sse_event("content_block_start", {
            "type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}}))
        frames += [sse_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "input_json_delta", "partial_json": part}})
                   for part in ["", *_thirds(call.arguments_json)]]
        frames.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    frames.append(sse_event("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": "tool_use" if turn.call else "end_turn",
                                           "stop_sequence": None},
        "usage": {"output_tokens": turn.completion_tokens}}))
    frames.append(sse_event("message_stop", {"type": "message_stop"}))
    return frames


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)] if text else []


def _thirds(text: str) -> list[str]:
    """Arguments arrive in fragments that split the JSON mid-token, as real streams do."""
    step = max(1, len(text) // 3)
    return [text[i:i + step] for i in range(0, len(text), step)]


# -- gRPC engines: the same script, read from a Qwen3-style rendered prompt ----------------------------

def rendered_prompt_answer(prompt: str) -> str | None:
    """The scripted answer for a prompt rendered with a Qwen3-style chat template (what a gRPC engine
    sees): tool results after the last user turn are quoted; otherwise a tool from the `<tools>` block
    that the last user message names is called, as `<tool_call>` JSON. None: an ordinary answer."""
    turns = prompt.split("<|im_start|>")
    last_user = next((t for t in reversed(turns) if t.startswith("user")), None)
    if last_user is None or "<tools>\n" not in prompt:
        return None
    if "<tool_response>" in last_user:
        results = [part.split("</tool_response>")[0].strip() for part in last_user.split("<tool_response>")[1:]]
        return "Tool result: " + "; ".join(results)
    tools: dict[str, Mapping[str, Any]] = {}
    block = prompt.split("<tools>\n", 1)[1].split("</tools>", 1)[0]
    for line in block.splitlines():
        try:
            spec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        function = spec.get("function", spec) if isinstance(spec, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            schema = function.get("parameters")
            tools[function["name"]] = schema if isinstance(schema, Mapping) else {}
    user_text = last_user[len("user"):].split("<|im_end|>")[0].strip()
    name = next((name for name in tools if name in user_text), None)
    if name is None:
        return None
    call = {"name": name, "arguments": _arguments(tools[name], user_text)}
    return "<tool_call>\n" + orjson.dumps(call).decode() + "\n</tool_call>"
