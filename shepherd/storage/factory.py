"""The one place a HistoryConfig becomes a storage backend."""

from __future__ import annotations

import os

from shepherd.config import HistoryConfig
from shepherd.storage.base import HistoryStorage
from shepherd.storage.memory import MemoryStorage
from shepherd.storage.none import NoStorage


def default_data_dir() -> str:
    """$XDG_DATA_HOME/shepherd, else ~/.local/share/shepherd."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "shepherd")


def create_history(config: HistoryConfig) -> HistoryStorage:
    """The backend `config.backend` names; nothing connects until its `start()`. The drivers are
    imported only for the backend in use."""
    if config.backend == "memory":
        return MemoryStorage(config.memory_max_responses, config.memory_max_items, config.memory_retention_secs)
    if config.backend == "none":
        return NoStorage()
    if config.backend == "sqlite":
        from shepherd.storage.sqlite import FILE_NAME, SqliteStorage

        return SqliteStorage(os.path.join(config.data_dir or default_data_dir(), FILE_NAME))
    if config.backend == "postgres":
        from shepherd.storage.postgres import PostgresStorage

        assert config.postgres_db_url is not None  # HistoryConfig.validate
        return PostgresStorage(config.postgres_db_url, config.postgres_pool_max, config.postgres_op_timeout_secs)
    if config.backend == "redis":
        from shepherd.storage.redis import RedisStorage

        assert config.redis_url is not None
        return RedisStorage(config.redis_url, config.redis_pool_max, config.redis_retention_days,
                            config.redis_op_timeout_secs)
    raise ValueError(f"unknown history backend {config.backend!r}")
