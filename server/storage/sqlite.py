"""SQLite storage engine: one WAL file, a dedicated writer thread and group commit."""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import orjson

from plugin.storage import Updater, list_children

__all__ = ["SQLiteStorage"]

# Operation codes carried through the writer queue.
_PUT, _DELETE, _UPDATE, _DELETE_PREFIX, _STOP = range(5)

_SCHEMA = "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
_SYNC_MODES = ("FULL", "NORMAL", "EXTRA")


def _prefix_upper(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``, or None.

    SQLite's BINARY collation compares UTF-8 bytes, which orders like Python code points,
    so ``prefix <= key < upper`` is exactly ``key.startswith(prefix)`` and uses the index.
    """
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be encoded in UTF-8
                nxt = 0xE000
            return prefix[:-1] + chr(nxt)
        prefix = prefix[:-1]
    return None


def _prefix_where(prefix: str) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause (and its parameters) matching keys that start with ``prefix``."""
    upper = _prefix_upper(prefix)
    if upper is None:
        return "key >= ?", (prefix,)
    return "key >= ? AND key < ?", (prefix, upper)


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise TypeError(f"storage key must be a non-empty str, got {key!r}")


class SQLiteStorage:
    """A ``plugin.storage.Storage`` on one SQLite file, safe against crashes.

    Writes are queued to one writer thread that owns the write connection. It takes every
    queued write, applies them in ONE transaction, commits (fsync with
    ``synchronous=FULL``), then answers each caller: a write is acknowledged only once it
    is durable, and a storm of concurrent writes shares one fsync. Each write is one SQL
    statement, so a failing write (bad value, ``fn`` raising in ``update``) fails only its
    caller and leaves the previous value intact. Reads run directly on the event-loop
    thread from a separate read-only connection (WAL readers never wait for the writer).

    One process owns the file: an exclusive ``flock`` on ``<path>.lock`` refuses a second
    opener. Build it with ``await SQLiteStorage.open(path)``.
    """

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        synchronous = synchronous.upper()
        if synchronous not in _SYNC_MODES:
            raise ValueError(f"sqlite_synchronous must be one of {', '.join(_SYNC_MODES)}")
        self.path = path
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue[tuple[int, Any, Any, asyncio.Future[Any] | None]] = (
            queue.SimpleQueue()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._closed = True
        self._stopped: asyncio.Future[None] | None = None
        self.commits = 0  # committed transactions (group commit makes this << writes)

    @classmethod
    async def open(cls, path: str, synchronous: str = "FULL") -> SQLiteStorage:
        """Create the parent directory and file (mode 0600) if needed and open the store.

        :raises RuntimeError: another process (or another store object) has the file open.
        """
        store = cls(path, synchronous)
        await store._start()
        return store

    async def _start(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, mode=0o700, exist_ok=True)
        lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise RuntimeError(f"storage file {self.path} is in use by another process") from None
        self._lock_fd = lock_fd
        # SQLite gives the -wal and -shm files the mode of the database file.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)
        loop = asyncio.get_running_loop()
        self._loop = loop
        ready: asyncio.Future[None] = loop.create_future()
        self._stopped = loop.create_future()
        self._thread = threading.Thread(
            target=self._writer_main, args=(ready,), name="authmount-sqlite-writer", daemon=True
        )
        self._thread.start()
        try:
            await ready
        except BaseException:
            self._release_lock()
            raise
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        reader.execute("PRAGMA query_only = 1")
        self._reader = reader
        self._closed = False

    def set_invalidation_callback(self, cb: Callable[[str], None]) -> None:
        """Accepted for interface parity; one process owns the file, so it is never called."""

    # -- reads (event-loop thread) ---------------------------------------------------

    def _read_conn(self) -> sqlite3.Connection:
        if self._closed or self._reader is None:
            raise RuntimeError("storage is closed")
        return self._reader

    async def get(self, key: str) -> Any | None:
        """Return the value at ``key`` or None."""
        rows = self._read_conn().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchall()
        return orjson.loads(rows[0][0]) if rows else None

    async def list(self, prefix: str) -> list[str]:
        """Immediate children under ``prefix`` (sorted; sub-folders end with ``/``)."""
        where, params = _prefix_where(prefix)
        rows = self._read_conn().execute(f"SELECT key FROM kv WHERE {where}", params).fetchall()
        return list_children((r[0] for r in rows), prefix)

    # -- writes (queued to the writer thread) ----------------------------------------

    def _submit(self, op: int, key: Any, arg: Any) -> asyncio.Future[Any]:
        if self._closed or self._loop is None:
            raise RuntimeError("storage is closed")
        fut = self._loop.create_future()
        self._queue.put((op, key, arg, fut))
        return fut

    async def put(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key``; returns once the write is committed and durable."""
        _check_key(key)
        await self._submit(_PUT, key, orjson.dumps(value))

    async def delete(self, key: str) -> None:
        """Delete ``key`` (missing is fine); returns once durable."""
        await self._submit(_DELETE, key, None)

    async def update(self, key: str, fn: Updater) -> Any | None:
        """Atomically apply ``fn(old)`` in the writer thread; None deletes. Returns the new value."""
        _check_key(key)
        return await self._submit(_UPDATE, key, fn)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` in one statement; return the count."""
        if not isinstance(prefix, str):
            raise TypeError("prefix must be a str")
        return int(await self._submit(_DELETE_PREFIX, prefix, None))

    async def close(self) -> None:
        """Finish every queued write, stop the writer and release the file."""
        if self._closed:
            return
        self._closed = True
        self._queue.put((_STOP, None, None, None))
        assert self._stopped is not None
        await self._stopped
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # -- the writer thread -------------------------------------------------------------

    def _notify(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _writer_main(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(_SCHEMA)
        except Exception as exc:  # noqa: BLE001 - handed to the opener
            self._notify(_set_exception, ready, exc)
            return
        self._notify(_set_result, ready, None)
        q = self._queue
        running = True
        while running:
            batch = [q.get()]
            while True:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            if batch[-1][0] == _STOP:  # FIFO: nothing is queued after the stop marker
                batch.pop()
                running = False
            if batch:
                try:
                    results = self._apply(conn, batch)
                except Exception as exc:  # noqa: BLE001 - never leave a caller waiting
                    results = [(False, exc)] * len(batch)
                    try:
                        conn.rollback()
                    except sqlite3.Error:
                        pass
                self._notify(_resolve, batch, results)
        conn.close()
        assert self._stopped is not None
        self._notify(_set_result, self._stopped, None)

    def _apply(self, conn: sqlite3.Connection, batch: list[Any]) -> list[tuple[bool, Any]]:
        """Run ``batch`` in one transaction; return (ok, value-or-exception) per operation."""
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(False, exc)] * len(batch)
        for op, key, arg, _fut in batch:
            try:
                results.append((True, _apply_one(conn, op, key, arg)))
            except Exception as exc:  # noqa: BLE001 - fails only this caller
                results.append((False, exc))
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (I/O error, disk full):
                    # the earlier operations of this batch are lost too.
                    results = [(False, exc)] * len(results)
                    conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(False, exc)] * len(batch)
        self.commits += 1
        return results


def _apply_one(conn: sqlite3.Connection, op: int, key: str, arg: Any) -> Any:
    """Apply one queued write inside the open transaction (a single SQL write statement)."""
    if op == _PUT:
        conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, arg))
        return None
    if op == _DELETE:
        conn.execute("DELETE FROM kv WHERE key = ?", (key,))
        return None
    if op == _UPDATE:
        rows = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchall()
        new = arg(orjson.loads(rows[0][0]) if rows else None)
        if new is None:
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))
        else:
            blob = orjson.dumps(new)  # may raise: nothing has been written yet
            conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, blob))
        return new
    if op == _DELETE_PREFIX:
        where, params = _prefix_where(key)
        return conn.execute(f"DELETE FROM kv WHERE {where}", params).rowcount
    raise ValueError(f"unknown storage operation {op}")


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _resolve(batch: list[Any], results: list[tuple[bool, Any]]) -> None:
    """Answer every caller of a committed (or failed) batch, on the event loop."""
    for (_op, _key, _arg, fut), (ok, value) in zip(batch, results):
        if fut.done():  # the caller was cancelled; the write happened anyway
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
