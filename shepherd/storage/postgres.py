"""History in PostgreSQL (asyncpg): shared by every gateway that points at the same database.

The pool connects lazily: a database that is down at start-up does not stop the gateway; history
calls answer StorageUnavailable (503) until it is back, and the first call that reaches it creates
or migrates the schema. Migrations run under a transaction-scoped advisory lock, so gateways that
start together migrate once. Every operation is bounded by `op_timeout_secs` and every write is one
transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

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

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        "CREATE TABLE conversations (id VARCHAR(64) PRIMARY KEY, created_at BIGINT NOT NULL, metadata JSONB)",
        "CREATE TABLE conversation_items (id VARCHAR(64) PRIMARY KEY, response_id VARCHAR(64), "
        "item_type VARCHAR(32) NOT NULL, role VARCHAR(32), content JSONB, status VARCHAR(32), "
        "created_at BIGINT NOT NULL)",
        "CREATE TABLE conversation_item_links (conversation_id VARCHAR(64) NOT NULL, item_id VARCHAR(64) NOT NULL, "
        "added_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (conversation_id, item_id))",
        "CREATE TABLE responses (id VARCHAR(64) PRIMARY KEY, conversation_id VARCHAR(64), "
        "previous_response_id VARCHAR(64), input JSONB NOT NULL, created_at BIGINT NOT NULL, "
        "safety_identifier VARCHAR(128), model VARCHAR(128), raw_response JSONB NOT NULL)",
    )),
    (2, (
        "CREATE INDEX conv_item_links_conv_idx ON conversation_item_links (conversation_id, added_at, item_id)",
        "CREATE INDEX responses_safety_idx ON responses (safety_identifier)",
    )),
    (3, (
        # The creating tenant of each record; rows from before it stay NULL: untagged, readable by every caller.
        "ALTER TABLE conversations ADD COLUMN tenant_id VARCHAR(256)",
        "ALTER TABLE conversation_items ADD COLUMN tenant_id VARCHAR(256)",
        "ALTER TABLE responses ADD COLUMN tenant_id VARCHAR(256)",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
_MIGRATION_LOCK = 0x5348_4550  # "SHEP": the advisory lock every gateway takes to migrate

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError, asyncpg.QueryCanceledError, asyncpg.AdminShutdownError,
)

_ITEM_COLUMNS = "i.id, i.response_id, i.item_type, i.role, i.content, i.status, i.created_at, i.tenant_id"
_RESPONSE_COLUMNS = ("id, conversation_id, previous_response_id, input, created_at, safety_identifier, model, "
                     "raw_response, tenant_id")


class PostgresStorage:
    def __init__(self, dsn: str, pool_max: int = 16, op_timeout_secs: float = 5.0,
                 migrations: Iterable[tuple[int, tuple[str, ...]]] = MIGRATIONS) -> None:
        self._dsn = dsn
        self._pool_max = pool_max
        self._timeout = op_timeout_secs
        self._migrations = tuple(migrations)
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Future[asyncpg.Pool] | None = None

    async def start(self) -> None:
        try:
            await self._ready()
        except StorageUnavailable as exc:
            log.warning("PostgreSQL history store not reachable yet (history answers 503 until it is): %s", exc)

    async def close(self) -> None:
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._timeout)
            except _UNAVAILABLE:  # TimeoutError is among them
                pool.terminate()

    async def _ready(self) -> asyncpg.Pool:
        """The pool, opened and the schema migrated on first success. Callers that arrive while an
        attempt runs share its outcome, so a database that hangs costs each of them one op timeout,
        not one per caller ahead of it."""
        if self._pool is not None:
            return self._pool
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._opening)

    async def _open(self) -> asyncpg.Pool:
        try:
            pool = await asyncio.wait_for(
                asyncpg.create_pool(self._dsn, min_size=1, max_size=self._pool_max, command_timeout=self._timeout,
                                    timeout=self._timeout), self._timeout)
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"PostgreSQL history store: {_describe(exc)}") from exc
        try:
            async with asyncio.timeout(self._timeout * 4):  # DDL may wait on another gateway's migration lock
                await self._migrate(pool)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _UNAVAILABLE):
                raise StorageUnavailable(f"PostgreSQL history store: {_describe(exc)}") from exc
            raise
        self._pool = pool
        return pool

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS _schema_versions (version INTEGER PRIMARY KEY, "
                               "applied_at BIGINT NOT NULL)")
            current = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM _schema_versions"))
            latest = self._migrations[-1][0] if self._migrations else 0
            if current > latest:
                raise StorageError(f"the PostgreSQL history schema is at version {current}, newer than this "
                                   f"gateway's {latest}; upgrade the gateway")
            for version, statements in self._migrations:
                if version > current:
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO _schema_versions (version, applied_at) VALUES ($1, $2)",
                                       version, int(time.time()))
                    log.info("PostgreSQL history schema migrated to version %d", version)

    @asynccontextmanager
    async def _conn(self, transaction: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection (inside one transaction when asked), bounded by the op timeout."""
        pool = await self._ready()
        try:
            async with asyncio.timeout(self._timeout), pool.acquire() as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"PostgreSQL history store: {_describe(exc)}") from exc
        except asyncpg.PostgresError as exc:
            raise StorageError(f"PostgreSQL history store: {exc}") from exc

    async def _row(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self._conn() as conn:
            return await conn.fetchrow(sql, *args)

    # -- conversations ------------------------------------------------------------------------------

    async def create_conversation(self, metadata: dict[str, str] | None = None,
                                  conversation_id: str | None = None, tenant: str | None = None) -> Conversation:
        conversation = Conversation(conversation_id or new_conversation_id(), int(time.time()), metadata or None,
                                    tenant)
        async with self._conn() as conn:
            await conn.execute("INSERT INTO conversations (id, created_at, metadata, tenant_id) "
                               "VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (id) DO UPDATE SET "
                               "created_at = EXCLUDED.created_at, metadata = EXCLUDED.metadata, "
                               "tenant_id = EXCLUDED.tenant_id", conversation.id, conversation.created_at,
                               records.metadata_text(conversation.metadata), tenant)
        return conversation

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        row = await self._row("SELECT id, created_at, metadata, tenant_id FROM conversations WHERE id = $1",
                              conversation_id)
        return records.conversation(*row) if row else None

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str] | None) -> Conversation | None:
        row = await self._row("UPDATE conversations SET metadata = $2::jsonb WHERE id = $1 "
                              "RETURNING id, created_at, metadata, tenant_id", conversation_id,
                              records.metadata_text(metadata))
        return records.conversation(*row) if row else None

    async def delete_conversation(self, conversation_id: str) -> bool:
        async with self._conn(transaction=True) as conn:
            status = await conn.execute("DELETE FROM conversations WHERE id = $1", conversation_id)
            await conn.execute("DELETE FROM conversation_item_links WHERE conversation_id = $1", conversation_id)
        return _count(status) > 0

    # -- items ---------------------------------------------------------------------------------------

    async def create_item(self, item: ConversationItem) -> ConversationItem:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO conversation_items (id, response_id, item_type, role, content, status, created_at, "
                "tenant_id) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET "
                "response_id = EXCLUDED.response_id, item_type = EXCLUDED.item_type, role = EXCLUDED.role, "
                "content = EXCLUDED.content, status = EXCLUDED.status, created_at = EXCLUDED.created_at, "
                "tenant_id = EXCLUDED.tenant_id",
                *records.item_values(item))
        return item

    async def get_item(self, item_id: str) -> ConversationItem | None:
        row = await self._row(f"SELECT {_ITEM_COLUMNS} FROM conversation_items i WHERE i.id = $1", item_id)
        return records.item(*row) if row else None

    async def link_items(self, conversation_id: str, item_ids: list[str], added_at: float) -> None:
        async with self._conn(transaction=True) as conn:
            await conn.executemany(
                "INSERT INTO conversation_item_links (conversation_id, item_id, added_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (conversation_id, item_id) DO UPDATE SET added_at = EXCLUDED.added_at",
                [(conversation_id, item_id, link_time(added_at, index)) for index, item_id in enumerate(item_ids)])

    async def is_item_linked(self, conversation_id: str, item_id: str) -> bool:
        row = await self._row("SELECT 1 FROM conversation_item_links WHERE conversation_id = $1 AND item_id = $2",
                              conversation_id, item_id)
        return row is not None

    async def unlink_item(self, conversation_id: str, item_id: str) -> bool:
        async with self._conn() as conn:
            status = await conn.execute("DELETE FROM conversation_item_links WHERE conversation_id = $1 "
                                        "AND item_id = $2", conversation_id, item_id)
        return _count(status) > 0

    async def list_items(self, conversation_id: str, limit: int = 100, order: Order = "desc",
                         after: str | None = None) -> ItemPage:
        direction, compare = ("ASC", ">") if order == "asc" else ("DESC", "<")
        # The cursor is resolved in the same statement: an unknown `after` matches no row and is ignored.
        sql = (f"SELECT {_ITEM_COLUMNS} FROM conversation_item_links l JOIN conversation_items i ON i.id = l.item_id "
               "LEFT JOIN conversation_item_links c ON c.conversation_id = l.conversation_id AND c.item_id = $2 "
               f"WHERE l.conversation_id = $1 AND (c.item_id IS NULL OR (l.added_at, l.item_id) {compare} "
               f"(c.added_at, c.item_id)) ORDER BY l.added_at {direction}, l.item_id {direction} LIMIT $3")
        async with self._conn() as conn:
            rows = await conn.fetch(sql, conversation_id, after, limit + 1)
        return ItemPage([records.item(*row) for row in rows[:limit]], has_more=len(rows) > limit)

    # -- responses -----------------------------------------------------------------------------------

    async def store_response(self, response: StoredResponse) -> None:
        async with self._conn() as conn:
            await conn.execute(
                f"INSERT INTO responses ({_RESPONSE_COLUMNS}) "
                "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8::jsonb, $9) "
                "ON CONFLICT (id) DO UPDATE SET conversation_id = EXCLUDED.conversation_id, "
                "previous_response_id = EXCLUDED.previous_response_id, input = EXCLUDED.input, "
                "created_at = EXCLUDED.created_at, safety_identifier = EXCLUDED.safety_identifier, "
                "model = EXCLUDED.model, raw_response = EXCLUDED.raw_response, tenant_id = EXCLUDED.tenant_id",
                *records.response_values(response))

    async def get_response(self, response_id: str) -> StoredResponse | None:
        row = await self._row(f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE id = $1", response_id)
        return records.response(*row) if row else None

    async def delete_response(self, response_id: str) -> bool:
        async with self._conn() as conn:
            status = await conn.execute("DELETE FROM responses WHERE id = $1", response_id)
        return _count(status) > 0

    async def response_chain(self, response_id: str, max_depth: int = 100) -> list[StoredResponse]:
        return await walk_chain(self.get_response, response_id, max_depth)


def _count(status: str) -> int:
    """The row count of a command tag such as 'DELETE 1'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
