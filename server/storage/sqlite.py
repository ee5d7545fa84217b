"""SQLite storage engine: one WAL file, a dedicated writer thread and group commit; one
process, or several sharing the file (``sqlite_shared``)."""

from __future__ import annotations

import asyncio
import builtins
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple, cast

import structlog

from plugin.storage import Updater, check_key, check_page_args, check_prefix, decode, encode, page_floor
from server import telemetry
from server.storage.keyrange import collect_children, prefix_end
from server.storage.sqlite_batch import DELETE, DELETE_PREFIX, PUT, STOP, UPDATE, Batch, Op, Result
from server.storage.sqlite_checkpoint import Checkpointer, yield_to_event_loop
from server.storage.sqlite_schema import migrate
from server.storage.sqlite_shared import POLL_INTERVAL, ChangeLog, FileLock, adopt_owner_lock, owner_lock
from server.storage.writes import put_each

__all__ = ["SQLiteStorage", "CACHE_BYTES", "dump_rows", "peek", "replace_rows"]

#: Upper bound of the value cache's content, whatever ``cache_entries`` says.
CACHE_BYTES = 8 * 1024 * 1024

#: Rows per query of a ``list`` scan; a longer listing yields to the event loop in between.
LIST_CHUNK = 1024

_SYNC_MODES = ("FULL", "NORMAL", "EXTRA")
#: Also accepted from ``open_storage`` for memory storage shared by workers (no disk at all).
_SYNC_MEMORY = "OFF"
_GET = "SELECT value FROM kv WHERE key = ?"
_SCAN = "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?"
_SCAN_TO_END = "SELECT key FROM kv WHERE key >= ? ORDER BY key LIMIT ?"

_log = structlog.get_logger("authmount.storage")

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

    **Shared mode** (``owner_lock_fd``: the workers of ``--workers N``, see
    ``sqlite_shared``): the owner lock is the supervisor's, inherited; several processes
    write the file, each with its own writer thread and group commit, one at a time (the
    writer lock). There is no value cache (a value another process wrote would not be in
    it): every ``get`` reads the file, as PostgreSQL nodes read their table, and
    ``peek_cached`` is always None. Each write transaction logs the keys it changed
    (``kv_log``) and every process polls that log every ``POLL_INTERVAL`` seconds to call
    its invalidation callback, so the caches above storage (mounts, roles, configs,
    policies) learn of other processes' writes within ~100 ms. Keys under the
    unannounced prefixes (token rows) are not logged: every use reads them.
    """

    #: One process owns the file: a miss is a miss (True in shared mode).
    shared = False

    def __init__(
        self, path: str, synchronous: str = "FULL", cache_entries: int = 32768, *, owner_lock_fd: int | None = None,
        memory: bool = False,
    ) -> None:
        synchronous = synchronous.upper()
        if synchronous not in _SYNC_MODES and not (synchronous == _SYNC_MEMORY and memory):
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
        self.shared = owner_lock_fd is not None
        self._owner_fd = owner_lock_fd
        #: Shared mode: the change log this process writes and polls, and the writer lock.
        self.changes = ChangeLog() if self.shared else None
        self._writer_lock: FileLock | None = None
        self._quiet: tuple[str, ...] = ()  # unannounced prefixes (not logged)
        self._callback: Callable[[str], None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._poll_failing = 0
        self.cache_entries = 0 if self.shared else cache_entries
        self.checkpointer = Checkpointer(path, shared=self.shared)
        #: The writer runs as SCHED_BATCH and takes the default policy around each COMMIT
        #: (``sqlite_checkpoint.wake_promptly``).
        self.prompt_commit = False
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
        cls, path: str, synchronous: str = "FULL", cache_entries: int = 32768, *, owner_lock_fd: int | None = None,
        memory: bool = False,
    ) -> SQLiteStorage:
        """Create the parent directory and file (mode 0600) if needed and open the store.

        ``cache_entries`` bounds the cache of recently written values (0 disables it).
        ``owner_lock_fd``: open the file in shared mode under this inherited owner lock
        (``sqlite_shared.owner_lock``, taken by the ``--workers`` supervisor).
        ``memory``: the file is memory storage shared by workers (``shared_memory``), which
        may use ``synchronous="OFF"``: it lives in shared memory, with no disk to wait for.

        :raises RuntimeError: another process (or another store object) has the file open,
            or ``owner_lock_fd`` is not the held lock of this file.
        """
        store = cls(path, synchronous, cache_entries, owner_lock_fd=owner_lock_fd, memory=memory)
        await store._start()
        return store

    async def _start(self) -> None:
        if self._owner_fd is not None:
            adopt_owner_lock(self.path, self._owner_fd)  # the supervisor's: not ours to close
            self._writer_lock = FileLock(self.path + ".writer-lock")
        else:
            self._lock_fd = owner_lock(self.path)
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
        if self.changes is not None:
            self.changes.start(reader)
            self._poller = loop.create_task(self._poll_loop(), name="authmount-sqlite-changes")

    def set_invalidation_callback(self, cb: Callable[[str], None]) -> None:
        """Shared mode: call ``cb(key)`` on the event loop when another process changed
        ``key`` (``cb("")``: anything may have changed). Never called for one process."""
        self._callback = cb

    def set_unannounced_prefixes(self, prefixes: Sequence[str]) -> None:
        """Shared mode: writes under ``prefixes`` are not logged (no process caches them)."""
        self._quiet = tuple(prefixes)

    def announced(self, key: str) -> bool:
        """Shared mode: whether a write of ``key`` goes into the change log."""
        return not key.startswith(self._quiet) if self._quiet else True

    async def _poll_loop(self) -> None:
        """Shared mode: read the change log every ``POLL_INTERVAL`` seconds, once a callback
        is set (until then nothing above storage caches anything)."""
        assert self.changes is not None
        while not self._closed:
            await asyncio.sleep(POLL_INTERVAL)
            if self._closed or self._reader is None or self._callback is None:
                continue
            try:
                self.changes.poll(self._reader, self._callback)
            except sqlite3.Error as exc:  # e.g. an unreadable file: try again, say so once a streak
                self._poll_failing += 1
                if self._poll_failing % 500 == 1:
                    _log.warning("sqlite_change_log_poll_failed", error=str(exc), failures_in_a_row=self._poll_failing)
                continue
            if self._poll_failing:
                _log.info("sqlite_change_log_poll_recovered", failures_in_a_row=self._poll_failing)
                self._poll_failing = 0

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

    async def export_rows(self, write: Callable[[str, bytes], None]) -> int:
        """Every row in key order from one read transaction of a connection of its own, on
        a worker thread (WAL: the transaction sees one commit's state while writes go on)."""
        if self._closed:
            raise RuntimeError("storage is closed")
        return await asyncio.to_thread(dump_rows, self.path, write)

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
        await put_each(items, lambda key, blob: self._submit(PUT, key, blob))

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
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass
            self._poller = None
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
        if self._writer_lock is not None:
            self._writer_lock.close()
            self._writer_lock = None

    # -- the writer thread -------------------------------------------------------------

    def _notify(self, fn: Callable[[*_Ts], None], *args: *_Ts) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _writer_main(self, ready: asyncio.Future[None]) -> None:
        self.prompt_commit = yield_to_event_loop()
        conn: sqlite3.Connection | None = None
        wlock = self._writer_lock
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if wlock is not None:
                wlock.acquire()  # shared: the other processes' writers wait meanwhile
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                conn.execute("PRAGMA cache_size = -8192")  # appends touch few pages; RSS matters more
                conn.execute("PRAGMA journal_size_limit = 33554432")  # truncate a big WAL
                self.migrated = migrate(conn)
                if self.migrated:  # the whole table went through the WAL: empty it now
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                if self.changes is not None:
                    self.changes.create(conn)
            finally:
                if wlock is not None:
                    wlock.release()
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
                started = time.perf_counter()  # the commit's time includes the wait for the writer lock
                if wlock is not None:
                    wlock.acquire()  # shared: one process's transaction at a time
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
                    if wlock is not None:
                        wlock.release()
                    self.checkpointer.end()
                self._notify(_resolve, batch, results)
                self.checkpointer.poke()
        self.checkpointer.stop()
        if wlock is None:
            try:  # leave the database file complete and the WAL empty
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # a reader still open: SQLite finishes the checkpoint when the last one closes
        # Shared: other processes keep writing; the last connection to close empties the WAL.
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


def dump_rows(path: str, write: Callable[[str, bytes], None]) -> int:
    """``write(key, value)`` for every row of the SQLite file at ``path``, in key order, from
    one read transaction; the number of rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = 1")
        conn.execute("BEGIN")
        count = 0
        for key, value in conn.execute("SELECT key, value FROM kv ORDER BY key"):
            write(key, bytes(value))
            count += 1
        conn.execute("COMMIT")
        return count
    finally:
        conn.close()


def peek(path: str, key: str) -> tuple[int, bytes | None]:
    """The number of rows of the SQLite file at ``path`` and the stored value of ``key``,
    read-only, beside a server that has the file open (``authmount operator diagnose``)."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT count(*) FROM kv").fetchone()[0]
        found = conn.execute(_GET, (key,)).fetchone()
    finally:
        conn.close()
    return int(rows), bytes(found[0]) if found else None


def replace_rows(path: str, rows: Iterable[tuple[str, bytes]]) -> int:
    """Make ``rows`` the whole content of the SQLite file at ``path`` (created if missing), in
    one transaction: a failure part-way leaves the file as it was. Only with no server on the
    file (its owner lock is taken for the while); the number of rows written.

    :raises RuntimeError: a server has the file open.
    """
    fd = owner_lock(path)
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            migrate(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM kv")
                if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'kv_log'").fetchone():
                    conn.execute("DELETE FROM kv_log")  # the workers' change log: nothing to replay
                count = 0
                for key, value in rows:
                    conn.execute("INSERT INTO kv (key, value) VALUES (?, ?)", (key, value))
                    count += 1
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return count
        finally:
            conn.close()
    finally:
        os.close(fd)
