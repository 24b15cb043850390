"""The storage contract: the same scenarios on every backend (memory, SQLite, PostgreSQL, Redis).

PostgreSQL and Redis are real servers started by the suite (tests/conftest.py); SQLite is a real
file. Unavailability is shown against real sockets: a closed port, and a listener that accepts and
never answers.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shepherd.storage.base import (
    ConversationItem,
    HistoryStorage,
    StorageError,
    StorageUnavailable,
    StoredResponse,
    new_item_id,
)
from shepherd.storage.memory import MemoryStorage
from shepherd.storage.postgres import MIGRATIONS as PG_MIGRATIONS
from shepherd.storage.postgres import PostgresStorage
from shepherd.storage.redis import RedisStorage
from shepherd.storage.scoped import TenantHistory, foreign_item
from shepherd.storage.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from shepherd.storage.sqlite import SqliteStorage
from shepherd.testing import free_ports
from shepherd.testing.databases import PostgresServer, RedisServer

BACKENDS = ["memory", "sqlite", "postgres", "redis"]
DURABLE = ["sqlite", "postgres", "redis"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HistoryStorage]:
    backend = _backend(request, request.param, tmp_path)
    await backend.start()
    yield backend
    await backend.close()


def _backend(request: pytest.FixtureRequest, name: str, tmp_path: Path) -> HistoryStorage:
    if name == "memory":
        return MemoryStorage()
    if name == "sqlite":
        return SqliteStorage(str(tmp_path / "data" / "history.sqlite3"))
    if name == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return PostgresStorage(server.url, pool_max=4, op_timeout_secs=5)
    redis: RedisServer = request.getfixturevalue("redis_server")
    return RedisStorage(redis.url, pool_max=4, key_prefix=f"test-{uuid.uuid4().hex}:")


def _message(text: str, role: str = "user") -> ConversationItem:
    return ConversationItem(id=new_item_id("message"), item_type="message", role=role,
                            content=[{"type": "input_text", "text": text}])


def _response(response_id: str, previous: str | None = None, **fields: object) -> StoredResponse:
    return StoredResponse(id=response_id, previous_response_id=previous,
                          raw_response={"id": response_id, "object": "response", "output": [{"text": "é ☃"}]},
                          input=[{"type": "message", "role": "user", "content": f"to {response_id}"}],
                          **fields)  # type: ignore[arg-type]


# -- conversations ---------------------------------------------------------------------------------------

async def test_conversation_lifecycle(store: HistoryStorage) -> None:
    created = await store.create_conversation({"topic": "demo"})
    assert created.id.startswith("conv_") and len(created.id) == 55
    assert abs(created.created_at - time.time()) < 60
    fetched = await store.get_conversation(created.id)
    assert fetched is not None and fetched.metadata == {"topic": "demo"} and fetched.created_at == created.created_at
    updated = await store.update_conversation(created.id, {"topic": "other", "k": "v"})
    assert updated is not None and updated.metadata == {"topic": "other", "k": "v"}
    cleared = await store.update_conversation(created.id, None)
    assert cleared is not None and cleared.metadata is None
    assert (await store.get_conversation(created.id)).metadata is None  # type: ignore[union-attr]
    assert await store.delete_conversation(created.id) is True
    assert await store.get_conversation(created.id) is None
    assert await store.delete_conversation(created.id) is False
    assert await store.update_conversation(created.id, {"a": "b"}) is None


async def test_conversation_with_a_given_id_and_no_metadata(store: HistoryStorage) -> None:
    wanted = "conv_" + uuid.uuid4().hex
    created = await store.create_conversation(None, wanted)
    assert created.id == wanted
    fetched = await store.get_conversation(wanted)
    assert fetched is not None and fetched.metadata is None
    assert fetched.to_json() == {"id": wanted, "object": "conversation", "created_at": created.created_at,
                                 "metadata": {}}
    again = await store.create_conversation({"second": "time"}, wanted)  # the same id again replaces it
    assert again.id == wanted and (await store.get_conversation(wanted)).metadata == {"second": "time"}  # type: ignore[union-attr]


# -- tenants -----------------------------------------------------------------------------------------------

async def test_records_keep_their_tenant(store: HistoryStorage) -> None:
    conversation = await store.create_conversation({"k": "v"}, tenant="auth:a")
    assert (await store.get_conversation(conversation.id)).tenant == "auth:a"  # type: ignore[union-attr]
    updated = await store.update_conversation(conversation.id, {"k": "w"})
    assert updated is not None and updated.tenant == "auth:a"  # a metadata update keeps the owner
    item = _message("mine")
    item.tenant = "header:b"
    await store.create_item(item)
    assert await store.get_item(item.id) == item
    await store.store_response(_response("resp_tenant", tenant="auth:a"))
    assert (await store.get_response("resp_tenant")).tenant == "auth:a"  # type: ignore[union-attr]
    untagged = await store.create_conversation()
    assert (await store.get_conversation(untagged.id)).tenant is None  # type: ignore[union-attr]


async def test_a_tenant_sees_its_own_and_untagged_records_only(store: HistoryStorage) -> None:
    a, b = TenantHistory(store, "auth:a"), TenantHistory(store, "auth:b")
    mine = await a.create_conversation({"k": "v"})
    old = await store.create_conversation()  # stored before tenancy: readable by everyone
    assert await a.get_conversation(mine.id) is not None and await b.get_conversation(mine.id) is None
    assert await b.get_conversation(old.id) is not None
    assert await b.update_conversation(mine.id, {"x": "y"}) is None
    assert await b.delete_conversation(mine.id) is False
    assert (await a.get_conversation(mine.id)).metadata == {"k": "v"}  # type: ignore[union-attr]
    item = _message("secret")
    await a.create_item(item)
    assert (await store.get_item(item.id)).tenant == "auth:a"  # type: ignore[union-attr]
    assert await b.get_item(item.id) is None and await a.get_item(item.id) is not None
    assert await foreign_item(b, item.id) and not await foreign_item(a, item.id)
    assert not await foreign_item(store, item.id)  # unscoped: nothing is foreign
    await store.store_response(_response("resp_old"))
    await a.store_response(_response("resp_a1", "resp_old"))
    await a.store_response(_response("resp_a2", "resp_a1"))
    await b.store_response(_response("resp_b1", "resp_a2"))  # b names a's response as its previous one
    assert [r.id for r in await a.response_chain("resp_a2")] == ["resp_old", "resp_a1", "resp_a2"]
    assert await b.response_chain("resp_a2") == [] and await b.get_response("resp_a1") is None
    assert [r.id for r in await b.response_chain("resp_b1")] == ["resp_b1"]  # the chain ends at a's link
    assert await b.delete_response("resp_a1") is False and await store.get_response("resp_a1") is not None
    assert await a.delete_response("resp_a1") is True
    assert await a.delete_conversation(mine.id) is True


# -- items -------------------------------------------------------------------------------------------------

async def test_items_round_trip_whole(store: HistoryStorage) -> None:
    call = ConversationItem(id=new_item_id("function_call"), item_type="function_call", role=None,
                            content={"call_id": "c1", "name": "get_weather", "arguments": '{"city": "Zürich"}'},
                            status="in_progress", response_id="resp_1", created_at=1_700_000_000)
    await store.create_item(call)
    fetched = await store.get_item(call.id)
    assert fetched == call
    assert await store.get_item("msg_missing") is None


async def test_items_added_together_keep_their_order(store: HistoryStorage) -> None:
    conversation = await store.create_conversation()
    items = [_message(f"m{i}") for i in range(5)]
    for item in items:
        await store.create_item(item)
    await store.link_items(conversation.id, [i.id for i in items], time.time())
    ascending = await store.list_items(conversation.id, 10, "asc")
    assert [i.id for i in ascending.items] == [i.id for i in items] and not ascending.has_more
    descending = await store.list_items(conversation.id, 10, "desc")
    assert [i.id for i in descending.items] == [i.id for i in reversed(items)]


async def test_pages_walk_every_item_once_in_both_orders(store: HistoryStorage) -> None:
    conversation = await store.create_conversation()
    ids: list[str] = []
    for batch in range(3):  # three separate adds, later ones sort after earlier ones
        items = [_message(f"b{batch}-{i}") for i in range(3)]
        for item in items:
            await store.create_item(item)
        await store.link_items(conversation.id, [i.id for i in items], time.time() + batch)
        ids += [i.id for i in items]
    for order, expected in (("asc", ids), ("desc", ids[::-1])):
        seen: list[str] = []
        after: str | None = None
        pages = 0
        while True:
            page = await store.list_items(conversation.id, 4, order, after)  # type: ignore[arg-type]
            seen += [i.id for i in page.items]
            pages += 1
            if not page.has_more:
                break
            after = page.items[-1].id
        assert seen == expected and pages == 3, order
    exact = await store.list_items(conversation.id, 9, "asc")
    assert len(exact.items) == 9 and exact.has_more is False  # a full last page is not "more"


async def test_links_are_per_conversation_and_unlink_keeps_the_item(store: HistoryStorage) -> None:
    first, second = await store.create_conversation(), await store.create_conversation()
    shared = _message("shared")
    await store.create_item(shared)
    await store.link_items(first.id, [shared.id], time.time())
    await store.link_items(second.id, [shared.id], time.time())
    assert await store.is_item_linked(first.id, shared.id) and await store.is_item_linked(second.id, shared.id)
    assert await store.unlink_item(first.id, shared.id) is True
    assert await store.unlink_item(first.id, shared.id) is False
    assert not await store.is_item_linked(first.id, shared.id)
    assert (await store.list_items(first.id)).items == []
    assert [i.id for i in (await store.list_items(second.id)).items] == [shared.id]
    assert await store.get_item(shared.id) == shared


async def test_deleting_a_conversation_drops_its_links(store: HistoryStorage) -> None:
    conversation = await store.create_conversation()
    item = _message("x")
    await store.create_item(item)
    await store.link_items(conversation.id, [item.id], time.time())
    await store.delete_conversation(conversation.id)
    assert not await store.is_item_linked(conversation.id, item.id)
    assert (await store.list_items(conversation.id)).items == []
    assert await store.get_item(item.id) is not None


# -- responses ---------------------------------------------------------------------------------------------

async def test_response_round_trip_and_replace(store: HistoryStorage) -> None:
    rid = f"resp_{uuid.uuid4().hex}"
    stored = _response(rid, conversation_id="conv_x", model="m", safety_identifier="user-1", created_at=1_700_000_001)
    await store.store_response(stored)
    assert await store.get_response(rid) == stored
    replaced = _response(rid, model="m2")
    replaced.raw_response["status"] = "completed"
    await store.store_response(replaced)  # background responses store twice under one id
    assert await store.get_response(rid) == replaced
    assert await store.delete_response(rid) is True
    assert await store.get_response(rid) is None
    assert await store.delete_response(rid) is False


async def test_response_chain(store: HistoryStorage) -> None:
    base = uuid.uuid4().hex
    a, b, c = (f"resp_{base}_{n}" for n in "abc")
    await store.store_response(_response(a))
    await store.store_response(_response(b, a))
    await store.store_response(_response(c, b))
    assert [r.id for r in await store.response_chain(c)] == [a, b, c]
    assert [r.id for r in await store.response_chain(c, max_depth=2)] == [b, c]
    assert await store.response_chain(f"resp_{base}_missing") == []
    await store.delete_response(a)
    assert [r.id for r in await store.response_chain(c)] == [b, c]  # a missing older link ends the chain
    x, y = f"resp_{base}_x", f"resp_{base}_y"
    await store.store_response(_response(x, y))
    await store.store_response(_response(y, x))
    with pytest.raises(StorageError, match="cycle"):
        await store.response_chain(x)


# -- no half-written records ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DURABLE)
async def test_a_failing_multi_row_write_leaves_nothing(request: pytest.FixtureRequest, tmp_path: Path,
                                                         name: str) -> None:
    backend = _backend(request, name, tmp_path)
    await backend.start()
    try:
        conversation = await backend.create_conversation()
        good = _message("good")
        await backend.create_item(good)
        with pytest.raises((StorageError, ValueError, TypeError)):
            await backend.link_items(conversation.id, [good.id, None], time.time())  # type: ignore[list-item]
        assert not await backend.is_item_linked(conversation.id, good.id)
        assert (await backend.list_items(conversation.id)).items == []
    finally:
        await backend.close()


# -- unavailable backends --------------------------------------------------------------------------------------

class BlackHole:
    """A loopback listener that accepts connections and never answers: a backend that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self._held.append(conn)
                self.accepted += 1
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def _unreachable(name: str, port: int, timeout: float) -> HistoryStorage:
    if name == "postgres":
        return PostgresStorage(f"postgresql://postgres@127.0.0.1:{port}/postgres", op_timeout_secs=timeout)
    return RedisStorage(f"redis://127.0.0.1:{port}/0", op_timeout_secs=timeout)


async def _every_operation_unavailable(backend: HistoryStorage) -> None:
    operations = [
        backend.create_conversation({"a": "b"}), backend.get_conversation("conv_x"),
        backend.update_conversation("conv_x", None), backend.delete_conversation("conv_x"),
        backend.create_item(_message("x")), backend.get_item("msg_x"), backend.link_items("conv_x", ["msg_x"], 1.0),
        backend.is_item_linked("conv_x", "msg_x"), backend.unlink_item("conv_x", "msg_x"),
        backend.list_items("conv_x"), backend.store_response(_response("resp_x")), backend.get_response("resp_x"),
        backend.delete_response("resp_x"), backend.response_chain("resp_x"),
    ]
    for operation in operations:
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(operation, 30)  # the op timeout must fire well before this bound


@pytest.mark.parametrize("name", ["postgres", "redis"])
async def test_a_closed_port_is_unavailable_on_every_operation(name: str) -> None:
    backend = _unreachable(name, free_ports(1)[0], 1.0)
    await backend.start()  # down at start-up: the gateway still starts
    try:
        await _every_operation_unavailable(backend)
    finally:
        await backend.close()


@pytest.mark.parametrize("name", ["postgres", "redis"])
async def test_a_backend_that_never_answers_is_unavailable(name: str, black_hole: BlackHole) -> None:
    backend = _unreachable(name, black_hole.port, 0.3)
    await backend.start()
    try:
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(backend.get_conversation("conv_x"), 30)
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(backend.store_response(_response("resp_x")), 30)
    finally:
        await backend.close()


async def test_callers_share_one_connection_attempt_to_a_hanging_postgres(black_hole: BlackHole) -> None:
    """Twenty requests at once against a database that hangs make one attempt between them (each is
    answered after that one attempt's timeout, not after the attempts of every caller ahead of it)."""
    backend = _unreachable("postgres", black_hole.port, 0.5)
    try:
        results = await asyncio.wait_for(asyncio.gather(
            *(backend.get_conversation(f"conv_{i}") for i in range(20)), return_exceptions=True), 60)
        assert all(isinstance(r, StorageUnavailable) for r in results), results
        assert black_hole.accepted == 1
        with pytest.raises(StorageUnavailable):  # a later call tries again
            await backend.get_conversation("conv_later")
        assert black_hole.accepted == 2
    finally:
        await backend.close()


async def test_a_redis_that_comes_up_later_is_used(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    backend = RedisStorage(f"redis://127.0.0.1:{port}/0", op_timeout_secs=1.0)
    await backend.start()
    try:
        with pytest.raises(StorageUnavailable):
            await backend.create_conversation()
        server = RedisServer(port)
        try:
            conversation = await backend.create_conversation({"late": "yes"})
            assert (await backend.get_conversation(conversation.id)).metadata == {"late": "yes"}  # type: ignore[union-attr]
        finally:
            server.stop()
    finally:
        await backend.close()


async def test_a_locked_sqlite_database_is_unavailable_then_recovers(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite3")
    backend = SqliteStorage(path, busy_timeout_secs=0.2)
    await backend.start()
    try:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(backend.create_conversation(), 30)
        other.execute("ROLLBACK")
        other.close()
        conversation = await backend.create_conversation()
        assert await backend.get_conversation(conversation.id) is not None
    finally:
        await backend.close()


async def test_an_unwritable_sqlite_location_fails_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageUnavailable, match="cannot open"):
        await SqliteStorage(str(blocker / "history.sqlite3")).start()


# -- schema versions and migrations -------------------------------------------------------------------------

async def test_sqlite_migrates_an_old_schema_and_keeps_its_data(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite3")
    old = SqliteStorage(path, migrations=SQLITE_MIGRATIONS[:1])
    await old.start()  # the first schema, and a row written as its gateway wrote it
    await old.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO conversations (id, created_at, metadata) VALUES ('conv_old', 1, '{\"v\": \"1\"}')")
    current = SqliteStorage(path)
    await current.start()
    try:
        fetched = await current.get_conversation("conv_old")
        assert fetched is not None and fetched.metadata == {"v": "1"}
        assert fetched.tenant is None
        assert await TenantHistory(current, "auth:a").get_conversation("conv_old") == fetched  # untagged
    finally:
        await current.close()
    with sqlite3.connect(path) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM _schema_versions ORDER BY version")]
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert versions == [1, 2, 3] and "conv_item_links_conv_idx" in indexes


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite3")
    first = SqliteStorage(path)
    await first.start()
    await first.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO _schema_versions (version, applied_at) VALUES (99, 0)")
    with pytest.raises(StorageError, match="newer"):
        await SqliteStorage(path).start()


async def test_postgres_migrates_an_old_schema_once_under_concurrency(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database(f"mig_{uuid.uuid4().hex[:12]}")
    import asyncpg

    old = PostgresStorage(url, migrations=PG_MIGRATIONS[:1])
    await old.start()  # the first schema, and a row written as its gateway wrote it
    await old.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO conversations (id, created_at, metadata) "
                           "VALUES ('conv_old', 1, '{\"v\": \"1\"}')")
    finally:
        await conn.close()
    gateways = [PostgresStorage(url) for _ in range(4)]  # gateways starting together migrate once
    await asyncio.gather(*(g.start() for g in gateways))
    try:
        fetched = await gateways[0].get_conversation("conv_old")
        assert fetched is not None and fetched.metadata == {"v": "1"} and fetched.tenant is None
        assert await TenantHistory(gateways[1], "auth:a").get_conversation("conv_old") == fetched  # untagged
        conn = await asyncpg.connect(url)
        try:
            versions = [r[0] for r in await conn.fetch("SELECT version FROM _schema_versions ORDER BY version")]
            index = await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = 'conv_item_links_conv_idx'")
            await conn.execute("INSERT INTO _schema_versions (version, applied_at) VALUES (99, 0)")
        finally:
            await conn.close()
        assert versions == [1, 2, 3] and index == 1
    finally:
        for g in gateways:
            await g.close()
    with pytest.raises(StorageError, match="newer"):
        await PostgresStorage(url).start()


async def test_redis_refuses_a_newer_layout(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    prefix = f"test-{uuid.uuid4().hex}:"
    client = aioredis.Redis.from_url(redis_server.url)
    await client.set(prefix + "schema_version", 99)
    await client.aclose()
    backend = RedisStorage(redis_server.url, key_prefix=prefix)
    with pytest.raises(StorageError, match="newer"):
        await backend.start()
    await backend.close()


async def test_redis_reads_a_layout_1_record_as_untagged(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    prefix = f"test-{uuid.uuid4().hex}:"
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    await client.set(prefix + "schema_version", 1)
    await client.hset(prefix + "response:resp_v1", mapping={  # type: ignore[misc]
        "id": "resp_v1", "input": "[]", "created_at": 1, "raw_response": '{"id": "resp_v1"}'})
    backend = RedisStorage(redis_server.url, key_prefix=prefix)
    await backend.start()
    try:
        assert await client.get(prefix + "schema_version") == "2"
        stored = await TenantHistory(backend, "auth:a").get_response("resp_v1")
        assert stored is not None and stored.tenant is None
    finally:
        await client.aclose()
        await backend.close()


async def test_redis_keys_expire_with_the_retention(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    prefix = f"test-{uuid.uuid4().hex}:"
    backend = RedisStorage(redis_server.url, retention_days=2, key_prefix=prefix)
    forever = RedisStorage(redis_server.url, retention_days=-1, key_prefix=prefix)
    await backend.start()
    try:
        conversation = await backend.create_conversation()
        item = _message("x")
        await backend.create_item(item)
        await backend.link_items(conversation.id, [item.id], time.time())
        await backend.store_response(_response("resp_ttl"))
        kept = await forever.create_conversation()
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            for key in (f"conversation:{conversation.id}", f"conversation:{conversation.id}:items", f"item:{item.id}",
                        "response:resp_ttl"):
                ttl = await client.ttl(prefix + key)
                assert 2 * 86_400 - 60 < ttl <= 2 * 86_400, key
            assert await client.ttl(f"{prefix}conversation:{kept.id}") == -1
        finally:
            await client.aclose()
    finally:
        await backend.close()
        await forever.close()


def test_backends_are_all_covered() -> None:
    """The contract above runs on every backend the factory knows (none is a sink, tested by the API)."""
    from shepherd.config import HISTORY_BACKENDS

    assert set(HISTORY_BACKENDS) - {"none"} == set(BACKENDS)
    assert os.path.basename(SqliteStorage("x/history.sqlite3").path) == "history.sqlite3"
