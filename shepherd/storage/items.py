"""Conversation items as clients send and see them <-> ConversationItem records.

A record keeps `id`, `type`, `role` and `status` in their own fields; `content` holds the rest: a
message's content list (or `{"content", "phase"}` when a phase was given), every other type's
remaining fields as an object. The Conversations API and the Responses path both use these two
functions, so an item reads back exactly as it was written, whichever path wrote it.
"""

from __future__ import annotations

from typing import Any

from shepherd.storage.base import ConversationItem, new_item_id

_OWN_FIELDS = ("id", "type", "role", "status")
_TEXT_PART = {"user": "input_text", "system": "input_text", "developer": "input_text", "assistant": "output_text"}


def item_record(item: dict[str, Any], response_id: str | None = None) -> ConversationItem:
    """The record for a (validated) item object; an item without an id gets a new one."""
    item_type = str(item.get("type") or "message")
    role = item.get("role")
    if item_type == "message":
        content: Any = message_content(str(role), item.get("content"))
        if item.get("phase") is not None:
            content = {"content": content, "phase": item["phase"]}
    else:
        content = {k: v for k, v in item.items() if k not in _OWN_FIELDS}
    return ConversationItem(id=str(item.get("id") or new_item_id(item_type)), item_type=item_type, content=content,
                            role=str(role) if role is not None else None,
                            status=str(item.get("status") or "completed"), response_id=response_id)


def item_json(item: ConversationItem) -> dict[str, Any]:
    """The item as the API shows it: `{id, type, role?, status, ...its own fields}`."""
    shown: dict[str, Any] = {"id": item.id, "type": item.item_type}
    if item.role is not None:
        shown["role"] = item.role
    shown["status"] = item.status
    content = item.content
    if item.item_type == "message":
        if isinstance(content, dict) and "content" in content:
            shown["content"] = content["content"]
            if content.get("phase") is not None:
                shown["phase"] = content["phase"]
        else:
            shown["content"] = content
    elif isinstance(content, dict):
        shown.update({k: v for k, v in content.items() if k not in shown})
    return shown


def message_content(role: str, content: Any) -> Any:
    """A message's content as a list of parts (plain text becomes one text part of the role's kind)."""
    if isinstance(content, str):
        return [{"type": _TEXT_PART.get(role, "input_text"), "text": content}]
    return content
