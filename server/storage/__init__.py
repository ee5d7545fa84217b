"""Storage engines behind the plugin ``Storage`` protocol: memory, SQLite, PostgreSQL.

``await open_storage(cfg)`` returns an object implementing ``plugin.storage.Storage`` plus
``async close()`` and ``set_invalidation_callback(cb)``: ``cb(key)`` is called on the event
loop when *another* node changed ``key`` (PostgreSQL LISTEN/NOTIFY); ``cb("")`` means
"anything may have changed" (after the notification connection was re-established).
Single-node engines (memory, SQLite) never call it.

Settings (``cfg`` is a mapping or an object with these attributes; YAML ``storage:``):

``type``
    ``"sqlite"`` (default), ``"postgres"`` or ``"memory"``.
``path``
    SQLite: the database file (default ``data/authmount.db``). The parent directory is
    created (mode 0700) and the file is created with mode 0600; ``<path>-wal``,
    ``<path>-shm`` and ``<path>.lock`` sit next to it. One process owns the file.
``sqlite_synchronous``
    SQLite: ``"FULL"`` (default; every acknowledged write survives power loss),
    ``"NORMAL"`` (acknowledged writes survive a process crash, the last ones may be lost
    on power loss) or ``"EXTRA"``.
``sqlite_cache_entries``
    SQLite: how many recently written values to keep in memory for reads (default
    32768; 0 disables). Exact: it is updated by the writer after each commit.
``dsn``
    PostgreSQL: a libpq connection string, e.g. ``postgresql://authmount@db/authmount``.
    Required for ``type: postgres``.
``pool_size``
    PostgreSQL: the maximum number of pooled connections (default 10), plus one
    connection for LISTEN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from plugin.storage import Storage

__all__ = ["open_storage", "DEFAULT_SQLITE_PATH"]

DEFAULT_SQLITE_PATH = "data/authmount.db"


def _setting(cfg: Any, name: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        value = cfg.get(name, default)
    else:
        value = getattr(cfg, name, default)
    return default if value is None else value


def _non_negative(cfg: Any, name: str, default: int) -> int:
    value = _setting(cfg, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"storage {name} must be a non-negative integer")
    return value


async def open_storage(cfg: Any) -> Storage:
    """Open the storage engine described by ``cfg`` (see the module docstring).

    :raises ValueError: unknown ``type``, missing ``dsn`` or a bad tuning value.
    :raises RuntimeError: the SQLite file is in use by another process.
    """
    kind = str(_setting(cfg, "type", "sqlite")).lower()
    if kind == "memory":
        from server.storage.memory import MemoryStorage

        return MemoryStorage()
    if kind == "sqlite":
        from server.storage.sqlite import SQLiteStorage

        return await SQLiteStorage.open(
            str(_setting(cfg, "path", DEFAULT_SQLITE_PATH)),
            synchronous=str(_setting(cfg, "sqlite_synchronous", "FULL")),
            cache_entries=_non_negative(cfg, "sqlite_cache_entries", 32768),
        )
    if kind in ("postgres", "postgresql"):
        from server.storage.postgres import PostgresStorage

        dsn = _setting(cfg, "dsn")
        if not dsn:
            raise ValueError("storage type postgres needs a dsn")
        pool_size = _non_negative(cfg, "pool_size", 10)
        if pool_size < 1:
            raise ValueError("storage pool_size must be at least 1")
        return await PostgresStorage.open(str(dsn), pool_size=pool_size)
    raise ValueError(f"unknown storage type {kind!r} (expected memory, sqlite or postgres)")
