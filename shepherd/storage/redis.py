"""History in Redis (redis.asyncio): hashes for records, a sorted set per conversation for its items.

Keys (under an optional prefix): `conversation:{id}` and `item:{id}` and `response:{id}` hashes,
`conversation:{id}:items` a sorted set of item ids scored by added_at (equal scores order by id,
which is exactly the (added_at, id) order pages walk). Each write is one MULTI/EXEC, so a record is
whole or absent; every key gets the retention as its TTL (-1: kept forever). `schema_version`
records the layout version, checked on start like the SQL backends' version table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shepherd.storage import records
from shepherd.storage.base import (
    Conversation,
    ConversationItem,
    ItemPage,
    Order,
    StorageError,
    StorageUnavailable,
    StoredResponse,
    link_time,
    new_conversation_id,
    walk_chain,
)

log = logging.getLogger("shepherd.storage")

# 2: records carry a `tenant_id` field (records written under 1 lack it: untagged, readable by every caller;
# a gateway of version 1 would ignore the field, so it must refuse the layout).
SCHEMA_VERSION = 2
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_ITEM_FIELDS = ("id", "response_id", "item_type", "role", "content", "status", "created_at", "tenant_id")
_RESPONSE_FIELDS = ("id", "conversation_id", "previous_response_id", "input", "created_at", "safety_identifier",
                    "model", "raw_response", "tenant_id")
T = TypeVar("T")


class RedisStorage:
    def __init__(self, url: str, pool_max: int = 16, retention_days: int = 30, op_timeout_secs: float = 5.0,
                 key_prefix: str = "") -> None:
        """`key_prefix`: namespaces every key (several gateways' or tests' histories in one Redis)."""
        # A blocking pool: past `pool_max` busy connections a call waits (up to the op timeout) instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool_max, timeout=op_timeout_secs, socket_timeout=op_timeout_secs,
            socket_connect_timeout=op_timeout_secs, decode_responses=True,
            retry=Retry(NoBackoff(), 0))  # no silent retries: the op timeout is the whole bound
        self._client = aioredis.Redis(connection_pool=pool)
        self._ttl = retention_days * 86_400 if retention_days > 0 else None
        self._prefix = key_prefix
        self._checked = False

    async def start(self) -> None:
        try:
            await self._ready()
        except StorageUnavailable as exc:
            log.warning("Redis history store not reachable yet (history answers 503 until it is): %s", exc)

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)

    async def _ready(self) -> None:
        """Check (first time: record) the layout version before the first use."""
        if self._checked:
            return
        key = self._prefix + "schema_version"
        raw = await self._call(self._client.get(key))
        stored = int(raw) if raw is not None else None
        if stored is not None and stored > SCHEMA_VERSION:
            raise StorageError(f"the Redis history layout is at version {stored}, newer than this gateway's "
                               f"{SCHEMA_VERSION}; upgrade the gateway")
        if stored is None or stored < SCHEMA_VERSION:
            await self._call(self._client.set(key, SCHEMA_VERSION))
            log.info("Redis history layout at version %d", SCHEMA_VERSION)
        self._checked = True

    async def _call(self, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"Redis history store: {exc}") from exc
        except RedisError as exc:
            raise StorageError(f"Redis history store: {exc}") from exc

    async def _run(self, pipe: Any) -> list[Any]:
        await self._ready()
        return await self._call(pipe.execute())

    def _tx(self) -> Any:
        return self._client.pipeline(transaction=True)

    def _expire(self, pipe: Any, *keys: str) -> None:
        if self._ttl is not None:
            for key in keys:
                pipe.expire(key, self._ttl)

    def _conversation_key(self, conversation_id: str) -> str:
        return f"{self._prefix}conversation:{conversation_id}"

    def _links_key(self, conversation_id: str) -> str:
        return f"{self._prefix}conversation:{conversation_id}:items"

    def _item_key(self, item_id: str) -> str:
        return f"{self._prefix}item:{item_id}"

    def _response_key(self, response_id: str) -> str:
        return f"{self._prefix}response:{response_id}"

    async def _hash(self, key: str) -> dict[str, str]:
        await self._ready()
        row: dict[str, str] = await self._call(self._client.hgetall(key))  # type: ignore[arg-type]
        return row

    # -- conversations ------------------------------------------------------------------------------

    async def create_conversation(self, metadata: dict[str, str] | None = None,
                                  conversation_id: str | None = None, tenant: str | None = None) -> Conversation:
        conversation = Conversation(conversation_id or new_conversation_id(), int(time.time()),
                                    metadata or None, tenant)
        key = self._conversation_key(conversation.id)
        pipe = self._tx()
        pipe.delete(key)
        pipe.hset(key, mapping={"id": conversation.id, "created_at": conversation.created_at,
                                "metadata": records.metadata_text(conversation.metadata) or "",
                                "tenant_id": tenant or ""})
        self._expire(pipe, key)
        await self._run(pipe)
        return conversation

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        row = await self._hash(self._conversation_key(conversation_id))
        if not row:
            return None
        return records.conversation(row["id"], int(row["created_at"]), row.get("metadata") or None,
                                    row.get("tenant_id"))

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str] | None) -> Conversation | None:
        key = self._conversation_key(conversation_id)
        # WATCH: the update applies only to a conversation that still exists when EXEC runs.
        async with self._client.pipeline(transaction=True) as pipe:
            try:
                await self._ready()
                await self._call(pipe.watch(key))
                if not await self._call(pipe.exists(key)):
                    return None
                pipe.multi()
                pipe.hset(key, "metadata", records.metadata_text(metadata) or "")
                self._expire(pipe, key)
                await self._call(pipe.execute())
            except aioredis.WatchError:
                return None  # deleted meanwhile
        return await self.get_conversation(conversation_id)

    async def delete_conversation(self, conversation_id: str) -> bool:
        pipe = self._tx()
        pipe.delete(self._conversation_key(conversation_id))
        pipe.delete(self._links_key(conversation_id))
        deleted, _ = await self._run(pipe)
        return bool(deleted)

    # -- items ---------------------------------------------------------------------------------------

    async def create_item(self, item: ConversationItem) -> ConversationItem:
        key = self._item_key(item.id)
        values = dict(zip(_ITEM_FIELDS, records.item_values(item), strict=True))
        pipe = self._tx()
        pipe.delete(key)
        pipe.hset(key, mapping={k: v for k, v in values.items() if v is not None})
        self._expire(pipe, key)
        await self._run(pipe)
        return item

    async def get_item(self, item_id: str) -> ConversationItem | None:
        row = await self._hash(self._item_key(item_id))
        return _item(row) if row else None

    async def link_items(self, conversation_id: str, item_ids: list[str], added_at: float) -> None:
        if not item_ids:
            return
        key = self._links_key(conversation_id)
        pipe = self._tx()
        pipe.zadd(key, {item_id: link_time(added_at, index) for index, item_id in enumerate(item_ids)})
        self._expire(pipe, key)
        await self._run(pipe)

    async def is_item_linked(self, conversation_id: str, item_id: str) -> bool:
        await self._ready()
        return await self._call(self._client.zscore(self._links_key(conversation_id), item_id)) is not None

    async def unlink_item(self, conversation_id: str, item_id: str) -> bool:
        await self._ready()
        return bool(await self._call(self._client.zrem(self._links_key(conversation_id), item_id)))

    async def list_items(self, conversation_id: str, limit: int = 100, order: Order = "desc",
                         after: str | None = None) -> ItemPage:
        await self._ready()
        key = self._links_key(conversation_id)
        start = 0
        if after is not None:
            rank_of = self._client.zrank if order == "asc" else self._client.zrevrank
            rank = await self._call(rank_of(key, after))
            if rank is not None:
                start = int(rank) + 1  # type: ignore[arg-type]
        # A linked id whose item hash has expired is skipped, so read past the page until it is full.
        found: list[ConversationItem] = []
        more = False
        window = limit + 1
        while True:
            range_of = self._client.zrange if order == "asc" else self._client.zrevrange
            ids: list[str] = await self._call(range_of(key, start, start + window - 1))  # type: ignore[arg-type]
            if not ids:
                break
            pipe = self._client.pipeline(transaction=False)
            for item_id in ids:
                pipe.hgetall(self._item_key(item_id))
            for row in await self._call(pipe.execute()):
                if row:
                    if len(found) == limit:
                        more = True
                        break
                    found.append(_item(row))
            if more or len(ids) < window:
                break
            start += window
        return ItemPage(found, has_more=more)

    # -- responses -----------------------------------------------------------------------------------

    async def store_response(self, response: StoredResponse) -> None:
        key = self._response_key(response.id)
        values = dict(zip(_RESPONSE_FIELDS, records.response_values(response), strict=True))
        pipe = self._tx()
        pipe.delete(key)  # a second store replaces the first whole (background responses)
        pipe.hset(key, mapping={k: v for k, v in values.items() if v is not None})
        self._expire(pipe, key)
        await self._run(pipe)

    async def get_response(self, response_id: str) -> StoredResponse | None:
        row = await self._hash(self._response_key(response_id))
        if not row:
            return None
        return records.response(row["id"], row.get("conversation_id"), row.get("previous_response_id"), row["input"],
                                int(row["created_at"]), row.get("safety_identifier"), row.get("model"),
                                row["raw_response"], row.get("tenant_id"))

    async def delete_response(self, response_id: str) -> bool:
        await self._ready()
        return bool(await self._call(self._client.delete(self._response_key(response_id))))

    async def response_chain(self, response_id: str, max_depth: int = 100) -> list[StoredResponse]:
        return await walk_chain(self.get_response, response_id, max_depth)


def _item(row: dict[str, str]) -> ConversationItem:
    return records.item(row["id"], row.get("response_id"), row["item_type"], row.get("role"), row.get("content"),
                        row.get("status"), int(row["created_at"]), row.get("tenant_id"))
