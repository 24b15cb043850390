"""The Conversations API through a real gateway process, with the official openai SDK as the client;
GET /v1/models/{id}; history that survives a restart; a history store that goes away answers 503."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from shepherd.testing import Gateway, Sim, free_ports
from shepherd.testing.databases import PostgresServer, RedisServer


def _client(gateway: Gateway, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


def _backend_flags(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    if name == "sqlite":
        return ["--history-backend", "sqlite", "--history-data-dir", str(tmp_path)]
    if name == "memory":
        return ["--history-backend", "memory"]
    if name == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return ["--history-backend", "postgres", "--postgres-db-url",
                server.create_database(f"api_{uuid.uuid4().hex[:12]}")]
    redis: RedisServer = request.getfixturevalue("redis_server")
    return ["--history-backend", "redis", "--redis-url", redis.url]


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def history_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway((), *_backend_flags(request.param, request, tmp_path))
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def sqlite_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway((), "--history-data-dir", str(tmp_path_factory.mktemp("history")))  # the default backend
    yield gateway
    gateway.stop()


def test_a_conversation_from_creation_to_deletion(history_gateway: Gateway) -> None:
    client = _client(history_gateway)
    conversation = client.conversations.create(
        metadata={"topic": "weather", "user": "ann"},
        items=[{"type": "message", "role": "system", "content": "Be brief."},
               {"type": "message", "role": "user", "content": "Weather in Paris?"}])
    assert conversation.id.startswith("conv_") and conversation.object == "conversation"
    assert client.conversations.retrieve(conversation.id).metadata == {"topic": "weather", "user": "ann"}

    # Patch-merge: a null value removes a key, others are added or replaced.
    updated = client.conversations.update(conversation.id, metadata={"user": None, "lang": "en"})  # type: ignore[dict-item]
    assert updated.metadata == {"topic": "weather", "lang": "en"}

    added = client.conversations.items.create(conversation.id, items=[
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "18C, sunny"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "18C and sunny."}]},
    ])
    assert [item.type for item in added.data] == ["function_call", "function_call_output", "message"]
    assert added.first_id == added.data[0].id and added.last_id == added.data[-1].id and added.has_more is False

    # Auto-pagination over pages of two, oldest first: the five items in the order they were added.
    everything = list(client.conversations.items.list(conversation.id, limit=2, order="asc"))
    assert [getattr(item, "role", item.type) for item in everything] == [
        "system", "user", "function_call", "function_call_output", "assistant"]
    assert everything[0].content[0].text == "Be brief."  # type: ignore[union-attr]
    newest_first = client.conversations.items.list(conversation.id, limit=3)
    assert [item.id for item in newest_first.data] == [item.id for item in everything[::-1][:3]]
    assert newest_first.has_more is True

    call = client.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
    assert call.type == "function_call" and call.arguments == '{"city":"Paris"}'  # type: ignore[union-attr]
    after_delete = client.conversations.items.delete(added.data[0].id, conversation_id=conversation.id)
    assert after_delete.id == conversation.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
    assert len(list(client.conversations.items.list(conversation.id))) == 4

    deleted = client.conversations.delete(conversation.id)
    assert deleted.deleted is True and deleted.id == conversation.id
    with pytest.raises(openai.NotFoundError) as missing:
        client.conversations.retrieve(conversation.id)
    assert missing.value.body["code"] == "conversation_not_found"  # type: ignore[index]


def test_item_references_link_an_existing_item(sqlite_gateway: Gateway) -> None:
    client = _client(sqlite_gateway)
    source = client.conversations.create(items=[{"type": "message", "role": "user", "content": "shared"}])
    shared_id = client.conversations.items.list(source.id).data[0].id
    target = client.conversations.create()
    linked = client.conversations.items.create(target.id, items=[{"type": "item_reference", "id": shared_id}])
    assert [item.id for item in linked.data] == [shared_id]
    assert client.conversations.items.retrieve(shared_id, conversation_id=target.id).id == shared_id
    with pytest.raises(openai.BadRequestError) as again:
        client.conversations.items.create(target.id, items=[{"type": "item_reference", "id": shared_id}])
    assert again.value.body["code"] == "item_already_in_conversation"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        client.conversations.items.create(target.id, items=[{"type": "item_reference", "id": "msg_nope"}])
    assert missing.value.body["code"] == "item_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as taken:  # a new item may not reuse another's id
        client.conversations.items.create(target.id, items=[
            {"type": "message", "role": "user", "content": "overwrite?", "id": shared_id}])
    assert taken.value.body["code"] in ("item_already_in_conversation", "item_id_in_use")  # type: ignore[index]
    other = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as reuse:
        client.conversations.items.create(other.id, items=[
            {"type": "message", "role": "user", "content": "overwrite?", "id": shared_id}])
    assert reuse.value.body["code"] == "item_id_in_use"  # type: ignore[index]
    assert client.conversations.items.retrieve(shared_id, conversation_id=source.id).content[0].text == "shared"  # type: ignore[union-attr]


def test_items_outside_the_replayed_kinds_are_kept_with_a_warning(sqlite_gateway: Gateway) -> None:
    conversation = _client(sqlite_gateway).conversations.create()
    response = httpx.post(f"{sqlite_gateway.url}/v1/conversations/{conversation.id}/items", json={"items": [
        {"type": "web_search_call", "id": f"ws_{uuid.uuid4().hex}", "status": "completed",
         "action": {"type": "search", "query": "paris"}},
        {"role": "user", "content": "no type: a message"}]}, timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert [item["type"] for item in body["data"]] == ["web_search_call", "message"]
    assert body["data"][0]["action"] == {"type": "search", "query": "paris"}
    assert len(body["warnings"]) == 1 and "web_search_call" in body["warnings"][0]


@pytest.mark.parametrize(("path", "payload", "code"), [
    ("", {"metadata": {f"k{i}": "v" for i in range(17)}}, "invalid_metadata"),
    ("", {"metadata": {"k": 1}}, "invalid_metadata"),
    ("", {"metadata": "nope"}, "invalid_type"),
    ("", {"items": [{"type": "message", "role": "user", "content": "x"}] * 21}, "too_many_items"),
    ("", {"items": [{"type": "telepathy"}]}, "invalid_item"),
    ("", {"items": [{"type": "message", "role": "robot", "content": "x"}]}, "invalid_item"),
    ("", {"items": [{"type": "message", "role": "user", "content": "x", "id": "x" * 65}]}, "invalid_item"),
    ("/items", {"items": []}, "invalid_value"),
    ("/items", {}, "missing_required_parameter"),
    ("/update", {"metadata": {f"n{i}": "v" for i in range(11)}}, "invalid_metadata"),  # 6 + 11 > 16
    ("/update", {}, "missing_required_parameter"),
])
def test_bad_requests_get_openai_errors(sqlite_gateway: Gateway, path: str, payload: dict, code: str) -> None:
    conversation = _client(sqlite_gateway).conversations.create(metadata={f"m{i}": "v" for i in range(6)})
    url = f"{sqlite_gateway.url}/v1/conversations"
    if path == "/items":
        url += f"/{conversation.id}/items"
    elif path == "/update":
        url += f"/{conversation.id}"
    response = httpx.post(url, json=payload, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


def test_bad_queries_and_bodies(sqlite_gateway: Gateway) -> None:
    client = _client(sqlite_gateway)
    conversation = client.conversations.create()
    base = f"{sqlite_gateway.url}/v1/conversations/{conversation.id}/items"
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"),
                         ("order=sideways", "order"), ("after=msg_not_here", "after")):
        response = httpx.get(f"{base}?{query}", timeout=10)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, query
    not_json = httpx.post(f"{sqlite_gateway.url}/v1/conversations", content=b"{nope", timeout=10)
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    unknown = httpx.get(f"{sqlite_gateway.url}/v1/conversations/conv_unknown/items", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "conversation_not_found"
    with pytest.raises(openai.NotFoundError):
        client.conversations.delete("conv_unknown")
    with pytest.raises(openai.NotFoundError):
        client.conversations.update("conv_unknown", metadata={"a": "b"})


def test_sqlite_history_survives_a_restart(tmp_path: Path) -> None:
    flags = ("--history-backend", "sqlite", "--history-data-dir", str(tmp_path))
    first = Gateway((), *flags)
    try:
        client = _client(first)
        conversation = client.conversations.create(metadata={"keep": "me"}, items=[
            {"type": "message", "role": "user", "content": "remember this"}])
    finally:
        first.stop()
    assert (tmp_path / "history.sqlite3").exists()
    second = Gateway((), *flags)
    try:
        client = _client(second)
        assert client.conversations.retrieve(conversation.id).metadata == {"keep": "me"}
        items = client.conversations.items.list(conversation.id).data
        assert [item.content[0].text for item in items] == ["remember this"]  # type: ignore[union-attr]
    finally:
        second.stop()


def test_a_history_store_that_is_down_answers_503_and_the_gateway_keeps_serving() -> None:
    port = free_ports(1)[0]
    gateway = Gateway((), "--history-backend", "redis", "--redis-url", f"redis://127.0.0.1:{port}/0",
                      "--redis-op-timeout-secs", "0.5")
    try:
        client = _client(gateway)
        with pytest.raises(openai.InternalServerError) as down:
            client.conversations.create()
        assert down.value.status_code == 503 and down.value.body["code"] == "storage_unavailable"  # type: ignore[index]
        assert httpx.get(gateway.url + "/liveness", timeout=5).status_code == 200
        server = RedisServer(port)  # it comes back: the same gateway uses it without a restart
        try:
            conversation = client.conversations.create(metadata={"back": "yes"})
            assert client.conversations.retrieve(conversation.id).metadata == {"back": "yes"}
        finally:
            server.stop()
        with pytest.raises(openai.InternalServerError):
            client.conversations.retrieve(conversation.id)
    finally:
        gateway.stop()


def test_postgres_going_down_answers_503() -> None:
    server = PostgresServer()
    gateway = Gateway((), "--history-backend", "postgres", "--postgres-db-url", server.url,
                      "--postgres-op-timeout-secs", "1")
    try:
        client = _client(gateway)
        conversation = client.conversations.create()
        server.stop()
        with pytest.raises(openai.InternalServerError) as down:
            client.conversations.retrieve(conversation.id)
        assert down.value.status_code == 503 and down.value.body["code"] == "storage_unavailable"  # type: ignore[index]
        assert httpx.get(gateway.url + "/liveness", timeout=5).status_code == 200
    finally:
        gateway.stop()
        server.stop()


def test_none_backend_accepts_writes_and_finds_nothing() -> None:
    gateway = Gateway((), "--history-backend", "none")
    try:
        client = _client(gateway)
        conversation = client.conversations.create(metadata={"a": "b"})
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(conversation.id)
    finally:
        gateway.stop()


def test_conversations_need_the_api_key_when_one_is_set(tmp_path: Path) -> None:
    gateway = Gateway((), "--api-key", "sk-gw", "--history-data-dir", str(tmp_path))
    try:
        with pytest.raises(openai.AuthenticationError):
            _client(gateway, "wrong").conversations.create()
        assert _client(gateway, "sk-gw").conversations.create().id.startswith("conv_")
    finally:
        gateway.stop()


def test_a_bad_history_flag_stops_launch_with_a_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for flags, text in ((["--history-backend", "postgres"], "--postgres-db-url"),
                        (["--history-backend", "redis", "--redis-url", "http://x"], "--redis-url"),
                        (["--redis-retention-days", "0"], "--redis-retention-days"),
                        (["--history-data-dir", str(blocker)], "history database")):
        run = subprocess.run([sys.executable, "-m", "shepherd", "launch", "--port", str(free_ports(1)[0]), *flags],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and text in run.stderr, (flags, run.stderr[-2000:])
        assert "Traceback" not in run.stderr


def test_get_model_returns_the_card_or_404(sims: Sim, gateway: Gateway) -> None:
    client = _client(gateway)
    listed = {model.id: model for model in client.models.list()}
    card = client.models.retrieve("mock-model")
    assert card.id == "mock-model" and card.object == "model"
    assert card.model_dump() == listed["mock-model"].model_dump()
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_get_model_with_a_slash_in_its_id() -> None:
    sim = Sim(1, "--model", "org/mock-model")
    gateway = Gateway(sim.urls)
    try:
        assert _client(gateway).models.retrieve("org/mock-model").id == "org/mock-model"
    finally:
        gateway.stop()
        sim.stop()
