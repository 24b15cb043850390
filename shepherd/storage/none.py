"""`--history-backend none`: writes are accepted and dropped, reads find nothing."""

from __future__ import annotations

import time

from shepherd.storage.base import Conversation, ConversationItem, ItemPage, Order, StoredResponse, new_conversation_id


class NoStorage:
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create_conversation(self, metadata: dict[str, str] | None = None,
                                  conversation_id: str | None = None, tenant: str | None = None) -> Conversation:
        return Conversation(conversation_id or new_conversation_id(), int(time.time()), metadata or None, tenant)

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        return None

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str] | None) -> Conversation | None:
        return None

    async def delete_conversation(self, conversation_id: str) -> bool:
        return False

    async def create_item(self, item: ConversationItem) -> ConversationItem:
        return item

    async def get_item(self, item_id: str) -> ConversationItem | None:
        return None

    async def link_items(self, conversation_id: str, item_ids: list[str], added_at: float) -> None:
        return None

    async def is_item_linked(self, conversation_id: str, item_id: str) -> bool:
        return False

    async def unlink_item(self, conversation_id: str, item_id: str) -> bool:
        return False

    async def list_items(self, conversation_id: str, limit: int = 100, order: Order = "desc",
                         after: str | None = None) -> ItemPage:
        return ItemPage([], has_more=False)

    async def store_response(self, response: StoredResponse) -> None:
        return None

    async def get_response(self, response_id: str) -> StoredResponse | None:
        return None

    async def delete_response(self, response_id: str) -> bool:
        return False

    async def response_chain(self, response_id: str, max_depth: int = 100) -> list[StoredResponse]:
        return []
