"""The records of chat history and the one interface every storage backend implements.

Ids follow OpenAI's shapes: conversations `conv_` + 50 hex digits, items `<prefix>_` + 50 hex digits
(message -> msg, reasoning -> rs, function_call -> fc, mcp_call -> mcp, mcp_list_tools -> mcpl, else
the type's first three letters), responses keep the id the gateway gave them (`resp_...`).
Pagination over a conversation's items is by cursor: `after` is an item id; items sort by
(added_at, id), ascending or descending, strictly after the cursor.

Every record carries the tenant that created it (`tenant`, None when tenancy is off or the record is
older than tenancy); backends store and return it, and `scoped.TenantHistory` enforces it.

A backend that cannot be reached raises `StorageUnavailable` (the API answers 503); it never
returns a half-written record: each method either happens whole or not at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Order = Literal["asc", "desc"]

_ITEM_PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc", "function_call_output": "fco",
                  "mcp_call": "mcp", "mcp_list_tools": "mcpl", "mcp_approval_request": "mcpr",
                  "mcp_approval_response": "mcpa"}


class StorageError(Exception):
    """A storage operation failed for a reason the caller should report."""


class StorageUnavailable(StorageError):
    """The backend cannot be reached (or did not answer in time); nothing was written."""


LINK_STEP = 1e-6  # seconds between items linked together (a double keeps microseconds at today's epoch)


def link_time(added_at: float, index: int) -> float:
    return added_at + index * LINK_STEP


def new_conversation_id() -> str:
    return "conv_" + os.urandom(25).hex()


def new_item_id(item_type: str) -> str:
    prefix = _ITEM_PREFIXES.get(item_type) or (item_type[:3] if item_type else "itm")
    return f"{prefix}_{os.urandom(25).hex()}"


@dataclass
class Conversation:
    id: str
    created_at: int  # unix seconds
    metadata: dict[str, str] | None = None
    tenant: str | None = None  # the tenant that created it (None: untagged, readable by every caller)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "conversation", "created_at": self.created_at, "metadata": self.metadata or {}}


@dataclass
class ConversationItem:
    id: str
    item_type: str
    content: Any  # the item's own fields (a message's content list, a function call's name/arguments, ...)
    role: str | None = None
    status: str = "completed"
    response_id: str | None = None  # the response that produced it, when one did
    created_at: int = field(default_factory=lambda: int(time.time()))
    tenant: str | None = None


@dataclass
class StoredResponse:
    id: str
    raw_response: dict[str, Any]  # the Response object as the client saw it
    input: list[dict[str, Any]]  # this request's input items only (the chain holds the rest)
    previous_response_id: str | None = None
    conversation_id: str | None = None
    model: str | None = None
    safety_identifier: str | None = None
    created_at: int = field(default_factory=lambda: int(time.time()))
    tenant: str | None = None


@dataclass(frozen=True)
class ItemPage:
    items: list[ConversationItem]
    has_more: bool


class HistoryStorage(Protocol):
    """Every backend: conversations, their items (stored once, linked to conversations), responses."""

    async def start(self) -> None:
        """Connect and create or migrate the schema."""
        ...

    async def close(self) -> None: ...

    # -- conversations --------------------------------------------------------------------------
    async def create_conversation(self, metadata: dict[str, str] | None = None,
                                  conversation_id: str | None = None, tenant: str | None = None) -> Conversation: ...

    async def get_conversation(self, conversation_id: str) -> Conversation | None: ...

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str] | None) -> Conversation | None:
        """Replace the metadata (the API merges before calling); None when the conversation is unknown."""
        ...

    async def delete_conversation(self, conversation_id: str) -> bool: ...

    # -- items ------------------------------------------------------------------------------------
    async def create_item(self, item: ConversationItem) -> ConversationItem: ...

    async def get_item(self, item_id: str) -> ConversationItem | None: ...

    async def link_items(self, conversation_id: str, item_ids: list[str], added_at: float) -> None:
        """Link the items, in one atomic write: the i-th at `link_time(added_at, i)`, so items added
        together keep their order in every listing."""
        ...

    async def is_item_linked(self, conversation_id: str, item_id: str) -> bool: ...

    async def unlink_item(self, conversation_id: str, item_id: str) -> bool: ...

    async def list_items(self, conversation_id: str, limit: int = 100, order: Order = "desc",
                         after: str | None = None) -> ItemPage: ...

    # -- responses --------------------------------------------------------------------------------
    async def store_response(self, response: StoredResponse) -> None:
        """Insert, or replace a response stored before under the same id (background responses)."""
        ...

    async def get_response(self, response_id: str) -> StoredResponse | None: ...

    async def delete_response(self, response_id: str) -> bool: ...

    async def response_chain(self, response_id: str, max_depth: int = 100) -> list[StoredResponse]:
        """The response and its `previous_response_id` ancestors, oldest first; StorageError on a cycle,
        and an empty list when `response_id` itself is unknown (a missing older link ends the chain)."""
        ...


async def walk_chain(get_response: Callable[[str], Awaitable[StoredResponse | None]], response_id: str,
                     max_depth: int) -> list[StoredResponse]:
    """Follow `previous_response_id` links back from `response_id`, oldest first (any backend's lookup)."""
    chain: list[StoredResponse] = []
    seen: set[str] = set()
    current: str | None = response_id
    while current is not None and len(chain) < max_depth:
        if current in seen:
            raise StorageError(f"the response chain of {response_id} has a cycle at {current}")
        seen.add(current)
        stored = await get_response(current)
        if stored is None:
            break
        chain.append(stored)
        current = stored.previous_response_id
    chain.reverse()
    return chain
