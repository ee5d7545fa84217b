"""The SQLite writer's group-commit transaction: apply a batch of queued writes, then publish."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from typing import TYPE_CHECKING, Any, cast

from plugin.storage import Updater, decode, encode
from server.storage.keyrange import prefix_end
from server.storage.sqlite_checkpoint import wake_promptly
from server.storage.sqlite_shared import PREFIX_KEYS

if TYPE_CHECKING:
    from server.storage.sqlite import SQLiteStorage

__all__ = ["Batch", "Op", "Result", "PUT", "DELETE", "UPDATE", "DELETE_PREFIX", "STOP"]

# Operation codes carried through the writer queue.
PUT, DELETE, UPDATE, DELETE_PREFIX, STOP = range(5)
_MAX_ROWS = 256  # rows per multi-row INSERT (2 parameters each, far below SQLite's limit)
_MISSING = object()

#: One queued write: (operation, key or prefix, argument, the caller's future). The argument
#: is the encoded value (PUT), ``fn`` (UPDATE) or None; STOP carries ("", None, None).
Op = tuple[int, str, "bytes | Updater[object] | None", "asyncio.Future[Any] | None"]
#: (True, what the caller's future resolves to) or (False, the exception it raises).
Result = tuple[bool, Any]


class _Buffered:
    """A put buffered until the next flush: its value, the indexes of the puts it answers,
    and the key's pending value before them (``_MISSING``: none)."""

    __slots__ = ("blob", "indexes", "before")

    def __init__(self, blob: bytes, index: int, before: object) -> None:
        self.blob = blob
        self.indexes = [index]
        self.before = before


class Batch:
    """One group-commit transaction in the writer thread.

    ``pending`` holds this batch's changes (key → encoded value, None: deleted) and
    ``prefixes`` the prefixes it deleted; the store's value cache is updated from them
    only after COMMIT. Runs of puts are buffered and written with multi-row upserts: each
    statement releases and re-takes the GIL once, and that hand-off with the event-loop
    thread costs more than the insert itself. In shared mode the keys it changed (less the
    unannounced ones) go into the change log before COMMIT, in the same transaction:
    ``pending`` plus the keys ``delete_prefix`` removed (``swept``).
    """

    def __init__(self, store: SQLiteStorage, conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn
        self.pending: dict[str, bytes | None] = {}
        self.prefixes: list[str] = []
        self.inserts: dict[str, _Buffered] = {}
        self.results: list[Result] = []
        self.swept: dict[str, None] = {}  # shared mode: keys removed by delete_prefix

    def run(self, batch: list[Op]) -> list[Result]:
        """Apply ``batch`` in one transaction; return (ok, value-or-exception) per operation."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(False, exc)] * len(batch)
        for index, (op, key, arg, _fut) in enumerate(batch):
            try:
                if op == PUT:
                    self.put(index, key, cast(bytes, arg))
                    self.results.append((True, None))
                    continue
                self.flush()
                self.results.append((True, self.apply(op, key, arg)))
            except Exception as exc:  # noqa: BLE001 - fails only this caller
                self.results.append((False, exc))
                self.check_transaction(exc)
        self.flush()
        try:
            changes = self.store.changes
            if changes is not None:
                changes.append(conn, self.announced())
            self._commit()
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(False, exc)] * len(batch)
        self.store.commits += 1
        self.store.publish(self.pending, self.prefixes)
        return self.results

    def _commit(self) -> None:
        """COMMIT; a writer that runs as SCHED_BATCH takes the default policy meanwhile, so
        that it answers the batch's callers as soon as the ``fsync`` returns."""
        prompt = self.store.prompt_commit and wake_promptly(True)
        try:
            self.conn.execute("COMMIT")
        finally:
            if prompt:
                wake_promptly(False)

    def announced(self) -> list[str]:
        """Shared mode: the keys to log for this transaction ("" alone: too many to list)."""
        announced = self.store.announced
        keys = [k for k in self.pending if announced(k)]
        keys += [k for k in self.swept if k not in self.pending]
        return [""] if "" in self.swept else keys

    def check_transaction(self, exc: Exception) -> None:
        """After an error: if SQLite rolled the whole transaction back, fail it all."""
        if self.conn.in_transaction:
            return
        # An I/O error or a full disk undid the earlier operations of this batch too.
        self.results = [(False, exc)] * len(self.results)
        self.pending.clear()
        self.prefixes.clear()
        self.inserts.clear()
        self.swept.clear()
        self.conn.execute("BEGIN IMMEDIATE")

    def put(self, index: int, key: str, blob: bytes) -> None:
        buffered = self.inserts.get(key)
        if buffered is not None:  # the same key twice in one run of puts: last one wins
            buffered.blob = blob
            buffered.indexes.append(index)
        else:
            self.inserts[key] = _Buffered(blob, index, self.pending.get(key, _MISSING))
        self.pending[key] = blob

    def flush(self) -> None:
        """Write the buffered puts (one by one if a multi-row upsert fails)."""
        if not self.inserts:
            return
        items = list(self.inserts.items())
        self.inserts = {}
        try:
            _upsert_rows(self.conn, [(key, rec.blob) for key, rec in items])
            return
        except sqlite3.Error as exc:
            if not self.conn.in_transaction:
                self.check_transaction(exc)
                return
        for key, rec in items:
            try:
                _upsert_rows(self.conn, [(key, rec.blob)])
            except sqlite3.Error as exc:
                if not self.conn.in_transaction:
                    self.check_transaction(exc)  # fails every operation so far
                    return
                for i in rec.indexes:
                    self.results[i] = (False, exc)
                if rec.before is _MISSING:
                    self.pending.pop(key, None)
                else:
                    self.pending[key] = cast("bytes | None", rec.before)

    def apply(self, op: int, key: str, arg: bytes | Updater[object] | None) -> object:
        """Apply a delete, update or delete_prefix: one SQL write statement each."""
        conn = self.conn
        if op == DELETE:
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            self.pending[key] = None
            return None
        if op == UPDATE:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchall()
            old = decode(row[0][0]) if row else None
            new = cast("Updater[object]", arg)(old)
            if new is None:
                if row:
                    conn.execute("DELETE FROM kv WHERE key = ?", (key,))
                    self.pending[key] = None
                return None
            blob = encode(new)  # may raise: nothing has been written yet
            _upsert_rows(conn, [(key, blob)])
            self.pending[key] = blob
            return new
        if op == DELETE_PREFIX:
            end = prefix_end(key)
            where, args = ("key >= ?", (key,)) if end is None else ("key >= ? AND key < ?", (key, end))
            if self.store.changes is not None and self.store.announced(key):
                # Shared mode: the removed keys go into the change log.
                gone = [k for (k,) in conn.execute(f"DELETE FROM kv WHERE {where} RETURNING key", args)]
                count = len(gone)
                announced = self.store.announced
                logged = [k for k in gone if announced(k)]
                if len(logged) + len(self.swept) > PREFIX_KEYS:
                    self.swept = {"": None}
                elif "" not in self.swept:
                    self.swept.update(dict.fromkeys(logged))
            else:
                count = conn.execute(f"DELETE FROM kv WHERE {where}", args).rowcount
            # Keys this batch wrote earlier are gone as well; later writes come after.
            for k in self.pending:
                if k.startswith(key):
                    self.pending[k] = None
            self.prefixes.append(key)
            return count
        raise ValueError(f"unknown storage operation {op}")


@functools.cache
def _upsert_sql(rows: int) -> str:
    return (
        "INSERT INTO kv (key, value) VALUES "
        + ",".join(["(?, ?)"] * rows)
        + " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
    )


def _upsert_rows(conn: sqlite3.Connection, rows: list[tuple[str, bytes]]) -> None:
    """Insert or replace rows in power-of-two chunks (few distinct statements, all cached)."""
    k, n = 0, len(rows)
    while k < n:
        size = min(_MAX_ROWS, 1 << ((n - k).bit_length() - 1))
        conn.execute(_upsert_sql(size), [x for row in rows[k : k + size] for x in row])
        k += size
