"""The Conversations API: conversations, and the items linked to them, in the chat history store.

Items are stored once and linked to a conversation at an `added_at` time; pages walk
(added_at, id) by cursor. Every storage failure becomes an OpenAI-style error: a store that is
down or too slow answers 503 `storage_unavailable`, and nothing half-written is left visible.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from shepherd.api.body import parse_json_object, read_body
from shepherd.api.keys import CONTEXT
from shepherd.errors import GatewayError
from shepherd.request_keys import TENANT
from shepherd.storage.base import (
    Conversation,
    ConversationItem,
    HistoryStorage,
    StorageError,
    StorageUnavailable,
    new_conversation_id,
)
from shepherd.storage.items import item_json, item_record
from shepherd.storage.scoped import foreign_item

MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_ITEMS_PER_REQUEST = 20
MAX_ID_CHARS = 64
DEFAULT_PAGE = 20
MAX_PAGE = 100

# Types a conversation accepts. Those outside REPLAYED are kept and listed, but a response that
# continues the conversation does not feed them to the model, so adding one carries a warning.
ITEM_TYPES = frozenset({
    "message", "reasoning", "mcp_list_tools", "mcp_call", "item_reference", "function_call", "function_call_output",
    "file_search_call", "computer_call", "computer_call_output", "web_search_call", "image_generation_call",
    "code_interpreter_call", "local_shell_call", "local_shell_call_output", "mcp_approval_request",
    "mcp_approval_response", "custom_tool_call", "custom_tool_call_output",
})
REPLAYED = frozenset({"message", "function_call", "function_call_output", "reasoning", "mcp_list_tools",
                      "mcp_call", "item_reference"})
MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
ITEM_STATUSES = frozenset({"in_progress", "completed", "incomplete"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def storage_errors(handler: Handler) -> Handler:
    """Storage failures as client-facing errors (the gateway keeps serving)."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StorageUnavailable as exc:
            raise GatewayError(503, "storage_unavailable", f"The history store is unavailable: {exc}",
                               headers={"Retry-After": "1"}) from None
        except StorageError as exc:
            raise GatewayError(500, "storage_error", f"The history store failed: {exc}") from None

    return guarded


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


def _store(request: web.Request) -> HistoryStorage:
    """The caller's view of the history: its tenant's records (and untagged ones) when tenancy is on."""
    return request.app[CONTEXT].history_for(request.get(TENANT))


async def _body(request: web.Request) -> dict[str, Any]:
    return parse_json_object(await read_body(request, request.app[CONTEXT].config.max_payload_size))


def _not_found(conversation_id: str) -> GatewayError:
    return GatewayError(404, "conversation_not_found", f"Conversation with id '{conversation_id}' not found.")


async def _conversation(request: web.Request) -> Conversation:
    conversation_id = request.match_info["conversation_id"]
    conversation = await _store(request).get_conversation(conversation_id)
    if conversation is None:
        raise _not_found(conversation_id)
    return conversation


def _check_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    if len(metadata) > MAX_METADATA_KEYS:
        raise GatewayError(400, "invalid_metadata", f"'metadata' may hold at most {MAX_METADATA_KEYS} keys, "
                           f"got {len(metadata)}", param="metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise GatewayError(400, "invalid_metadata", f"metadata keys are at most {MAX_METADATA_KEY_CHARS} "
                               f"characters: {key[:80]!r}", param="metadata")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_CHARS:
            raise GatewayError(400, "invalid_metadata", f"metadata values must be strings of at most "
                               f"{MAX_METADATA_VALUE_CHARS} characters (key {key!r})", param="metadata")
    return metadata


def _metadata_object(body: dict[str, Any], required: bool) -> dict[str, Any] | None:
    if "metadata" not in body or body["metadata"] is None:
        if required:
            raise GatewayError(400, "missing_required_parameter", "'metadata' is required", param="metadata")
        return None
    metadata = body["metadata"]
    if not isinstance(metadata, dict):
        raise GatewayError(400, "invalid_type", "'metadata' must be an object", param="metadata")
    return metadata


# -- items in a request ------------------------------------------------------------------------------

def _bad_item(index: int, message: str) -> GatewayError:
    return GatewayError(400, "invalid_item", f"items[{index}]: {message}", param=f"items[{index}]")


def _check_item(index: int, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _bad_item(index, "must be an object")
    item_type = item.get("type", "message" if "role" in item else None)
    if not isinstance(item_type, str) or item_type not in ITEM_TYPES:
        raise _bad_item(index, f"unsupported item type {item_type!r}")
    item = {**item, "type": item_type}
    item_id = item.get("id")
    if item_id is not None and (not isinstance(item_id, str) or not 0 < len(item_id) <= MAX_ID_CHARS):
        raise _bad_item(index, f"'id' must be a string of 1 to {MAX_ID_CHARS} characters")
    if item_type == "item_reference":
        if item_id is None:
            raise _bad_item(index, "an item_reference needs the 'id' of an existing item")
        return item
    status = item.get("status")
    if status is not None and status not in ITEM_STATUSES:
        raise _bad_item(index, f"'status' must be one of {', '.join(sorted(ITEM_STATUSES))}")
    if item_type == "message":
        if item.get("role") not in MESSAGE_ROLES:
            raise _bad_item(index, f"a message needs a 'role' of {', '.join(sorted(MESSAGE_ROLES))}")
        content = item.get("content")
        if not isinstance(content, str | list):
            raise _bad_item(index, "a message's 'content' must be a string or a list of parts")
        if isinstance(content, list) and not all(isinstance(part, dict) and "type" in part for part in content):
            raise _bad_item(index, "every content part must be an object with a 'type'")
    elif item_type in ("function_call", "custom_tool_call"):
        if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
            raise _bad_item(index, f"a {item_type} needs string 'call_id' and 'name'")
    elif item_type in ("function_call_output", "custom_tool_call_output", "computer_call_output",
                       "local_shell_call_output") and not isinstance(item.get("call_id"), str):
        raise _bad_item(index, f"a {item_type} needs a string 'call_id'")
    return item


def _request_items(body: dict[str, Any], required: bool) -> list[dict[str, Any]]:
    items = body.get("items")
    if items is None:
        if required:
            raise GatewayError(400, "missing_required_parameter", "'items' is required", param="items")
        return []
    if not isinstance(items, list):
        raise GatewayError(400, "invalid_type", "'items' must be a list", param="items")
    if required and not items:
        raise GatewayError(400, "invalid_value", "'items' must hold at least one item", param="items")
    if len(items) > MAX_ITEMS_PER_REQUEST:
        raise GatewayError(400, "too_many_items", f"at most {MAX_ITEMS_PER_REQUEST} items may be added at once, "
                           f"got {len(items)}", param="items")
    return [_check_item(index, item) for index, item in enumerate(items)]


async def _store_items(store: HistoryStorage, conversation_id: str, items: list[dict[str, Any]],
                       existing: bool) -> tuple[list[ConversationItem], list[str]]:
    """Create the items and link them in request order; (the items, warnings). Every check runs before
    the first write, and the links are one atomic write: the items appear together or not at all (an
    item row written before a failed link is unreachable, as no conversation lists it)."""
    records: list[ConversationItem] = []
    warnings: list[str] = []
    seen: set[str] = set()
    new: list[ConversationItem] = []
    for index, item in enumerate(items):
        item_id = item.get("id")
        if item["type"] == "item_reference":
            referenced = await store.get_item(str(item_id))
            if referenced is None:
                raise GatewayError(404, "item_not_found", f"items[{index}]: no item with id '{item_id}'",
                                   param=f"items[{index}]")
            record = referenced
        else:
            record = item_record(item)
            if item["type"] not in REPLAYED:
                warnings.append(f"items[{index}]: a {item['type']} item is stored but not given to the model "
                                "when a response continues this conversation")
        if record.id in seen:
            continue  # one item, linked once
        if existing and item_id is not None and await store.is_item_linked(conversation_id, record.id):
            raise GatewayError(400, "item_already_in_conversation",
                               f"items[{index}]: item '{record.id}' is already in this conversation",
                               param=f"items[{index}]")
        if item["type"] != "item_reference":
            if item_id is not None and (await store.get_item(record.id) is not None
                                        or await foreign_item(store, record.id)):
                # Ids are global: a new item must not overwrite one that another conversation holds.
                raise GatewayError(400, "item_id_in_use", f"items[{index}]: an item with id '{record.id}' exists "
                                   "already; add it with an item_reference", param=f"items[{index}]")
            new.append(record)
        seen.add(record.id)
        records.append(record)
    for record in new:
        await store.create_item(record)
    await store.link_items(conversation_id, [record.id for record in records], time.time())
    return records, warnings


def _item_list(items: list[ConversationItem], has_more: bool, warnings: list[str] | None = None) -> web.Response:
    body: dict[str, Any] = {"object": "list", "data": [item_json(item) for item in items],
                            "first_id": items[0].id if items else None, "last_id": items[-1].id if items else None,
                            "has_more": has_more}
    if warnings:
        body["warnings"] = warnings
    return _json(body)


# -- routes --------------------------------------------------------------------------------------------

@storage_errors
async def create_conversation(request: web.Request) -> web.Response:
    body = await _body(request)
    metadata = _metadata_object(body, required=False)
    metadata = _check_metadata(metadata) if metadata else None
    items = _request_items(body, required=False)
    store = _store(request)
    conversation_id = new_conversation_id()
    if items:  # items and links first: a failure leaves no visible conversation behind
        await _store_items(store, conversation_id, items, existing=False)
    conversation = await store.create_conversation(metadata, conversation_id)
    return _json(conversation.to_json())


@storage_errors
async def get_conversation(request: web.Request) -> web.Response:
    return _json((await _conversation(request)).to_json())


@storage_errors
async def update_conversation(request: web.Request) -> web.Response:
    body = await _body(request)
    patch = _metadata_object(body, required=True)
    assert patch is not None
    conversation = await _conversation(request)
    merged = dict(conversation.metadata or {})
    for key, value in patch.items():  # patch-merge: null removes a key
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    updated = await _store(request).update_conversation(conversation.id, _check_metadata(merged) or None)
    if updated is None:
        raise _not_found(conversation.id)
    return _json(updated.to_json())


@storage_errors
async def delete_conversation(request: web.Request) -> web.Response:
    conversation_id = request.match_info["conversation_id"]
    if not await _store(request).delete_conversation(conversation_id):
        raise _not_found(conversation_id)
    return _json({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


def page_query(request: web.Request) -> tuple[int, str, str | None]:
    """`limit`, `order` and `after` of a list request, as OpenAI's list endpoints take them (400 if bad)."""
    query = request.query
    raw_limit = query.get("limit", str(DEFAULT_PAGE))
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise GatewayError(400, "invalid_value", f"'limit' must be an integer from 1 to {MAX_PAGE}, got "
                           f"{raw_limit[:40]!r}", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise GatewayError(400, "invalid_value", f"'order' must be asc or desc, got {order[:40]!r}", param="order")
    return limit, order, query.get("after") or None


@storage_errors
async def list_items(request: web.Request) -> web.Response:
    limit, order, after = page_query(request)
    conversation = await _conversation(request)
    store = _store(request)
    if after is not None and not await store.is_item_linked(conversation.id, after):
        raise GatewayError(400, "invalid_value", f"'after' must be the id of an item in this conversation, got "
                           f"{after[:80]!r}", param="after")
    page = await store.list_items(conversation.id, limit, "asc" if order == "asc" else "desc", after)
    return _item_list(page.items, page.has_more)


@storage_errors
async def add_items(request: web.Request) -> web.Response:
    body = await _body(request)
    items = _request_items(body, required=True)
    conversation = await _conversation(request)
    stored, warnings = await _store_items(_store(request), conversation.id, items, existing=True)
    return _item_list(stored, False, warnings)


async def _linked_item(request: web.Request) -> tuple[Conversation, ConversationItem]:
    conversation = await _conversation(request)
    item_id = request.match_info["item_id"]
    store = _store(request)
    item = await store.get_item(item_id) if await store.is_item_linked(conversation.id, item_id) else None
    if item is None:
        raise GatewayError(404, "item_not_found", f"Item with id '{item_id}' not found in conversation "
                           f"'{conversation.id}'.")
    return conversation, item


@storage_errors
async def get_item(request: web.Request) -> web.Response:
    _, item = await _linked_item(request)
    return _json(item_json(item))


@storage_errors
async def delete_item(request: web.Request) -> web.Response:
    conversation, item = await _linked_item(request)
    await _store(request).unlink_item(conversation.id, item.id)  # the item itself stays (responses may cite it)
    return _json(conversation.to_json())


def add_conversation_routes(app: web.Application) -> None:
    app.router.add_post("/v1/conversations", create_conversation)
    app.router.add_get("/v1/conversations/{conversation_id}", get_conversation)
    app.router.add_post("/v1/conversations/{conversation_id}", update_conversation)
    app.router.add_delete("/v1/conversations/{conversation_id}", delete_conversation)
    app.router.add_get("/v1/conversations/{conversation_id}/items", list_items)
    app.router.add_post("/v1/conversations/{conversation_id}/items", add_items)
    app.router.add_get("/v1/conversations/{conversation_id}/items/{item_id}", get_item)
    app.router.add_delete("/v1/conversations/{conversation_id}/items/{item_id}", delete_item)
