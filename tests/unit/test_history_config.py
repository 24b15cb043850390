"""The history flags: parsed into HistoryConfig, validated, and turned into the backend they name."""

from __future__ import annotations

import os

import pytest

from shepherd.cli import build_parser, config_from_args
from shepherd.config import ConfigError, HistoryConfig
from shepherd.storage.factory import create_history, default_data_dir
from shepherd.storage.memory import MemoryStorage
from shepherd.storage.none import NoStorage
from shepherd.storage.postgres import PostgresStorage
from shepherd.storage.redis import RedisStorage
from shepherd.storage.sqlite import SqliteStorage


def _history(*flags: str) -> HistoryConfig:
    return config_from_args(build_parser().parse_args(["launch", *flags])).history


def test_defaults_are_sqlite_under_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _history()
    assert config == HistoryConfig()
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    store = create_history(config)
    assert isinstance(store, SqliteStorage) and store.path == "/srv/data/shepherd/history.sqlite3"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == os.path.join(os.path.expanduser("~"), ".local", "share", "shepherd")


def test_every_flag_reaches_the_config() -> None:
    config = _history("--history-backend", "postgres", "--history-data-dir", "/d", "--history-memory-max-responses",
                      "5", "--history-memory-max-items", "6", "--history-memory-retention-secs", "7",
                      "--postgres-db-url", "postgresql://u@h/db", "--postgres-pool-max", "3",
                      "--postgres-op-timeout-secs", "1.5", "--redis-url", "redis://h:1/0", "--redis-pool-max", "4",
                      "--redis-retention-days", "-1", "--redis-op-timeout-secs", "2.5")
    assert config == HistoryConfig("postgres", "/d", 5, 6, 7.0, "postgresql://u@h/db", 3, 1.5, "redis://h:1/0", 4, -1,
                                   2.5)
    config.validate()


@pytest.mark.parametrize(("config", "kind"), [
    (HistoryConfig("memory"), MemoryStorage), (HistoryConfig("none"), NoStorage),
    (HistoryConfig("sqlite", data_dir="/x"), SqliteStorage),
    (HistoryConfig("postgres", postgres_db_url="postgresql://u@127.0.0.1/db"), PostgresStorage),
    (HistoryConfig("redis", redis_url="redis://127.0.0.1:1/0"), RedisStorage),
])
def test_the_factory_builds_the_named_backend(config: HistoryConfig, kind: type) -> None:
    config.validate()
    assert isinstance(create_history(config), kind)


@pytest.mark.parametrize(("config", "message"), [
    (HistoryConfig("cassandra"), "--history-backend"),
    (HistoryConfig("postgres"), "--postgres-db-url"),
    (HistoryConfig("redis"), "--redis-url"),
    (HistoryConfig(postgres_db_url="mysql://x"), "--postgres-db-url"),
    (HistoryConfig(postgres_pool_max=0), "pool-max"),
    (HistoryConfig(redis_op_timeout_secs=0), "op-timeout"),
    (HistoryConfig(redis_retention_days=0), "--redis-retention-days"),
    (HistoryConfig(memory_max_items=0), "--history-memory"),
])
def test_bad_values_name_the_flag(config: HistoryConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.validate()
