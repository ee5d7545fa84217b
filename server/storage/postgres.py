"""PostgreSQL storage engine for several nodes: pooled psycopg 3 connections and LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg import pq
from psycopg.rows import TupleRow

from plugin.storage import Updater, check_key, check_page_args, check_prefix, decode, encode, page_floor
from server import telemetry
from server.storage.keyrange import collect_children, list_children, prefix_end
from server.storage.writes import put_each

__all__ = ["PostgresStorage", "CHANNEL"]

CHANNEL = "authmount_kv"
_RECONNECT_DELAY = 1.0
_log = structlog.get_logger("authmount.storage")

_T = TypeVar("_T")

# COLLATE "C" makes the primary-key index byte-ordered, so ``LIKE 'prefix%'`` uses it.
# ``json``, not ``jsonb``: the value is kept as the text the node wrote (what SQLite
# stores), so a string holding NUL (``\u0000``, which jsonb refuses) is stored as on
# every other engine, and objects come back with their keys in the order written.
_SCHEMA = (
    'CREATE TABLE IF NOT EXISTS authmount_kv (key text COLLATE "C" PRIMARY KEY, value json NOT NULL)'
)
#: The type of the value column of an existing table (``jsonb`` before the change above).
_VALUE_TYPE = (
    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
    " WHERE attrelid = 'authmount_kv'::regclass AND attname = 'value'"
)
#: Converts a table of the ``jsonb`` layout (rewrites it: an exclusive lock meanwhile).
_TO_JSON = "ALTER TABLE authmount_kv ALTER COLUMN value TYPE json USING value::json"
#: Serialises schema creation: ``CREATE TABLE IF NOT EXISTS`` run by several nodes at the
#: same moment can fail with a duplicate pg_type row (PostgreSQL does not lock the name).
_SCHEMA_LOCK = 0x61757468_6D6E74  # "authmnt"
_PUT = (
    "WITH w AS (INSERT INTO authmount_kv (key, value) VALUES (%(key)s, %(value)s::json)"
    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value RETURNING key)"
    " SELECT pg_notify(%(chan)s, %(node)s || key) FROM w WHERE NOT key LIKE ANY(%(quiet)s::text[])"
)
_PUT_MANY = (
    "WITH w AS (INSERT INTO authmount_kv (key, value)"
    " SELECT k, v::json FROM unnest(%(keys)s::text[], %(values)s::text[]) AS t(k, v)"
    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value RETURNING key)"
    " SELECT pg_notify(%(chan)s, %(node)s || key) FROM w WHERE NOT key LIKE ANY(%(quiet)s::text[])"
)
_DELETE = (
    "WITH d AS (DELETE FROM authmount_kv WHERE key = %(key)s RETURNING key)"
    " SELECT pg_notify(%(chan)s, %(node)s || key) FROM d WHERE NOT key LIKE ANY(%(quiet)s::text[])"
)
_DELETE_PREFIX = (
    "WITH d AS (DELETE FROM authmount_kv WHERE key LIKE %(pattern)s ESCAPE '\\' RETURNING key)"
    " SELECT pg_notify(%(chan)s, %(node)s || key) FROM d WHERE NOT key LIKE ANY(%(quiet)s::text[])"
)

#: ``list_page`` range scans on the primary-key index, by (inclusive floor, upper bound).
_PAGE = {
    (inclusive, bounded): "SELECT key FROM authmount_kv WHERE key "
    + (">=" if inclusive else ">")
    + " %s"
    + (" AND key < %s" if bounded else "")
    + " ORDER BY key LIMIT %s"
    for inclusive in (False, True)
    for bounded in (False, True)
}


def like_prefix(prefix: str) -> str:
    """A LIKE pattern (ESCAPE ``\\``) matching exactly the strings starting with ``prefix``."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class _Pool:
    """A small pool of autocommit connections, opened lazily up to ``size``."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn = dsn
        self._idle: list[psycopg.AsyncConnection[TupleRow]] = []
        self._slots = asyncio.Semaphore(size)
        self._all: set[psycopg.AsyncConnection[TupleRow]] = set()

    async def _connect(self) -> psycopg.AsyncConnection[TupleRow]:
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        self._all.add(conn)
        return conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[TupleRow]]:
        """Borrow a connection; one left broken or mid-transaction is discarded."""
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            healthy = False
            try:
                yield conn
                healthy = True
            finally:
                status = conn.info.transaction_status
                if healthy or (not conn.closed and status == pq.TransactionStatus.IDLE):
                    self._idle.append(conn)
                else:
                    self._all.discard(conn)
                    await conn.close()

    async def close(self) -> None:
        """Close every connection."""
        for conn in list(self._all):
            await conn.close()
        self._all.clear()
        self._idle.clear()


class PostgresStorage:
    """A ``plugin.storage.Storage`` in one PostgreSQL table shared by every node.

    Table ``authmount_kv(key text primary key, value json)``, created at open (a table of
    the older ``jsonb`` layout is converted at open, once). After every
    write the changed keys are announced with ``NOTIFY authmount_kv, '<node-id> <key>'`` (in
    the writing transaction, so only committed changes are announced); each node LISTENs
    and calls its invalidation callback for keys written by *other* nodes. ``update`` locks
    the row (``SELECT ... FOR UPDATE``; a missing row is locked by inserting it inside the
    transaction), so concurrent updates of one key are serialised across the cluster.
    Concurrent puts are written together (one ``INSERT ... SELECT FROM unnest`` per batch,
    one round trip); if that statement fails they are retried one by one, so a bad value
    fails only its own caller. Keys longer than ~7900 bytes cannot be announced (NOTIFY's
    payload limit) and their writes fail. Writes under the prefixes given to
    ``set_unannounced_prefixes`` (keys no node caches, e.g. service tokens) are not
    announced: PostgreSQL serialises the commits of all transactions that NOTIFY (a global
    lock held through the commit's WAL flush), which would stop concurrent logins of
    several nodes from sharing a flush. Build it with ``await PostgresStorage.open(dsn)``.
    """

    #: Several nodes write this storage: a cache miss may be another node's fresh write.
    shared = True

    def __init__(self, dsn: str, pool_size: int = 10) -> None:
        self.dsn = dsn
        self.node_id = uuid.uuid4().hex
        self._node_prefix = self.node_id + " "
        self._pool = _Pool(dsn, pool_size)
        self._callback: Callable[[str], None] | None = None
        self._quiet: list[str] = []  # LIKE patterns of keys whose writes are not announced
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._closed = False
        # Concurrent puts are group-written: one statement (one round trip) per batch.
        self._put_queue: list[tuple[str, str, asyncio.Future[None]]] = []
        self._put_flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, dsn: str, pool_size: int = 10) -> PostgresStorage:
        """Connect, create the table if needed and start listening for other nodes' writes."""
        store = cls(dsn, pool_size)
        try:
            async with store._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await conn.execute(_SCHEMA)
                cur = await conn.execute(_VALUE_TYPE)
                row = await cur.fetchone()
                if row is not None and row[0] == "jsonb":
                    _log.info("storage_converting_table", table="authmount_kv", value_type="json")
                    await conn.execute(_TO_JSON)
            store._listener = asyncio.create_task(store._listen(), name="authmount-pg-listen")
            await store._listening.wait()
            if store._listener.done():  # the first LISTEN connection failed
                store._listener.result()
        except BaseException:
            await store.close()
            raise
        return store

    def set_invalidation_callback(self, cb: Callable[[str], None]) -> None:
        """Call ``cb(key)`` when another node writes ``key`` (``cb("")``: anything changed)."""
        self._callback = cb

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("storage is closed")

    def peek_cached(self, key: str) -> bytes | None:
        """Always None: another node may have changed any value, so nothing is cached."""
        return None

    def set_unannounced_prefixes(self, prefixes: Sequence[str]) -> None:
        """Do not NOTIFY writes of keys under ``prefixes``: only for keys that no node
        caches (other nodes must read them from the table every time)."""
        self._quiet = [like_prefix(p) for p in prefixes]

    def _params(self, **extra: object) -> dict[str, object]:
        return {"chan": CHANNEL, "node": self._node_prefix, "quiet": self._quiet, **extra}

    async def get(self, key: str) -> Any | None:
        """Return the value at ``key`` or None."""
        self._check()
        check_key(key)
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT value::text FROM authmount_kv WHERE key = %s", (key,)
            )
            row = await cur.fetchone()
        return decode(row[0]) if row else None

    async def list(self, prefix: str) -> list[str]:
        """Immediate children under ``prefix`` (sorted; sub-folders end with ``/``)."""
        self._check()
        check_prefix(prefix)
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT key FROM authmount_kv WHERE key LIKE %s ESCAPE '\\'",
                (like_prefix(prefix),),
            )
            rows = await cur.fetchall()
        return list_children((r[0] for r in rows), prefix)

    async def list_page(self, prefix: str, after: str = "", limit: int = 1000) -> builtins.list[str]:
        """The children ``list`` would return that sort after ``after``, at most ``limit``.

        A range scan of the primary-key index (byte order, ``COLLATE "C"``) from the
        first key past ``after``, ``LIMIT``-ed to what the page still needs; a sub-folder
        is named once and skipped with one more query.
        """
        self._check()
        check_page_args(prefix, after, limit)
        end = prefix_end(prefix)
        low, inclusive = page_floor(prefix, after)
        out: builtins.list[str] = []
        async with self._pool.connection() as conn:
            while len(out) < limit:
                want = limit - len(out)
                args = (low, end, want) if end is not None else (low, want)
                cur = await conn.execute(_PAGE[inclusive, end is not None], args)
                keys = await cur.fetchall()
                seek = collect_children((key for (key,) in keys), prefix, out)
                if seek is None:
                    return out  # fewer keys than wanted: the folder is done, or the page full
                low, inclusive = seek, True  # a sub-folder, named once: continue past it
        return out

    async def put(self, key: str, value: object) -> None:
        """Store ``value`` at ``key`` (committed when this returns)."""
        self._check()
        check_key(key)
        await self._enqueue(key, encode(value).decode())

    async def put_many(self, items: Sequence[tuple[str, object]]) -> None:
        """``put`` each (key, value) pair: they join the same batch (one statement). Nothing
        is written if a value cannot be encoded; otherwise returns once every write is
        committed and raises the first failure (after all have finished)."""
        self._check()
        await put_each(items, lambda key, blob: self._enqueue(key, blob.decode()))

    def _enqueue(self, key: str, text: str) -> asyncio.Future[None]:
        """Queue a put for the next batch; the future resolves once it is committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put_queue.append((key, text, fut))
        if self._put_flusher is None:
            self._put_flusher = asyncio.create_task(self._flush_puts())
        return fut

    async def _flush_puts(self) -> None:
        """Write queued puts, one statement per batch, until the queue stays empty."""
        batch: list[tuple[str, str, asyncio.Future[None]]] = []
        try:
            while self._put_queue:
                batch, self._put_queue = self._put_queue, []
                await self._write_puts(batch)
        except BaseException as exc:  # e.g. cancelled at shutdown: nobody may wait forever
            error = exc if isinstance(exc, Exception) else RuntimeError("storage is closed")
            for _key, _text, fut in batch + self._put_queue:
                if not fut.done():
                    fut.set_exception(error)
            self._put_queue = []
            if not isinstance(exc, Exception):
                raise
        finally:
            self._put_flusher = None

    async def _write_puts(self, batch: builtins.list[tuple[str, str, asyncio.Future[None]]]) -> None:
        latest = {key: text for key, text, _fut in batch}  # the same key twice: last wins
        try:
            started = time.perf_counter()
            async with self._pool.connection() as conn:
                await conn.execute(
                    _PUT_MANY, self._params(keys=list(latest), values=list(latest.values()))
                )
            telemetry.STORAGE_COMMIT.observe(time.perf_counter() - started)
            telemetry.STORAGE_BATCH.observe(len(batch))
        except psycopg.Error as exc:
            if len(batch) == 1:
                if not batch[0][2].done():
                    batch[0][2].set_exception(exc)
                return
            # Nothing was written (one statement); retry one by one so only the culprit fails.
            for key, text, fut in batch:
                try:
                    async with self._pool.connection() as conn:
                        await conn.execute(_PUT, self._params(key=key, value=text))
                except psycopg.Error as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                else:
                    if not fut.done():
                        fut.set_result(None)
            return
        for _key, _text, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is fine."""
        self._check()
        check_key(key)
        async with self._pool.connection() as conn:
            await conn.execute(_DELETE, self._params(key=key))

    async def update(self, key: str, fn: Updater[_T]) -> _T:
        """Atomically store ``fn(old)`` under a row lock (None deletes); return the new value."""
        self._check()
        check_key(key)
        async with self._pool.connection() as conn:
            async with conn.transaction():
                old = await self._lock_row(conn, key)
                new = fn(old)
                if new is None:
                    await conn.execute(_DELETE, self._params(key=key))
                else:
                    text = encode(new).decode()
                    await conn.execute(_PUT, self._params(key=key, value=text))
        return new

    async def _lock_row(self, conn: psycopg.AsyncConnection[TupleRow], key: str) -> Any | None:
        """Lock ``key``'s row for this transaction and return its value (None: missing)."""
        while True:
            # Inserting a placeholder locks a missing key too: a concurrent insert of the
            # same key waits on the unique index until this transaction ends. The
            # placeholder is never visible to others (the transaction either writes the
            # real value or rolls back).
            cur = await conn.execute(
                "INSERT INTO authmount_kv (key, value) VALUES (%s, 'null'::json)"
                " ON CONFLICT (key) DO NOTHING RETURNING key",
                (key,),
            )
            if await cur.fetchone():
                return None
            cur = await conn.execute(
                "SELECT value::text FROM authmount_kv WHERE key = %s FOR UPDATE", (key,)
            )
            row = await cur.fetchone()
            if row:
                return decode(row[0])
            # The row was deleted between the two statements: try again.

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` in one statement; return the count."""
        self._check()
        check_prefix(prefix)
        async with self._pool.connection() as conn:
            cur = await conn.execute(_DELETE_PREFIX, self._params(pattern=like_prefix(prefix)))
            return max(cur.rowcount, 0)

    # -- notifications -----------------------------------------------------------------

    def _dispatch(self, payload: str) -> None:
        node, _, key = payload.partition(" ")
        if node == self.node_id or self._callback is None:
            return
        try:
            self._callback(key)
        except Exception:  # noqa: BLE001 - a cache bug must not stop the listener
            _log.exception("storage_invalidation_callback_failed")

    async def _listen(self) -> None:
        """Keep one LISTEN connection open; on reconnect tell the callback everything changed."""
        first = True
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            except psycopg.Error as exc:
                if first:
                    self._listening.set()
                    raise
                _log.warning("storage_listen_connect_failed", error=str(exc))
                await asyncio.sleep(_RECONNECT_DELAY)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if not first and self._callback is not None:
                        self._callback("")  # notifications may have been missed meanwhile
                    first = False
                    self._listening.set()
                    async for note in conn.notifies():
                        self._dispatch(note.payload)
            except psycopg.Error as exc:
                if self._closed:
                    return
                _log.warning("storage_listen_lost", error=str(exc))
                await asyncio.sleep(_RECONNECT_DELAY)

    @staticmethod
    async def peek(dsn: str, key: str) -> tuple[int, bytes | None] | None:
        """The number of rows and the stored value of ``key`` (as JSON text), through a
        connection of its own, beside running nodes; None when the table does not exist yet
        (``authmount operator diagnose``)."""
        async with await psycopg.AsyncConnection.connect(dsn, connect_timeout=5) as conn:
            table = await (await conn.execute("SELECT to_regclass('authmount_kv')")).fetchone()
            if table is None or table[0] is None:
                return None
            count = await (await conn.execute("SELECT count(*) FROM authmount_kv")).fetchone()
            found = await (await conn.execute("SELECT value::text FROM authmount_kv WHERE key = %s", (key,))).fetchone()
        return (int(count[0]) if count else 0), (found[0].encode() if found else None)

    async def export_rows(self, write: Callable[[str, bytes], None]) -> int:
        """Every row in key order from one REPEATABLE READ transaction (one snapshot of the
        table, whatever the nodes write meanwhile), read through a server-side cursor."""
        self._check()
        count = 0
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            async with conn.cursor(name="authmount_snapshot") as cur:
                await cur.execute("SELECT key, value::text FROM authmount_kv ORDER BY key")
                async for key, text in cur:
                    write(key, text.encode())
                    count += 1
        return count

    async def replace_rows(self, rows: Iterable[tuple[str, bytes]]) -> int:
        """Make ``rows`` the whole table in one transaction (a failure part-way leaves it as it
        was); the number of rows written. Only with every node stopped."""
        self._check()
        count = 0
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("LOCK TABLE authmount_kv IN ACCESS EXCLUSIVE MODE")
            await conn.execute("DELETE FROM authmount_kv")
            async with conn.cursor().copy("COPY authmount_kv (key, value) FROM STDIN") as copy:
                for key, value in rows:
                    await copy.write_row((key, value.decode()))
                    count += 1
        return count

    async def close(self) -> None:
        """Stop listening and close every pooled connection."""
        self._closed = True
        if self._put_flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._put_flusher)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await self._listener
            self._listener = None
        await self._pool.close()
