"""SQLite storage engine: one WAL file, a dedicated writer thread and group commit."""

from __future__ import annotations

import asyncio
import builtins
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, TypeVarTuple, cast

from plugin.storage import Updater, check_key, check_page_args, check_prefix, decode, encode, page_floor
from server import telemetry
from server.storage.keyrange import collect_children, prefix_end
from server.storage.sqlite_batch import DELETE, DELETE_PREFIX, PUT, STOP, UPDATE, Batch, Op, Result
from server.storage.sqlite_checkpoint import Checkpointer
from server.storage.sqlite_schema import migrate

__all__ = ["SQLiteStorage", "CACHE_BYTES"]

#: Upper bound of the value cache's content, whatever ``cache_entries`` says.
CACHE_BYTES = 8 * 1024 * 1024

#: Rows per query of a ``list`` scan; a longer listing yields to the event loop in between.
LIST_CHUNK = 1024

_SYNC_MODES = ("FULL", "NORMAL", "EXTRA")
_GET = "SELECT value FROM kv WHERE key = ?"
_SCAN = "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?"
_SCAN_TO_END = "SELECT key FROM kv WHERE key >= ? ORDER BY key LIMIT ?"

_T = TypeVar("_T")
_V = TypeVar("_V")
_Ts = TypeVarTuple("_Ts")


class SQLiteStorage:
    """A ``plugin.storage.Storage`` on one SQLite file, safe against crashes.

    Writes are queued to one writer thread that owns the write connection. It takes every
    queued write, applies them in ONE transaction, commits (fsync with
    ``synchronous=FULL``), then answers each caller: a write is acknowledged only once it
    is durable, and a storm of concurrent writes shares one fsync. Each write is one SQL
    statement, so a failing write (bad value, ``fn`` raising in ``update``) fails only its
    caller and leaves the previous value intact.

    Layout: ``kv(seq INTEGER PRIMARY KEY, key, value)`` plus a unique index on ``key``
    (see ``sqlite_schema``), so memory does not grow with the number of keys. Keys that
    grow with time (token selectors) are appended at the right edge of the index; random
    keys (HMACs) each dirty an index leaf somewhere, which costs more writer time.
    A file in the old layout is converted at open. Reads run on the event-loop thread:
    recently written or read values come from a cache (bounded by entries and by
    ``CACHE_BYTES``), others, misses included, from one indexed lookup on a read-only
    connection (WAL readers never wait for the writer); ``list`` is a range scan that
    skips over each sub-folder with one seek, and ``list_page`` the same scan from a
    given key for a bounded number of names. The writer updates the cache only after the
    commit, so it never shows uncommitted data; a value read from the file is cached only
    if no commit was published during the read; and nothing else writes the file.

    WAL checkpoints run in a :class:`Checkpointer` thread with its own connection, never
    inside a commit; ``close`` empties the WAL into the database file.

    One process owns the file: an exclusive ``flock`` on ``<path>.lock`` refuses a second
    opener. The store is bound to the event loop that opened it. A caller cancelled while
    its write is queued does not undo the write. Build it with
    ``await SQLiteStorage.open(path)``.
    """

    #: One process owns the file: a miss is a miss.
    shared = False

    def __init__(self, path: str, synchronous: str = "FULL", cache_entries: int = 32768) -> None:
        synchronous = synchronous.upper()
        if synchronous not in _SYNC_MODES:
            raise ValueError(f"sqlite_synchronous must be one of {', '.join(_SYNC_MODES)}")
        self.path = path
        self.synchronous = synchronous
        self.commits = 0  # committed transactions (group commit makes this << writes)
        self.migrated = False  # the file was converted from the old layout at open
        # Cache of recently written or read values (tokens are read right after login,
        # and again on every use). The writer fills it after COMMIT; a read fills it only
        # if no commit was published meanwhile: it is never stale.
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = 0  # bytes of cached values, bounded by CACHE_BYTES
        # Guards cache content and size between the writer's publish() and the loop's
        # read-through; the generation counts publishes (see _cache_read).
        self._cache_lock = threading.Lock()
        self._cache_gen = 0
        self.cache_entries = cache_entries
        self.checkpointer = Checkpointer(path)
        # Writes submitted during one event-loop iteration go to the writer as one list:
        # on a single busy core, waking the writer per write would commit 1-2 at a time.
        self._outbox: list[Op] = []
        self._kick_scheduled = False
        self._queue: queue.SimpleQueue[list[Op]] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: sqlite3.Connection | None = None
        self._get_cursor: sqlite3.Cursor | None = None
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
        reader.execute("PRAGMA cache_size = -8192")
        self._reader = reader
        self._get_cursor = reader.cursor()
        self._closed = False

    def set_invalidation_callback(self, cb: Callable[[str], None]) -> None:
        """Accepted for interface parity; one process owns the file, so it is never called."""

    def set_unannounced_prefixes(self, prefixes: Sequence[str]) -> None:
        """Accepted for interface parity; nothing is announced."""

    # -- reads (event-loop thread) ---------------------------------------------------

    async def get(self, key: str) -> Any | None:
        """Return the value at ``key`` or None."""
        if self._closed or self._reader is None:
            raise RuntimeError("storage is closed")
        check_key(key)
        blob = self._cache.get(key)
        if blob is not None:
            try:
                # Keep what is read often (a token in use) cached while logins stream in.
                # One C call, atomic against the writer's publish(); a key it just
                # dropped is simply not there any more.
                self._cache.move_to_end(key)
            except KeyError:
                pass
            return decode(blob)
        gen = self._cache_gen
        assert self._get_cursor is not None
        # fetchall, not fetchone: the statement must finish, or its read transaction
        # would stay open and keep the checkpointer from recycling the WAL.
        rows = self._get_cursor.execute(_GET, (key,)).fetchall()
        if not rows:
            return None
        blob = rows[0][0]
        if self.cache_entries:
            self._cache_read(key, blob, gen)
        return decode(blob)

    def peek_cached(self, key: str) -> bytes | None:
        """The cached stored bytes of ``key`` (what ``get`` would decode), or None when
        the value is not cached. A write publishes a new bytes object, so callers may keep
        something decoded from it keyed on its identity (hold the bytes: ids get reused)."""
        if self._closed or self._reader is None:
            raise RuntimeError("storage is closed")
        blob = self._cache.get(key)
        if blob is not None:
            try:
                self._cache.move_to_end(key)  # as get(): a token in use stays cached
            except KeyError:
                pass
        return blob

    def _cache_read(self, key: str, blob: bytes, gen: int) -> None:
        """Cache a value just read from the file, unless a commit was published since the
        read began (it might have changed ``key``: the cache must never be stale)."""
        with self._cache_lock:
            if gen != self._cache_gen or key in self._cache:
                return
            self._cache[key] = blob
            self._cache_size += len(blob)
            self._evict()

    async def list(self, prefix: str) -> list[str]:
        """Immediate children under ``prefix`` (sorted; sub-folders end with ``/``).

        A range scan in key order: leaves are read in chunks of ``LIST_CHUNK`` keys, and
        a sub-folder costs one seek past it. Between chunks the event loop runs (each
        chunk is its own snapshot: a key written meanwhile may or may not be listed).
        """
        if self._closed or self._reader is None:
            raise RuntimeError("storage is closed")
        check_prefix(prefix)
        end = prefix_end(prefix)
        sql, tail = (_SCAN, (end, LIST_CHUNK)) if end is not None else (_SCAN_TO_END, (LIST_CHUNK,))
        out: list[str] = []
        low = prefix
        while True:
            keys = self._reader.execute(sql, (low, *tail)).fetchall()
            seek = collect_children((key for (key,) in keys), prefix, out)
            if seek is not None:
                low = seek  # a sub-folder, listed once: continue past it
                continue
            if len(keys) < LIST_CHUNK:
                return out
            low = keys[-1][0] + "\0"  # the smallest key after the last one read
            await asyncio.sleep(0)  # a long folder: let requests run between chunks
            if self._closed:
                raise RuntimeError("storage is closed")

    async def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> builtins.list[str]:
        """The children ``list`` would return that sort after ``after``, at most ``limit``.

        The same range scan as ``list``, started at the first key past ``after`` (one
        index seek) and stopped after ``limit`` names: a page costs what it returns,
        wherever it is in the folder. Each query is its own snapshot.
        """
        if self._closed or self._reader is None:
            raise RuntimeError("storage is closed")
        check_page_args(prefix, after, limit)
        end = prefix_end(prefix)
        low, inclusive = page_floor(prefix, after)
        if not inclusive:
            low += "\0"  # the smallest key above it
        out: list[str] = []
        while len(out) < limit:
            want = min(limit - len(out), LIST_CHUNK)
            sql, args = (_SCAN, (low, end, want)) if end is not None else (_SCAN_TO_END, (low, want))
            keys = self._reader.execute(sql, args).fetchall()
            seek = collect_children((key for (key,) in keys), prefix, out)
            if seek is not None:
                low = seek  # a sub-folder, named once: continue past it
                continue
            if len(keys) < want:
                return out
            low = keys[-1][0] + "\0"
            if len(out) < limit:
                await asyncio.sleep(0)  # a big page: let requests run between chunks
                if self._closed:
                    raise RuntimeError("storage is closed")
        return out

    # -- writes (queued to the writer thread) ----------------------------------------

    def _submit(self, op: int, key: str, arg: bytes | Updater[object] | None) -> asyncio.Future[Any]:
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

    async def put(self, key: str, value: object) -> None:
        """Store ``value`` at ``key``; returns once the write is committed and durable."""
        check_key(key)
        await self._submit(PUT, key, encode(value))

    async def put_many(self, items: Sequence[tuple[str, object]]) -> None:
        """``put`` each (key, value) pair; they go to the writer together, so one commit
        usually covers them all. Returns once every write is durable; raises the first
        failure (after all have finished). Nothing is written if a value cannot be encoded.
        """
        encoded = []
        for key, value in items:
            check_key(key)
            encoded.append((key, encode(value)))
        futures = [self._submit(PUT, key, blob) for key, blob in encoded]
        error: BaseException | None = None
        for fut in futures:
            try:
                await fut
            except Exception as exc:  # noqa: BLE001 - wait for the others, then raise
                error = error or exc
        if error is not None:
            raise error

    async def delete(self, key: str) -> None:
        """Delete ``key`` (missing is fine); returns once durable."""
        check_key(key)
        await self._submit(DELETE, key, None)

    async def update(self, key: str, fn: Updater[_T]) -> _T:
        """Atomically apply ``fn(old)`` in the writer thread; None deletes. Returns the new value."""
        check_key(key)
        return cast(_T, await self._submit(UPDATE, key, fn))  # the writer returns fn's result

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` in one statement; return the count."""
        check_prefix(prefix)
        return int(await self._submit(DELETE_PREFIX, prefix, None))

    async def close(self) -> None:
        """Finish every queued write, stop the writer and release the file."""
        if self._closed:
            return
        self._closed = True
        self._kick()
        self._queue.put([(STOP, "", None, None)])
        assert self._stopped is not None
        await self._stopped
        if self._reader is not None:
            self._get_cursor = None
            self._reader.close()
            self._reader = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # -- the writer thread -------------------------------------------------------------

    def _notify(self, fn: Callable[[*_Ts], None], *args: *_Ts) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _writer_main(self, ready: asyncio.Future[None]) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA cache_size = -8192")  # appends touch few pages; RSS matters more
            conn.execute("PRAGMA journal_size_limit = 33554432")  # truncate a big WAL
            self.migrated = migrate(conn)
            if self.migrated:  # the whole table went through the WAL: empty it now
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            # Checkpoints run in the checkpointer's thread, never inside a COMMIT.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            self.checkpointer.start()
        except Exception as exc:  # noqa: BLE001 - handed to the opener
            if conn is not None:
                conn.close()
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
            if batch[-1][0] == STOP:  # FIFO: nothing is queued after the stop marker
                batch.pop()
                running = False
            if batch:
                self.checkpointer.begin()  # waits only while a RESTART holds the write lock
                started = time.perf_counter()
                try:
                    results = Batch(self, conn).run(batch)
                    telemetry.STORAGE_COMMIT.observe(time.perf_counter() - started)
                    telemetry.STORAGE_BATCH.observe(len(batch))
                except Exception as exc:  # noqa: BLE001 - never leave a caller waiting
                    results = [(False, exc)] * len(batch)
                    try:
                        conn.rollback()
                    except sqlite3.Error:
                        pass
                finally:
                    self.checkpointer.end()
                self._notify(_resolve, batch, results)
                self.checkpointer.poke()
        self.checkpointer.stop()
        try:  # leave the database file complete and the WAL empty
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # a reader still open: SQLite finishes the checkpoint when the last one closes
        conn.close()
        assert self._stopped is not None
        self._notify(_set_result, self._stopped, None)

    def publish(self, changes: dict[str, bytes | None], prefixes: builtins.list[str]) -> None:
        """After COMMIT (writer thread): make a batch's changes visible to readers.

        ``prefixes`` were deleted by ``delete_prefix``; ``changes`` is the final state of
        every key the batch wrote after that (None: deleted).
        """
        with self._cache_lock:
            self._cache_gen += 1
            if prefixes:
                self._drop_prefixes(prefixes)
            self._publish(changes)

    def _drop_prefixes(self, prefixes: builtins.list[str]) -> None:
        cache, doomed = self._cache, tuple(prefixes)
        # list() copies the keys in one C call: the loop thread's move_to_end (a get that
        # hits) may run between two bytecodes, and iterating the cache itself would fail.
        for key in [k for k in builtins.list(cache) if k.startswith(doomed)]:
            old = cache.pop(key, None)
            if old is not None:
                self._cache_size -= len(old)

    def _publish(self, changes: dict[str, bytes | None]) -> None:
        cache, cap = self._cache, self.cache_entries
        size = self._cache_size
        for key, state in changes.items():
            old = cache.pop(key, None)
            if old is not None:
                size -= len(old)
            if state is None:
                continue
            if cap:
                # A copy: orjson's output keeps its whole working buffer (~8 KiB for a
                # 700-byte token entry), which made a full cache cost ~10x its content.
                blob = bytes(memoryview(state))
                cache[key] = blob
                size += len(blob)
        self._cache_size = size
        self._evict()

    def _evict(self) -> None:
        """Drop the stalest values until the cache is within its bounds (lock held)."""
        cache, cap = self._cache, self.cache_entries
        while cache and (len(cache) > cap or self._cache_size > CACHE_BYTES):
            self._cache_size -= len(cache.popitem(last=False)[1])


def _set_result(fut: asyncio.Future[_V], value: _V) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[_V], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _resolve(batch: list[Op], results: list[Result]) -> None:
    """Answer every caller of a committed (or failed) batch, on the event loop."""
    for (_op, _key, _arg, fut), (ok, value) in zip(batch, results, strict=True):
        if fut is None or fut.done():  # (no caller: STOP) the caller was cancelled; the write happened anyway
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
