"""One tenant's view of the history store: how tenancy (`--tenant-api-key`, `--trust-tenant-header`) scopes
stored responses, conversations and their items.

Every record written through the view is tagged with its tenant. The view shows the tenant its own records
and untagged ones (stored before tenancy was configured); another tenant's record is absent from it: a
read answers None, an update or delete finds nothing, a `previous_response_id` chain ends before it. The
API answers that with its ordinary 404, so a caller cannot tell another tenant's id from an unknown one.

Calls keyed by a conversation (links, pages) pass through: callers make them only with a conversation
this view returned. Item ids are global (a client may choose one), so before writing a new item under a
client's id the callers ask `foreign_item` whether another tenant holds it, rather than overwrite it.
"""

from __future__ import annotations

import dataclasses

from shepherd.storage.base import (
    Conversation,
    ConversationItem,
    HistoryStorage,
    ItemPage,
    Order,
    StoredResponse,
    walk_chain,
)


def visible(owner: str | None, tenant: str) -> bool:
    return owner is None or owner == tenant


async def foreign_item(store: HistoryStorage, item_id: str) -> bool:
    """An item with this id exists that `store`'s caller may not see (False, with no read, when unscoped)."""
    if not isinstance(store, TenantHistory):
        return False
    found = await store.store.get_item(item_id)
    return found is not None and not visible(found.tenant, store.tenant)


class TenantHistory:
    def __init__(self, store: HistoryStorage, tenant: str) -> None:
        self.store = store
        self.tenant = tenant

    async def start(self) -> None:  # the store's own life is the AppContext's; a view has none
        return None

    async def close(self) -> None:
        return None

    # -- conversations ------------------------------------------------------------------------------

    async def create_conversation(self, metadata: dict[str, str] | None = None,
                                  conversation_id: str | None = None, tenant: str | None = None) -> Conversation:
        return await self.store.create_conversation(metadata, conversation_id, self.tenant)

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        found = await self.store.get_conversation(conversation_id)
        return found if found is not None and visible(found.tenant, self.tenant) else None

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str] | None) -> Conversation | None:
        if await self.get_conversation(conversation_id) is None:
            return None
        return await self.store.update_conversation(conversation_id, metadata)

    async def delete_conversation(self, conversation_id: str) -> bool:
        if await self.get_conversation(conversation_id) is None:
            return False
        return await self.store.delete_conversation(conversation_id)

    # -- items ----------------------------------------------------------------------------------------

    async def create_item(self, item: ConversationItem) -> ConversationItem:
        return await self.store.create_item(dataclasses.replace(item, tenant=self.tenant))

    async def get_item(self, item_id: str) -> ConversationItem | None:
        found = await self.store.get_item(item_id)
        return found if found is not None and visible(found.tenant, self.tenant) else None

    async def link_items(self, conversation_id: str, item_ids: list[str], added_at: float) -> None:
        await self.store.link_items(conversation_id, item_ids, added_at)

    async def is_item_linked(self, conversation_id: str, item_id: str) -> bool:
        return await self.store.is_item_linked(conversation_id, item_id)

    async def unlink_item(self, conversation_id: str, item_id: str) -> bool:
        return await self.store.unlink_item(conversation_id, item_id)

    async def list_items(self, conversation_id: str, limit: int = 100, order: Order = "desc",
                         after: str | None = None) -> ItemPage:
        return await self.store.list_items(conversation_id, limit, order, after)

    # -- responses --------------------------------------------------------------------------------------

    async def store_response(self, response: StoredResponse) -> None:
        await self.store.store_response(dataclasses.replace(response, tenant=self.tenant))

    async def get_response(self, response_id: str) -> StoredResponse | None:
        found = await self.store.get_response(response_id)
        return found if found is not None and visible(found.tenant, self.tenant) else None

    async def delete_response(self, response_id: str) -> bool:
        if await self.get_response(response_id) is None:
            return False
        return await self.store.delete_response(response_id)

    async def response_chain(self, response_id: str, max_depth: int = 100) -> list[StoredResponse]:
        return await walk_chain(self.get_response, response_id, max_depth)
