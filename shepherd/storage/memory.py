"""History in the gateway's own memory: for tests and single-process deployments that need no durability.

Bounded by count (`max_responses`, `max_items`) and age (`retention_secs`, 0: count bounds only);
the oldest records go first, on every write.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from shepherd.storage.base import (
    Conversation,
    ConversationItem,
    ItemPage,
    Order,
    StoredResponse,
    link_time,
    new_conversation_id,
    walk_chain,
)


class MemoryStorage:
    def __init__(self, max_responses: int = 10_000, max_items: int = 100_000, retention_secs: float = 86_400) -> None:
        self._max_responses = max_responses
        self._max_items = max_items
        self._retention = retention_secs
        self._conversations: OrderedDict[str, tuple[Conversation, float]] = OrderedDict()
        self._items: OrderedDict[str, tuple[ConversationItem, float]] = OrderedDict()
        self._links: dict[str, dict[str, float]] = {}  # conversation -> item id -> added_at
        self._responses: OrderedDict[str, tuple[StoredResponse, float]] = OrderedDict()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _evict(self) -> None:
        cutoff = time.monotonic() - self._retention if self._retention > 0 else None
        for table, bound in ((self._responses, self._max_responses), (self._items, self._max_items),
                             (self._conversations, self._max_items)):
            while table and (len(table) > bound or (cutoff is not None and next(iter(table.values()))[1] < cutoff)):
                key, _ = table.popitem(last=False)
                if table is self._conversations:
                    self._links.pop(key, None)

    # -- conversations ------------------------------------------------------------------------------

    async def create_conversation(self, metadata: dict[str, str] | None = None,
                                  conversation_id: str | None = None, tenant: str | None = None) -> Conversation:
        conversation = Conversation(conversation_id or new_conversation_id(), int(time.time()), metadata or None,
                                    tenant)
        self._conversations[conversation.id] = (conversation, time.monotonic())
        self._links.setdefault(conversation.id, {})
        self._evict()
        return conversation

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        entry = self._conversations.get(conversation_id)
        if entry is None:
            return None
        self._conversations[conversation_id] = (entry[0], time.monotonic())  # used: its clock resets
        self._conversations.move_to_end(conversation_id)
        return entry[0]

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str] | None) -> Conversation | None:
        conversation = await self.get_conversation(conversation_id)
        if conversation is not None:
            conversation.metadata = metadata or None
        return conversation

    async def delete_conversation(self, conversation_id: str) -> bool:
        self._links.pop(conversation_id, None)
        return self._conversations.pop(conversation_id, None) is not None

    # -- items ---------------------------------------------------------------------------------------

    async def create_item(self, item: ConversationItem) -> ConversationItem:
        self._items[item.id] = (item, time.monotonic())
        self._evict()
        return item

    async def get_item(self, item_id: str) -> ConversationItem | None:
        entry = self._items.get(item_id)
        return entry[0] if entry else None

    async def link_items(self, conversation_id: str, item_ids: list[str], added_at: float) -> None:
        links = self._links.setdefault(conversation_id, {})
        for index, item_id in enumerate(item_ids):
            links[item_id] = link_time(added_at, index)

    async def is_item_linked(self, conversation_id: str, item_id: str) -> bool:
        return item_id in self._links.get(conversation_id, {})

    async def unlink_item(self, conversation_id: str, item_id: str) -> bool:
        return self._links.get(conversation_id, {}).pop(item_id, None) is not None

    async def list_items(self, conversation_id: str, limit: int = 100, order: Order = "desc",
                         after: str | None = None) -> ItemPage:
        links = self._links.get(conversation_id, {})
        keyed = sorted(((added, item_id) for item_id, added in links.items() if item_id in self._items),
                       reverse=order == "desc")
        if after is not None and after in links:
            cursor = (links[after], after)
            keyed = [k for k in keyed if (k > cursor if order == "asc" else k < cursor)]
        page = [self._items[item_id][0] for _, item_id in keyed[:limit]]
        return ItemPage(page, has_more=len(keyed) > limit)

    # -- responses -----------------------------------------------------------------------------------

    async def store_response(self, response: StoredResponse) -> None:
        self._responses[response.id] = (response, time.monotonic())
        self._responses.move_to_end(response.id)
        self._evict()

    async def get_response(self, response_id: str) -> StoredResponse | None:
        entry = self._responses.get(response_id)
        return entry[0] if entry else None

    async def delete_response(self, response_id: str) -> bool:
        return self._responses.pop(response_id, None) is not None

    async def response_chain(self, response_id: str, max_depth: int = 100) -> list[StoredResponse]:
        return await walk_chain(self.get_response, response_id, max_depth)

