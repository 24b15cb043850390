"""What a response continues (its chain or its conversation) and what it leaves in the history store.

A chain is every earlier response's input items followed by its output items, oldest first. A
conversation is its linked items in the order they were added; items the model is not given
(reasoning, tool types the gateway does not run) are skipped; MCP items are kept (an mcp_call is
replayed as a call and its result, and a pending approval request is what a later approval
resumes). Storage errors propagate (the API answers 503 for a store that is down).
"""

from __future__ import annotations

import time
from typing import Any

from shepherd.errors import GatewayError
from shepherd.responses.request import ResponseRequest
from shepherd.storage.base import HistoryStorage, StoredResponse, new_item_id
from shepherd.storage.items import item_json, item_record
from shepherd.storage.scoped import foreign_item

MAX_CHAIN = 100  # responses followed back along previous_response_id
MAX_CONVERSATION_ITEMS = 1000
_PAGE = 100
_REPLAYED = frozenset({"message", "function_call", "function_call_output", "mcp_list_tools", "mcp_call",
                       "mcp_approval_request", "mcp_approval_response"})


async def load_history(store: HistoryStorage, request: ResponseRequest) -> list[dict[str, Any]]:
    """The items that come before the request's own input; resolves its item_references too."""
    history: list[dict[str, Any]] = []
    if request.previous_response_id is not None:
        chain = await store.response_chain(request.previous_response_id, MAX_CHAIN)
        if not chain:
            raise GatewayError(404, "previous_response_not_found",
                               f"Previous response with id '{request.previous_response_id}' not found.",
                               param="previous_response_id")
        request.lineage = chain[0].id  # stable along the chain up to MAX_CHAIN responses
        for stored in chain:
            history += stored.input
            history += [item for item in stored.raw_response.get("output") or [] if isinstance(item, dict)]
    elif request.conversation_id is not None:
        if await store.get_conversation(request.conversation_id) is None:
            raise GatewayError(404, "conversation_not_found",
                               f"Conversation with id '{request.conversation_id}' not found.", param="conversation")
        request.lineage = request.conversation_id
        after: str | None = None
        while len(history) < MAX_CONVERSATION_ITEMS:
            page = await store.list_items(request.conversation_id, _PAGE, "asc", after)
            history += [item_json(item) for item in page.items]
            if not page.has_more or not page.items:
                break
            after = page.items[-1].id
    resolved = []
    for item in request.input_items:
        if item.get("type") == "item_reference":
            found = await store.get_item(str(item.get("id")))
            if found is None:
                raise GatewayError(404, "item_not_found", f"Item with id '{item.get('id')}' not found.",
                                   param="input")
            item = item_json(found)
        resolved.append(item)
    request.input_items = resolved
    return [item for item in history if item.get("type") in _REPLAYED]


def stored_response(request: ResponseRequest, response: dict[str, Any]) -> StoredResponse:
    user = request.body.get("user")
    safety = request.body.get("safety_identifier") or user
    return StoredResponse(id=response["id"], raw_response=response, input=request.input_items,
                          previous_response_id=request.previous_response_id,
                          conversation_id=request.conversation_id, model=request.model,
                          safety_identifier=safety if isinstance(safety, str) else None,
                          created_at=int(response.get("created_at") or time.time()))


async def persist(store: HistoryStorage, request: ResponseRequest, response: dict[str, Any],
                  conversation_items: bool = True) -> None:
    """Store the response and (for a conversation) its input and output as the conversation's items.
    The items and their links are written before the response, so a failure leaves no response that
    claims a conversation turn its conversation lacks."""
    if conversation_items and request.conversation_id is not None:
        records = [item_record(item, response["id"]) for item in request.input_items]
        records += [item_record(item, response["id"]) for item in response.get("output") or []]
        for record in records:
            if await store.get_item(record.id) is None:
                if await foreign_item(store, record.id):  # a client's id another tenant holds: this copy gets its own
                    record.id = new_item_id(record.item_type)
                await store.create_item(record)
        await store.link_items(request.conversation_id, [r.id for r in records], time.time())
    await store.store_response(stored_response(request, response))
