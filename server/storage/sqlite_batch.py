"""The SQLite writer's group-commit transaction: apply a batch of queued writes, then publish."""

from __future__ import annotations

import functools
import sqlite3
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from server.storage.sqlite import SQLiteStorage

__all__ = ["Batch", "Result", "PUT", "DELETE", "UPDATE", "DELETE_PREFIX", "STOP", "DELETE_SEQS"]

# Operation codes carried through the writer queue.
PUT, DELETE, UPDATE, DELETE_PREFIX, STOP = range(5)
DELETE_SEQS = "DELETE FROM kv WHERE seq IN (SELECT value FROM json_each(?))"
_MAX_ROWS = 256  # rows per multi-row INSERT (3 parameters each, far below SQLite's limit)
_MISSING = object()

Result = tuple[bool, Any]  # (ok, value) or (False, exception)


class Batch:
    """One group-commit transaction in the writer thread.

    ``pending`` holds this batch's changes (key → (seq, encoded value), None: deleted);
    the store's key index and value cache are updated from it only after COMMIT. Runs of
    new keys are buffered and written with multi-row INSERTs: each statement releases and
    re-takes the GIL once, and that hand-off with the event-loop thread costs more than
    the insert itself.
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
        return self.store.tree.get(key)

    def new_seq(self) -> int:
        seq = self.store.next_seq
        self.store.next_seq += 1
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
                if op == PUT:
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
        self.store.publish(self.pending)
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
        if op == DELETE:
            seq = self.seq_of(key)
            if seq is not None:
                conn.execute("DELETE FROM kv WHERE seq = ?", (seq,))
                self.pending[key] = None
            return None
        if op == UPDATE:
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
        if op == DELETE_PREFIX:
            doomed = self.store.tree.items_with_prefix(key)
            for k, state in self.pending.items():
                if k.startswith(key):
                    if state is None:
                        doomed.pop(k, None)
                    else:
                        doomed[k] = state[0]
            if doomed:
                conn.execute(DELETE_SEQS, (orjson.dumps(list(doomed.values())).decode(),))
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
