"""Storage engines behind the plugin ``Storage`` protocol: memory, SQLite, PostgreSQL.

``await open_storage(cfg)`` returns an :class:`Engine`: a ``plugin.storage.Storage`` plus
the extras the server uses (``close``, ``put_many``, ``peek_cached``, ``shared``,
``set_invalidation_callback``, ``set_unannounced_prefixes``), which every engine
implements (a no-op where it means nothing). Every engine stores values the same way
(``plugin.storage.encode``: the table of accepted and refused values is in that module).

Settings (``cfg`` is a mapping or an object with these attributes; YAML ``storage:``):

``type``
    ``"sqlite"`` (default), ``"postgres"`` or ``"memory"`` (with ``--workers N``: one
    SQLite database in shared memory, ``server.storage.shared_memory``).
``path``
    SQLite: the database file (default ``data/authmount.db``). The parent directory is
    created (mode 0700) and the file is created with mode 0600; ``<path>-wal``,
    ``<path>-shm`` and ``<path>.lock`` sit next to it. One process owns the file, or the
    workers of one ``--workers N`` supervisor share it: the supervisor holds the lock and
    its workers inherit it (``AUTHMOUNT_SQLITE_LOCK_FD``, set by the supervisor only; see
    ``server.storage.sqlite_shared``), which also creates ``<path>.writer-lock`` and
    ``<path>.checkpoint-lock``.
``sqlite_synchronous``
    SQLite: ``"FULL"`` (default; every acknowledged write survives power loss),
    ``"NORMAL"`` (acknowledged writes survive a process crash, the last ones may be lost
    on power loss) or ``"EXTRA"``.
``sqlite_cache_entries``
    SQLite: how many recently written values to keep in memory for reads (default
    32768; 0 disables). Exact: it is updated by the writer after each commit. Workers
    sharing a file keep no value cache.
``dsn``
    PostgreSQL: a libpq connection string, e.g. ``postgresql://authmount@db/authmount``.
    Required for ``type: postgres``.
``pool_size``
    PostgreSQL: the maximum number of pooled connections (default 10), plus one
    connection for LISTEN.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import psycopg

from plugin.storage import InMemoryStorage, Storage

__all__ = ["Engine", "open_storage", "unavailable_reason", "DEFAULT_SQLITE_PATH"]

DEFAULT_SQLITE_PATH = "data/authmount.db"


class Engine(Storage, Protocol):
    """A storage engine: ``Storage`` plus what the server needs beyond it."""

    @property
    def shared(self) -> bool:
        """True when several nodes write this storage (a cache miss may be another node's
        fresh write, so it is worth a re-read)."""

    async def put_many(self, items: Sequence[tuple[str, object]]) -> None:
        """``put`` each (key, value) pair, handed to the engine together (one commit where
        the engine group-commits). Nothing is written if a value cannot be encoded;
        otherwise raises the first failure once every write has finished."""

    def peek_cached(self, key: str) -> bytes | None:
        """The stored bytes of ``key`` if the engine holds them in memory (what ``get``
        would decode), else None; never does I/O. A write stores a new bytes object, so a
        caller may key what it decodes on the identity of the bytes (holding them)."""

    def set_invalidation_callback(self, cb: Callable[[str], None]) -> None:
        """Have ``cb(key)`` called on the event loop when *another* node changed ``key``
        (``cb("")``: anything may have changed, e.g. after a reconnect). Single-node
        engines (memory, SQLite in one process) never call it; SQLite workers sharing a
        file call it for each other's writes (polled change log, within ~100 ms)."""

    def set_unannounced_prefixes(self, prefixes: Sequence[str]) -> None:
        """Keys under ``prefixes`` are cached by no node: their writes need not be
        announced to other nodes (only shared engines announce anything)."""

    async def export_rows(self, write: Callable[[str, bytes], None]) -> int:
        """Call ``write(key, stored bytes)`` for every key, in key order, from one consistent
        read (a snapshot: ``server.snapshot``), possibly on another thread; the number of
        rows. Writes go on meanwhile."""

    async def close(self) -> None:
        """Finish pending writes and release the engine; later calls raise ``RuntimeError``."""


def _setting(cfg: object, name: str, default: object = None) -> object:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        value = cfg.get(name, default)
    else:
        value = getattr(cfg, name, default)
    return default if value is None else value


def _non_negative(cfg: object, name: str, default: int) -> int:
    value = _setting(cfg, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"storage {name} must be a non-negative integer")
    return value


async def open_storage(cfg: object) -> Engine:
    """Open the storage engine described by ``cfg`` (see the module docstring).

    :raises ValueError: unknown ``type``, missing ``dsn`` or a bad tuning value.
    :raises RuntimeError: the SQLite file is in use by another process.
    """
    kind = str(_setting(cfg, "type", "sqlite")).lower()
    if kind == "memory":
        from server.storage.shared_memory import db_path, shared_dir

        directory = shared_dir()
        if directory is None:
            return InMemoryStorage()
        from server.storage.sqlite import SQLiteStorage

        return await SQLiteStorage.open(db_path(directory), synchronous="OFF", owner_lock_fd=_inherited_lock(),
                                        memory=True)
    if kind == "sqlite":
        from server.storage.sqlite import SQLiteStorage

        inherited = _inherited_lock()
        return await SQLiteStorage.open(
            str(_setting(cfg, "path", DEFAULT_SQLITE_PATH)),
            synchronous=str(_setting(cfg, "sqlite_synchronous", "FULL")),
            cache_entries=_non_negative(cfg, "sqlite_cache_entries", 32768),
            owner_lock_fd=inherited,
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


def _inherited_lock() -> int | None:
    """The SQLite owner lock a ``--workers`` supervisor handed down, if any."""
    from server.storage.sqlite_shared import LOCK_FD_ENV

    inherited = os.environ.get(LOCK_FD_ENV)
    if inherited is not None and not inherited.isdigit():
        raise RuntimeError(f"{LOCK_FD_ENV} must be a descriptor number")
    return int(inherited) if inherited is not None else None


def unavailable_reason(exc: BaseException) -> str | None:
    """A short reason when ``exc`` is an engine's failure to serve (another process holds the
    lock past the busy timeout, a full disk, an I/O error, a lost database connection): the
    server answers 503, which a load balancer and an operator can tell from a bug (a 500).
    None for anything else."""
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return "the database is locked by another process"
        if "full" in text:
            return "the database or disk is full"
        if "i/o" in text:
            return "disk I/O error"
        if "readonly" in text or "read-only" in text:
            return "the database is read-only"
        return "database error"
    if isinstance(exc, psycopg.OperationalError):
        return "the database connection failed"
    return None
