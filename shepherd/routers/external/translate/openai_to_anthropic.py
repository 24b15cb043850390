"""OpenAI Chat Completions shapes turned into Anthropic Messages shapes.

Used in both directions of the gateway: a `/v1/chat/completions` request is rewritten for an
Anthropic backend (`chat_request_to_messages`), and an OpenAI-compatible backend's completion is
rewritten for a `/v1/messages` client (`chat_completion_to_message`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from shepherd.routers.external.translate.common import (
    TranslationError,
    as_mapping,
    image_url_to_source,
    int_or_zero,
    mapping,
    text_of,
)

# Anthropic requires max_tokens; OpenAI clients often leave it out.
DEFAULT_MAX_TOKENS = 4096


def chat_request_to_messages(
    body: Mapping[str, Any], model: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """A Chat Completions request as a Messages request for `model`."""
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise TranslationError("'messages' must be a list", "messages")
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        raise TranslationError("this model's backend returns one choice per request; 'n' must be 1", "n")
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") not in (None, "text"):
        raise TranslationError("'response_format' is not supported by this model's backend", "response_format")

    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        # Anthropic wants alternating turns: consecutive same-role messages become one turn.
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for raw in raw_messages:
        message = as_mapping(raw, "each message")
        role = message.get("role")
        if role in ("system", "developer"):
            text = text_of(message.get("content"))
            if text:
                system.append(text)
        elif role == "user":
            blocks = _user_blocks(message.get("content"))
            if blocks:
                append("user", blocks)
        elif role == "assistant":
            blocks = _assistant_blocks(message)
            if blocks:
                append("assistant", blocks)
        elif role == "tool":
            append("user", [{"type": "tool_result", "tool_use_id": str(message.get("tool_call_id", "")),
                             "content": text_of(message.get("content"))}])
        else:
            raise TranslationError(f"unsupported message role {role!r}", "messages")

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    request: dict[str, Any] = {"model": model, "messages": messages,
                               "max_tokens": max_tokens if max_tokens is not None else default_max_tokens}
    if system:
        request["system"] = "\n\n".join(system)
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        request["temperature"] = min(max(float(temperature), 0.0), 1.0)  # OpenAI allows 0..2, Anthropic 0..1
    if body.get("top_p") is not None:
        request["top_p"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        request["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        request["stop_sequences"] = stop
    if isinstance(body.get("user"), str):
        request["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if tools:
        request["tools"] = _tools(tools)
    if tools:  # a tool_choice without tools means nothing to Anthropic either
        tool_choice = _tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            tool_choice = {**(tool_choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if tool_choice is not None:
            request["tool_choice"] = tool_choice
    if body.get("stream"):
        request["stream"] = True
    return request


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError("message content must be a string or a list of parts", "messages")
    blocks: list[dict[str, Any]] = []
    for raw in content:
        part = as_mapping(raw, "each content part")
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str):
                raise TranslationError("image_url needs a 'url'", "messages")
            blocks.append({"type": "image", "source": image_url_to_source(url)})
        elif kind == "file":
            blocks.append(_document_block(part.get("file")))
        else:
            raise TranslationError(f"content part type {kind!r} is not supported by this model's backend",
                                   "messages")
    return blocks


def _document_block(file: Any) -> dict[str, Any]:
    if isinstance(file, Mapping) and isinstance(file.get("file_data"), str):
        source = image_url_to_source(file["file_data"])  # a base64 data URL, whatever its media type
        if source["type"] == "base64":
            return {"type": "document", "source": source}
    raise TranslationError("only inline (base64) files can be sent to this model's backend", "messages")


def _assistant_blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and part.get("type") in ("text", "refusal"):
                text = part.get("text", part.get("refusal"))
                if text:
                    blocks.append({"type": "text", "text": str(text)})
    elif isinstance(content, str) and content:
        blocks.append({"type": "text", "text": content})
    if message.get("function_call") is not None:
        raise TranslationError("legacy 'function_call' messages are not supported; use 'tool_calls'", "messages")
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise TranslationError("'tool_calls' must be a list", "messages")
    for raw in calls:
        call = as_mapping(raw, "each tool call")
        function = as_mapping(call.get("function"), "a tool call's 'function'")
        blocks.append({"type": "tool_use", "id": str(call.get("id") or _tool_id()),
                       "name": str(function.get("name", "")), "input": _arguments(function.get("arguments"))})
    return blocks


def _arguments(arguments: Any) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, Mapping):
        return dict(arguments)
    try:
        value = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        raise TranslationError("tool call arguments must be a JSON object", "messages") from None
    if not isinstance(value, dict):
        raise TranslationError("tool call arguments must be a JSON object", "messages")
    return value


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be a list", "tools")
    converted = []
    for raw in tools:
        tool = as_mapping(raw, "each tool")
        if tool.get("type") != "function":
            raise TranslationError(f"tool type {tool.get('type')!r} is not supported by this model's backend",
                                   "tools")
        function = as_mapping(tool.get("function"), "a tool's 'function'")
        if not isinstance(function.get("name"), str):
            raise TranslationError("each tool needs a function 'name'", "tools")
        entry: dict[str, Any] = {"name": function["name"],
                                 "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
        if function.get("description"):
            entry["description"] = function["description"]
        converted.append(entry)
    return converted


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return {"type": "tool", "name": function["name"]}
    raise TranslationError("unsupported 'tool_choice'", "tool_choice")


def _tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def tool_use_id(call_id: Any) -> str:
    """An OpenAI tool call id in Anthropic's shape: `call_X` becomes `toolu_X`, other ids stay."""
    if not isinstance(call_id, str) or not call_id:
        return _tool_id()
    return "toolu_" + call_id[5:] if call_id.startswith("call_") else call_id


# -- responses ------------------------------------------------------------------------------------

def finish_to_stop(
    finish: Any, matched_stop: Any, has_tool_calls: bool, stop_sequences: Sequence[str]
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI finish_reason."""
    if has_tool_calls or finish in ("tool_calls", "function_call"):
        return "tool_use", None
    if finish == "length":
        return "max_tokens", None
    if finish == "content_filter":
        return "refusal", None
    if isinstance(matched_stop, str) and matched_stop in stop_sequences:
        return "stop_sequence", matched_stop  # engines such as SGLang report which stop string matched
    return "end_turn", None


def chat_completion_to_message(
    completion: Mapping[str, Any], *, stop_sequences: Sequence[str] = ()
) -> dict[str, Any]:
    """A chat.completion (non-streaming response) as an Anthropic message."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise ValueError("the backend's completion has no choices")
    choice = choices[0]
    reply = mapping(choice.get("message"))
    blocks: list[dict[str, Any]] = []
    reasoning = reply.get("reasoning_content") or reply.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = text_of(reply.get("content"), "")
    calls = [c for c in reply.get("tool_calls") or [] if isinstance(c, Mapping)]
    if text and (text.strip() or not calls):
        blocks.append({"type": "text", "text": text})
    for call in calls:
        function = mapping(call.get("function"))
        blocks.append({"type": "tool_use", "id": tool_use_id(call.get("id")),
                       "name": str(function.get("name", "")), "input": lenient_arguments(function.get("arguments"))})
    if not blocks:
        blocks.append({"type": "text", "text": ""})
    stop_reason, stop_sequence = finish_to_stop(choice.get("finish_reason"), choice.get("matched_stop"),
                                                bool(calls), stop_sequences)
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": messages_usage(completion.get("usage")),
    }


def lenient_arguments(arguments: Any) -> dict[str, Any]:
    """A model's tool arguments as an object; `{}` when they are not a JSON object."""
    try:
        return _arguments(arguments)
    except TranslationError:
        return {}


def message_id(completion_id: Any) -> str:
    raw = str(completion_id or uuid.uuid4().hex)
    return raw if raw.startswith("msg_") else "msg_" + raw.removeprefix("chatcmpl-")


def messages_usage(usage: Any) -> dict[str, int]:
    """OpenAI's prompt_tokens include cached ones; Anthropic reports them apart."""
    usage = usage if isinstance(usage, Mapping) else {}
    details = usage.get("prompt_tokens_details")
    cached = int_or_zero(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    prompt = int_or_zero(usage.get("prompt_tokens"))
    return {"input_tokens": max(prompt - cached, 0), "output_tokens": int_or_zero(usage.get("completion_tokens")),
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}
