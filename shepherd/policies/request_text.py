"""Routing text: the part of a request body that prefix-aware policies match on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def extract_routing_text(path: str, body: Mapping[str, Any] | None) -> str:
    """Return the request's prompt as one string (chat messages joined with single spaces)."""
    if not body:
        return ""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        system = body.get("system")  # Anthropic Messages keeps the system prompt outside messages
        if system is not None:
            _append_content(parts, system)
        append = parts.append
        for message in messages:
            # `type(...) is` first: an isinstance check against the Mapping ABC costs several times more
            if type(message) is dict or isinstance(message, Mapping):
                content = message.get("content")
                if type(content) is str:
                    append(content)
                else:
                    _append_content(parts, content)
                reasoning = message.get("reasoning_content")
                if type(reasoning) is str or isinstance(reasoning, str):
                    append(reasoning)
        return " ".join(parts)
    for key in ("prompt", "text", "input", "inputs"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return " ".join(_input_parts(value))
    input_ids = body.get("input_ids")
    if isinstance(input_ids, list):
        return " ".join(str(token) for token in input_ids if isinstance(token, int))
    return ""


def _append_content(parts: list[str], content: Any) -> None:
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for block in content:
            if isinstance(block, Mapping) and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif isinstance(block, str):
                parts.append(block)


def _input_parts(items: list[Any]) -> list[str]:
    """A list input: strings or token ids (completions, embeddings), or Responses items (messages,
    a tool call's output)."""
    parts: list[str] = []
    for item in items:
        if isinstance(item, (str, int)):
            parts.append(str(item))
        elif isinstance(item, Mapping):
            _append_content(parts, item.get("content"))
            if isinstance(item.get("output"), str):
                parts.append(item["output"])
    return parts
