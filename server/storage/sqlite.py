"""SQLite storage engine: one WAL file, a dedicated writer thread and group commit."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import os
import queue
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from plugin.storage import Updater
from server.storage.keytree import KeyTree

__all__ = ["SQLiteStorage"]

# Operation codes carried through the writer queue.
_PUT, _DELETE, _UPDATE, _DELETE_PREFIX, _STOP = range(5)
_SYNC_MODES = ("FULL", "NORMAL", "EXTRA")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, value BLOB NOT NULL)"
)
_DELETE_SEQS = "DELETE FROM kv WHERE seq IN (SELECT value FROM json_each(?))"
_MAX_ROWS = 256  # rows per multi-row INSERT (3 parameters each, far below SQLite's limit)
_MISSING = object()

Result = tuple[bool, Any]  # (ok, value) or (False, exception)


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
    caller and leaves the previous value intact.

    Layout: ``kv(seq INTEGER PRIMARY KEY, key, value)`` with no index on ``key``; a
    :class:`KeyTree` in memory maps every key to its row (rebuilt at open). New keys are
    appended at the end of the table, so a batch of new random keys (token hashes) dirties
    a few pages instead of one page per key, about 7x less work per commit than a
    ``key PRIMARY KEY`` B-tree. The index costs ~150 bytes of memory per key. Reads run on
    the event-loop thread: ``list`` and misses are answered from the index, recently
    written values from a bounded write-through cache, others by reading one row by
    ``seq`` from a read-only connection (WAL readers never wait for the writer). The
    writer updates index and cache only after the commit, so they never show uncommitted
    data, and nothing else writes the file.

    One process owns the file: an exclusive ``flock`` on ``<path>.lock`` refuses a second
    opener. Build it with ``await SQLiteStorage.open(path)``.
    """

    def __init__(self, path: str, synchronous: str = "FULL", cache_entries: int = 32768) -> None:
        synchronous = synchronous.upper()
        if synchronous not in _SYNC_MODES:
            raise ValueError(f"sqlite_synchronous must be one of {', '.join(_SYNC_MODES)}")
        self.path = path
        self.synchronous = synchronous
        self.commits = 0  # committed transactions (group commit makes this << writes)
        self._tree = KeyTree()
        # Write-through cache of recently written values (tokens are read right after
        # login). Only the writer thread changes it, after COMMIT: it is never stale.
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self.cache_entries = cache_entries
        self._next_seq = 1
        # Writes submitted during one event-loop iteration go to the writer as one list:
        # on a single busy core, waking the writer per write would commit 1-2 at a time.
        self._outbox: list[tuple[int, Any, Any, asyncio.Future[Any] | None]] = []
        self._kick_scheduled = False
        self._queue: queue.SimpleQueue[list[tuple[int, Any, Any, asyncio.Future[Any] | None]]] = (
            queue.SimpleQueue()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._closed = True
        self._stopped: asyncio.Future[None] | None = None

    @classmethod
    async def open(
        cls, path: str, synchronous: str = "FULL", cache_entries: int = 32768
    ) -> SQLiteStorage:
        """Create the parent directory and file (mode 0600) if needed and open the store.

        ``cache_entries`` bounds the cache of recently written values (0 disables it).

        :raises RuntimeError: another process (or another store object) has the file open.
        """
        store = cls(path, synchronous, cache_entries)
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
        reader.execute("PRAGMA cache_size = -16384")
        self._reader = reader
        self._closed = False

    def set_invalidation_callback(self, cb: Callable[[str], None]) -> None:
        """Accepted for interface parity; one process owns the file, so it is never called."""

    # -- reads (event-loop thread) ---------------------------------------------------

    async def get(self, key: str) -> Any | None:
        """Return the value at ``key`` or None."""
        if self._closed or self._reader is None:
            raise RuntimeError("storage is closed")
        if not isinstance(key, str):
            raise TypeError("storage key must be a str")
        blob = self._cache.get(key)
        if blob is not None:
            return orjson.loads(blob)
        seq = self._tree.get(key)
        if seq is None:
            return None
        rows = self._reader.execute("SELECT key, value FROM kv WHERE seq = ?", (seq,)).fetchall()
        # The key check guards the instant between a commit and the index update.
        if not rows or rows[0][0] != key:
            return None
        return orjson.loads(rows[0][1])

    async def list(self, prefix: str) -> list[str]:
        """Immediate children under ``prefix`` (sorted; sub-folders end with ``/``)."""
        if self._closed:
            raise RuntimeError("storage is closed")
        return self._tree.list(prefix)

    # -- writes (queued to the writer thread) ----------------------------------------

    def _submit(self, op: int, key: Any, arg: Any) -> asyncio.Future[Any]:
        if self._closed or self._loop is None:
            raise RuntimeError("storage is closed")
        fut = self._loop.create_future()
        self._outbox.append((op, key, arg, fut))
        if not self._kick_scheduled:
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)
        return fut

    def _kick(self) -> None:
        """Hand everything submitted since the last kick to the writer thread."""
        self._kick_scheduled = False
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self._queue.put(batch)

    async def put(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key``; returns once the write is committed and durable."""
        _check_key(key)
        await self._submit(_PUT, key, orjson.dumps(value))

    async def delete(self, key: str) -> None:
        """Delete ``key`` (missing is fine); returns once durable."""
        _check_key(key)
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
        self._kick()
        self._queue.put([(_STOP, None, None, None)])
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
            conn.execute("PRAGMA cache_size = -32768")
            conn.execute(_SCHEMA)
            self._load_index(conn)
        except Exception as exc:  # noqa: BLE001 - handed to the opener
            self._notify(_set_exception, ready, exc)
            return
        self._notify(_set_result, ready, None)
        q = self._queue
        running = True
        while running:
            batch = q.get()
            while True:
                try:
                    batch.extend(q.get_nowait())
                except queue.Empty:
                    break
            if batch[-1][0] == _STOP:  # FIFO: nothing is queued after the stop marker
                batch.pop()
                running = False
            if batch:
                try:
                    results = _Batch(self, conn).run(batch)
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

    def _publish(self, changes: dict[str, tuple[int, bytes] | None]) -> None:
        """After COMMIT (writer thread): make a batch's changes visible to readers."""
        tree, cache, cap = self._tree, self._cache, self.cache_entries
        for key, state in changes.items():
            if state is None:
                tree.remove(key)
                cache.pop(key, None)
                continue
            tree.set(key, state[0])
            if cap:
                cache[key] = state[1]
                cache.move_to_end(key)
        while len(cache) > cap:
            cache.popitem(last=False)

    def _load_index(self, conn: sqlite3.Connection) -> None:
        """Rebuild the key index from the table (and drop stale duplicate rows, if any)."""
        stale: list[int] = []
        seq = 0
        for seq, key in conn.execute("SELECT seq, key FROM kv ORDER BY seq"):
            old = self._tree.get(key)
            if old is not None:  # never written by this engine; keep the newest row
                stale.append(old)
            self._tree.set(key, seq)
        self._next_seq = seq + 1
        if stale:
            conn.execute(_DELETE_SEQS, (orjson.dumps(stale).decode(),))


class _Batch:
    """One group-commit transaction in the writer thread.

    ``pending`` holds this batch's changes (key → (seq, encoded value), None: deleted);
    the shared index and value cache are updated from it only after COMMIT. Runs of new keys are buffered and
    written with multi-row INSERTs: each statement releases and re-takes the GIL once,
    and that hand-off with the event-loop thread costs more than the insert itself.
    """

    def __init__(self, store: SQLiteStorage, conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn
        self.pending: dict[str, tuple[int, bytes] | None] = {}
        # key → [seq, blob, result indexes, pending value before the insert]
        self.inserts: dict[str, list[Any]] = {}
        self.results: list[Result] = []

    def seq_of(self, key: str) -> int | None:
        if key in self.pending:
            state = self.pending[key]
            return state[0] if state is not None else None
        return self.store._tree.get(key)

    def new_seq(self) -> int:
        seq = self.store._next_seq
        self.store._next_seq += 1
        return seq

    def run(self, batch: list[Any]) -> list[Result]:
        """Apply ``batch`` in one transaction; return (ok, value-or-exception) per operation."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(False, exc)] * len(batch)
        for index, (op, key, arg, _fut) in enumerate(batch):
            try:
                if op == _PUT:
                    self.put(index, key, arg)
                    self.results.append((True, None))
                    continue
                self.flush()
                self.results.append((True, self.apply(op, key, arg)))
            except Exception as exc:  # noqa: BLE001 - fails only this caller
                self.results.append((False, exc))
                self.check_transaction(exc)
        self.flush()
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(False, exc)] * len(batch)
        self.store.commits += 1
        self.store._publish(self.pending)
        return self.results

    def check_transaction(self, exc: Exception) -> None:
        """After an error: if SQLite rolled the whole transaction back, fail it all."""
        if self.conn.in_transaction:
            return
        # An I/O error or a full disk undid the earlier operations of this batch too.
        self.results = [(False, exc)] * len(self.results)
        self.pending.clear()
        self.inserts.clear()
        self.conn.execute("BEGIN IMMEDIATE")

    def put(self, index: int, key: str, blob: bytes) -> None:
        buffered = self.inserts.get(key)
        if buffered is not None:  # the same new key twice in one batch: last one wins
            buffered[1] = blob
            buffered[2].append(index)
            self.pending[key] = (buffered[0], blob)
            return
        seq = self.seq_of(key)
        if seq is not None:
            self.conn.execute("UPDATE kv SET value = ? WHERE seq = ?", (blob, seq))
            self.pending[key] = (seq, blob)
            return
        seq = self.new_seq()
        self.inserts[key] = [seq, blob, [index], self.pending.get(key, _MISSING)]
        self.pending[key] = (seq, blob)

    def flush(self) -> None:
        """Write the buffered new keys (one by one if a multi-row INSERT fails)."""
        if not self.inserts:
            return
        items = list(self.inserts.items())
        self.inserts = {}
        try:
            _insert_rows(self.conn, [(rec[0], key, rec[1]) for key, rec in items])
            return
        except sqlite3.Error as exc:
            if not self.conn.in_transaction:
                self.check_transaction(exc)
                return
        for key, (seq, blob, indexes, before) in items:
            try:
                _insert_rows(self.conn, [(seq, key, blob)])
            except sqlite3.Error as exc:
                if not self.conn.in_transaction:
                    self.check_transaction(exc)  # fails every operation so far
                    return
                for i in indexes:
                    self.results[i] = (False, exc)
                if before is _MISSING:
                    self.pending.pop(key, None)
                else:
                    self.pending[key] = before

    def apply(self, op: int, key: str, arg: Any) -> Any:
        """Apply a delete, update or delete_prefix: one SQL write statement each."""
        conn = self.conn
        if op == _DELETE:
            seq = self.seq_of(key)
            if seq is not None:
                conn.execute("DELETE FROM kv WHERE seq = ?", (seq,))
                self.pending[key] = None
            return None
        if op == _UPDATE:
            seq = self.seq_of(key)
            old = None
            if seq is not None:
                row = conn.execute("SELECT value FROM kv WHERE seq = ?", (seq,)).fetchall()
                if row:
                    old = orjson.loads(row[0][0])
                else:
                    seq = None
            new = arg(old)
            if new is None:
                if seq is not None:
                    conn.execute("DELETE FROM kv WHERE seq = ?", (seq,))
                    self.pending[key] = None
                return None
            blob = orjson.dumps(new)  # may raise: nothing has been written yet
            if seq is not None:
                conn.execute("UPDATE kv SET value = ? WHERE seq = ?", (blob, seq))
            else:
                seq = self.new_seq()
                _insert_rows(conn, [(seq, key, blob)])
            self.pending[key] = (seq, blob)
            return new
        if op == _DELETE_PREFIX:
            doomed = self.store._tree.items_with_prefix(key)
            for k, state in self.pending.items():
                if k.startswith(key):
                    if state is None:
                        doomed.pop(k, None)
                    else:
                        doomed[k] = state[0]
            if doomed:
                conn.execute(_DELETE_SEQS, (orjson.dumps(list(doomed.values())).decode(),))
                for k in doomed:
                    self.pending[k] = None
            return len(doomed)
        raise ValueError(f"unknown storage operation {op}")


@functools.cache
def _insert_sql(rows: int) -> str:
    return "INSERT INTO kv (seq, key, value) VALUES " + ",".join(["(?, ?, ?)"] * rows)


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[int, str, bytes]]) -> None:
    """Insert rows in power-of-two chunks (few distinct statements, all cached)."""
    k, n = 0, len(rows)
    while k < n:
        size = min(_MAX_ROWS, 1 << ((n - k).bit_length() - 1))
        conn.execute(_insert_sql(size), [x for row in rows[k : k + size] for x in row])
        k += size


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _resolve(batch: list[Any], results: list[Result]) -> None:
    """Answer every caller of a committed (or failed) batch, on the event loop."""
    for (_op, _key, _arg, fut), (ok, value) in zip(batch, results):
        if fut.done():  # the caller was cancelled; the write happened anyway
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
