"""Anthropic Messages shapes turned into OpenAI Chat Completions shapes.

Used in both directions of the gateway: a `/v1/messages` request is rewritten for an OpenAI-compatible
backend (`messages_request_to_chat`), and an Anthropic backend's message is rewritten for a
`/v1/chat/completions` client (`message_to_chat_completion`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from shepherd.routers.external.translate.common import (
    TranslationError,
    as_mapping,
    int_or_zero,
    source_to_image_url,
    text_of,
)

# Anthropic stop_reason -> OpenAI finish_reason
STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def messages_request_to_chat(
    body: Mapping[str, Any], model: str, *, max_tokens_field: str = "max_tokens", engine: bool = False
) -> dict[str, Any]:
    """A Messages request as a Chat Completions request for `model`.

    `max_tokens_field` is `max_completion_tokens` for OpenAI itself (its reasoning models refuse
    `max_tokens`) and `max_tokens` for everything else. `engine` is for inference engines (HTTP
    engines and the gateway's own gRPC pipeline), whose chat API takes more than a provider's:
    `top_k`, the thinking switch as chat-template kwargs, and earlier turns' thinking as
    `reasoning_content` (chat templates replay it).
    """
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        if not isinstance(system, (str, list)):
            raise TranslationError("'system' must be a string or a list of text blocks", "system")
        text = text_of(system)
        if text:
            messages.append({"role": "system", "content": text})
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise TranslationError("'messages' must be a list", "messages")
    for raw in raw_messages:
        message = as_mapping(raw, "each message")
        role = message.get("role")
        if role == "user":
            messages.extend(_user_messages(message.get("content")))
        elif role == "assistant":
            messages.append(_assistant_message(message.get("content"), keep_thinking=engine))
        else:
            raise TranslationError(f"unsupported message role {role!r}; use 'user' or 'assistant'", "messages")

    chat: dict[str, Any] = {"model": model, "messages": messages}
    if body.get("max_tokens") is not None:
        chat[max_tokens_field] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            chat[key] = body[key]
    stop = body.get("stop_sequences")
    if isinstance(stop, list) and stop:
        chat["stop"] = stop
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    tools = body.get("tools")
    if tools:
        chat["tools"] = _tools(tools)
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and tools:  # OpenAI refuses a tool_choice without tools
        choice, parallel = _tool_choice(tool_choice)
        chat["tool_choice"] = choice
        if parallel is False:
            chat["parallel_tool_calls"] = False
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # usage feeds the final message_delta
    if engine:
        if body.get("top_k") is not None:
            chat["top_k"] = body["top_k"]
        thinking = _thinking_switch(body.get("thinking"))
        if thinking is not None:
            # Templates name the switch `enable_thinking` (Qwen) or `thinking` (DeepSeek); they ignore the other.
            chat["chat_template_kwargs"] = {"enable_thinking": thinking, "thinking": thinking}
    return chat


def _thinking_switch(thinking: Any) -> bool | None:
    """Anthropic's `thinking` setting as the chat template's switch; None leaves the template's default."""
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, Mapping) else None
    if kind in ("enabled", "adaptive"):
        return True
    if kind == "disabled":
        return False
    raise TranslationError("'thinking.type' must be enabled, adaptive or disabled", "thinking")


def _user_messages(content: Any) -> list[dict[str, Any]]:
    """One Anthropic user turn: its tool results become `tool` messages, placed first because
    OpenAI wants them right after the assistant's tool calls; the rest stays a user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise TranslationError("message content must be a string or a list of blocks", "messages")
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for raw in content:
        block = as_mapping(raw, "each content block")
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image_part(block))
        elif kind == "document":
            parts.append(_document_part(block))
        elif kind == "tool_result":
            text, images = _tool_result(block)
            tool_messages.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text})
            parts.extend(images)  # tool messages carry text only; images ride along in the user turn
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise TranslationError(f"content block type {kind!r} is not supported by this model's backend",
                                   "messages")
    messages = tool_messages
    if parts:
        if len(parts) == 1 and parts[0]["type"] == "text":
            messages.append({"role": "user", "content": parts[0]["text"]})
        else:
            messages.append({"role": "user", "content": parts})
    return messages


def _image_part(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": source_to_image_url(block.get("source"))}}


def _document_part(block: Mapping[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, Mapping):
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            return {"type": "text", "text": source["data"]}
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            media = source.get("media_type") or "application/pdf"
            return {"type": "file", "file": {"filename": str(block.get("title") or "document"),
                                             "file_data": f"data:{media};base64,{source['data']}"}}
    raise TranslationError("only text and base64 documents can be sent to this model's backend", "messages")


def _tool_result(block: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    content = block.get("content")
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise TranslationError("tool_result content must be a string or a list of blocks", "messages")
    images = [_image_part(item) for item in content if isinstance(item, Mapping) and item.get("type") == "image"]
    return text_of(content), images


def _assistant_message(content: Any, keep_thinking: bool = False) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise TranslationError("message content must be a string or a list of blocks", "messages")
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for raw in content:
        block = as_mapping(raw, "each content block")
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            tool_calls.append({"id": str(block.get("id", "")), "type": "function",
                               "function": {"name": str(block.get("name", "")),
                                            "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind == "thinking":
            if keep_thinking and isinstance(block.get("thinking"), str):
                thinking.append(block["thinking"])
            # a provider's chat API has no way to take back a signed reasoning block
        elif kind == "redacted_thinking":
            continue
        else:
            raise TranslationError(f"content block type {kind!r} is not supported by this model's backend",
                                   "messages")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if thinking:
        message["reasoning_content"] = "\n".join(thinking)
    return message


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be a list", "tools")
    converted = []
    for raw in tools:
        tool = as_mapping(raw, "each tool")
        if tool.get("type") not in (None, "custom"):
            raise TranslationError(f"tool type {tool.get('type')!r} is not supported by this model's backend",
                                   "tools")
        if not isinstance(tool.get("name"), str):
            raise TranslationError("each tool needs a 'name'", "tools")
        function: dict[str, Any] = {"name": tool["name"],
                                    "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            function["description"] = tool["description"]
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: Any) -> tuple[Any, bool | None]:
    """(OpenAI tool_choice, parallel_tool_calls) for an Anthropic tool_choice."""
    if not isinstance(choice, Mapping):
        raise TranslationError("'tool_choice' must be an object", "tool_choice")
    parallel = False if choice.get("disable_parallel_tool_use") else None
    kind = choice.get("type")
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise TranslationError(f"unsupported tool_choice type {kind!r}", "tool_choice")


# -- responses ------------------------------------------------------------------------------------

def message_to_chat_completion(message: Mapping[str, Any], *, created: int) -> dict[str, Any]:
    """An Anthropic message (non-streaming response) as a chat.completion."""
    content = message.get("content")
    if not isinstance(content, list):
        raise ValueError("the backend's message has no content list")
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "thinking":
            thinking.append(str(block.get("thinking", "")))
        elif kind == "tool_use":
            tool_calls.append({"id": str(block.get("id", "")), "type": "function",
                               "function": {"name": str(block.get("name", "")),
                                            "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    reply: dict[str, Any] = {"role": "assistant",
                             "content": "".join(texts) if texts or not tool_calls else None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    if thinking:
        reply["reasoning_content"] = "".join(thinking)
    return {
        "id": chat_id(message.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": STOP_TO_FINISH.get(str(message.get("stop_reason")), "stop")}],
        "usage": chat_usage(message.get("usage")),
    }


def chat_id(message_id: Any) -> str:
    raw = str(message_id or "")
    return "chatcmpl-" + raw.removeprefix("msg_")


def chat_usage(usage: Any) -> dict[str, Any]:
    """Anthropic counts cached input apart from `input_tokens`; OpenAI's prompt_tokens include it."""
    usage = usage if isinstance(usage, Mapping) else {}
    cached = int_or_zero(usage.get("cache_read_input_tokens"))
    prompt = int_or_zero(usage.get("input_tokens")) + cached + int_or_zero(usage.get("cache_creation_input_tokens"))
    completion = int_or_zero(usage.get("output_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
