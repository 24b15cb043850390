"""History in one SQLite file (aiosqlite): the embedded default for a single gateway.

One connection, in WAL mode, serialised by a lock: SQLite has one writer at a time anyway, and a
shared connection must not interleave two coroutines' transactions. Every write is one
`BEGIN IMMEDIATE ... COMMIT`, so a crash or error leaves the record whole or absent. A database
locked by someone else for longer than `busy_timeout_secs` raises StorageUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

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

FILE_NAME = "history.sqlite3"

# (version, statements): applied in order, each version in its own transaction, recorded in _schema_versions.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        "CREATE TABLE conversations (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, metadata TEXT)",
        "CREATE TABLE conversation_items (id TEXT PRIMARY KEY, response_id TEXT, item_type TEXT NOT NULL, "
        "role TEXT, content TEXT, status TEXT, created_at INTEGER NOT NULL)",
        "CREATE TABLE conversation_item_links (conversation_id TEXT NOT NULL, item_id TEXT NOT NULL, "
        "added_at REAL NOT NULL, PRIMARY KEY (conversation_id, item_id))",
        "CREATE TABLE responses (id TEXT PRIMARY KEY, conversation_id TEXT, previous_response_id TEXT, "
        "input TEXT NOT NULL, created_at INTEGER NOT NULL, safety_identifier TEXT, model TEXT, "
        "raw_response TEXT NOT NULL)",
    )),
    (2, (
        # Item pages walk (added_at, item_id) within one conversation.
        "CREATE INDEX conv_item_links_conv_idx ON conversation_item_links (conversation_id, added_at, item_id)",
        "CREATE INDEX responses_safety_idx ON responses (safety_identifier)",
    )),
    (3, (
        # The creating tenant of each record; rows from before it stay NULL: untagged, readable by every caller.
        "ALTER TABLE conversations ADD COLUMN tenant_id TEXT",
        "ALTER TABLE conversation_items ADD COLUMN tenant_id TEXT",
        "ALTER TABLE responses ADD COLUMN tenant_id TEXT",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_ITEM_COLUMNS = "i.id, i.response_id, i.item_type, i.role, i.content, i.status, i.created_at, i.tenant_id"
_RESPONSE_COLUMNS = ("id, conversation_id, previous_response_id, input, created_at, safety_identifier, model, "
                     "raw_response, tenant_id")


class SqliteStorage:
    def __init__(self, path: str, busy_timeout_secs: float = 5.0, migrations: Iterable[tuple[int, tuple[str, ...]]]
                 = MIGRATIONS) -> None:
        """`path`: the database file (its folder is created); `migrations`: tests pass a prefix of them."""
        self.path = path
        self._busy_timeout = busy_timeout_secs
        self._migrations = tuple(migrations)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            folder = os.path.dirname(self.path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            self._db = await aiosqlite.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
            await self._migrate()
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StorageUnavailable(f"cannot open the history database {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def _migrate(self) -> None:
        db = self._conn()
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute("CREATE TABLE IF NOT EXISTS _schema_versions (version INTEGER PRIMARY KEY, "
                             "applied_at INTEGER NOT NULL)")
            async with db.execute("SELECT COALESCE(MAX(version), 0) FROM _schema_versions") as cursor:
                row = await cursor.fetchone()
            current = int(row[0]) if row else 0
            latest = self._migrations[-1][0] if self._migrations else 0
            if current > latest:
                raise StorageError(f"the history database {self.path} has schema version {current}, newer than "
                                   f"this gateway's {latest}; upgrade the gateway")
            for version, statements in self._migrations:
                if version > current:
                    for statement in statements:
                        await db.execute(statement)
                    await db.execute("INSERT INTO _schema_versions (version, applied_at) VALUES (?, ?)",
                                     (version, int(time.time())))
                    log.info("history database %s migrated to schema version %d", self.path, version)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageUnavailable("the SQLite history store is not open")
        return self._db

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        try:  # waiting behind other callers is bounded like waiting for SQLite's own lock
            async with asyncio.timeout(self._busy_timeout):
                await self._lock.acquire()
        except TimeoutError:
            raise StorageUnavailable(f"SQLite history store busy for over {self._busy_timeout:g}s") from None
        try:
            yield self._conn()
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"SQLite history store: {exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite history store: {exc}") from exc
        finally:
            self._lock.release()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction: committed whole when the block finishes, rolled back on any error."""
        async with self._read() as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.rollback()
                raise
            await db.commit()

    async def _one(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Row | None:
        async with self._read() as db, db.execute(sql, params) as cursor:
            return await cursor.fetchone()  # type: ignore[no-any-return]

    # -- conversations ------------------------------------------------------------------------------

    async def create_conversation(self, metadata: dict[str, str] | None = None,
                                  conversation_id: str | None = None, tenant: str | None = None) -> Conversation:
        conversation = Conversation(conversation_id or new_conversation_id(), int(time.time()), metadata or None,
                                    tenant)
        async with self._write() as db:
            await db.execute("INSERT OR REPLACE INTO conversations (id, created_at, metadata, tenant_id) "
                             "VALUES (?, ?, ?, ?)", (conversation.id, conversation.created_at,
                                                     records.metadata_text(conversation.metadata), tenant))
        return conversation

    async def get_conversation(self, conversation_id: str) -> Conversation | None:
        row = await self._one("SELECT id, created_at, metadata, tenant_id FROM conversations WHERE id = ?",
                              (conversation_id,))
        return records.conversation(*row) if row else None

    async def update_conversation(self, conversation_id: str, metadata: dict[str, str] | None) -> Conversation | None:
        async with self._write() as db:
            cursor = await db.execute("UPDATE conversations SET metadata = ? WHERE id = ?",
                                      (records.metadata_text(metadata), conversation_id))
            if cursor.rowcount == 0:
                return None
        return await self.get_conversation(conversation_id)

    async def delete_conversation(self, conversation_id: str) -> bool:
        async with self._write() as db:
            cursor = await db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            await db.execute("DELETE FROM conversation_item_links WHERE conversation_id = ?", (conversation_id,))
            return cursor.rowcount > 0

    # -- items ---------------------------------------------------------------------------------------

    async def create_item(self, item: ConversationItem) -> ConversationItem:
        async with self._write() as db:
            await db.execute("INSERT OR REPLACE INTO conversation_items (id, response_id, item_type, role, content, "
                             "status, created_at, tenant_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             records.item_values(item))
        return item

    async def get_item(self, item_id: str) -> ConversationItem | None:
        row = await self._one(f"SELECT {_ITEM_COLUMNS} FROM conversation_items i WHERE i.id = ?", (item_id,))
        return records.item(*row) if row else None

    async def link_items(self, conversation_id: str, item_ids: list[str], added_at: float) -> None:
        async with self._write() as db:
            await db.executemany("INSERT OR REPLACE INTO conversation_item_links (conversation_id, item_id, added_at) "
                                 "VALUES (?, ?, ?)", [(conversation_id, item_id, link_time(added_at, index))
                                  for index, item_id in enumerate(item_ids)])

    async def is_item_linked(self, conversation_id: str, item_id: str) -> bool:
        row = await self._one("SELECT 1 FROM conversation_item_links WHERE conversation_id = ? AND item_id = ?",
                              (conversation_id, item_id))
        return row is not None

    async def unlink_item(self, conversation_id: str, item_id: str) -> bool:
        async with self._write() as db:
            cursor = await db.execute("DELETE FROM conversation_item_links WHERE conversation_id = ? AND item_id = ?",
                                      (conversation_id, item_id))
            return cursor.rowcount > 0

    async def list_items(self, conversation_id: str, limit: int = 100, order: Order = "desc",
                         after: str | None = None) -> ItemPage:
        direction, compare = ("ASC", ">") if order == "asc" else ("DESC", "<")
        where, params = "l.conversation_id = ?", [conversation_id]
        if after is not None:
            cursor_row = await self._one("SELECT added_at FROM conversation_item_links WHERE conversation_id = ? "
                                         "AND item_id = ?", (conversation_id, after))
            if cursor_row is not None:
                where += f" AND (l.added_at, l.item_id) {compare} (?, ?)"
                params += [cursor_row[0], after]
        sql = (f"SELECT {_ITEM_COLUMNS} FROM conversation_item_links l JOIN conversation_items i ON i.id = l.item_id "
               f"WHERE {where} ORDER BY l.added_at {direction}, l.item_id {direction} LIMIT ?")
        async with self._read() as db, db.execute(sql, (*params, limit + 1)) as cursor:
            rows = list(await cursor.fetchall())
        return ItemPage([records.item(*row) for row in rows[:limit]], has_more=len(rows) > limit)

    # -- responses -----------------------------------------------------------------------------------

    async def store_response(self, response: StoredResponse) -> None:
        async with self._write() as db:
            await db.execute(f"INSERT OR REPLACE INTO responses ({_RESPONSE_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", records.response_values(response))

    async def get_response(self, response_id: str) -> StoredResponse | None:
        row = await self._one(f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE id = ?", (response_id,))
        return records.response(*row) if row else None

    async def delete_response(self, response_id: str) -> bool:
        async with self._write() as db:
            cursor = await db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
            return cursor.rowcount > 0

    async def response_chain(self, response_id: str, max_depth: int = 100) -> list[StoredResponse]:
        return await walk_chain(self.get_response, response_id, max_depth)
