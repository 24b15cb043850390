"""Record <-> stored-row conversion shared by the SQL and Redis backends (JSON columns as text)."""

from __future__ import annotations

from typing import Any

import orjson

from shepherd.storage.base import Conversation, ConversationItem, StoredResponse


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def loads(value: str | bytes | None) -> Any:
    return None if value is None else orjson.loads(value)


def metadata_text(metadata: dict[str, str] | None) -> str | None:
    return dumps(metadata) if metadata else None


def conversation(row_id: str, created_at: int, metadata: str | bytes | None, tenant: str | None = None) -> Conversation:
    return Conversation(row_id, int(created_at), loads(metadata) or None, tenant or None)


def item_values(item: ConversationItem) -> tuple[str, str | None, str, str | None, str, str, int, str | None]:
    """(id, response_id, item_type, role, content JSON, status, created_at, tenant_id): the column order
    everywhere."""
    return (item.id, item.response_id, item.item_type, item.role, dumps(item.content), item.status,
            int(item.created_at), item.tenant)


def item(row_id: str, response_id: str | None, item_type: str, role: str | None, content: str | bytes | None,
         status: str | None, created_at: int, tenant: str | None = None) -> ConversationItem:
    return ConversationItem(id=row_id, item_type=item_type, content=loads(content), role=role,
                            status=status or "completed", response_id=response_id, created_at=int(created_at),
                            tenant=tenant or None)


def response_values(response: StoredResponse) -> tuple[str, str | None, str | None, str, int, str | None,
                                                       str | None, str, str | None]:
    """(id, conversation_id, previous_response_id, input JSON, created_at, safety_identifier, model,
    raw_response JSON, tenant_id): the column order everywhere."""
    return (response.id, response.conversation_id, response.previous_response_id, dumps(response.input),
            int(response.created_at), response.safety_identifier, response.model, dumps(response.raw_response),
            response.tenant)


def response(row_id: str, conversation_id: str | None, previous_response_id: str | None, input_items: str | bytes,
             created_at: int, safety_identifier: str | None, model: str | None,
             raw_response: str | bytes, tenant: str | None = None) -> StoredResponse:
    return StoredResponse(id=row_id, raw_response=loads(raw_response), input=loads(input_items),
                          previous_response_id=previous_response_id, conversation_id=conversation_id, model=model,
                          safety_identifier=safety_identifier, created_at=int(created_at), tenant=tenant or None)
