"""The SQLite engine's table and the upgrade from the old layout."""

from __future__ import annotations

import sqlite3

__all__ = ["TABLE", "INDEX", "migrate"]

# Rows are appended by ``seq`` (the rowid) and found by key through a unique index. This
# layout measured cheaper than a ``key PRIMARY KEY ... WITHOUT ROWID`` table: the same
# writer CPU for keys that grow with time (token selectors, appended at the right edge of
# the index) and about half for random keys (HMACs), whose inserts dirty one small index
# leaf instead of one leaf of full rows; see docs/performance.md.
TABLE = (
    "CREATE TABLE IF NOT EXISTS kv (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, value BLOB NOT NULL)"
)
INDEX = "CREATE UNIQUE INDEX kv_key ON kv (key)"

# The old layout is the same table without the index (the engine kept the keys in
# memory). A key had one row; should a stray older row exist, the newest (highest seq) won.
_DROP_DUPLICATES = "DELETE FROM kv WHERE seq NOT IN (SELECT max(seq) FROM kv GROUP BY key)"


def migrate(conn: sqlite3.Connection) -> bool:
    """Create the table and its key index; True if an existing table had to be indexed.

    A file written before the index existed is converted here: duplicate rows are dropped
    (the newest wins) and the index is built, in one transaction (SQLite DDL is
    transactional): a crash part-way leaves the file as it was, and the next open
    converts it again.
    """
    if ("kv_key",) in _names(conn):
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _names(conn)  # again under the write lock: another process may have done it
        if ("kv_key",) in found:
            conn.execute("COMMIT")
            return False
        conn.execute(TABLE)
        if found:
            conn.execute(_DROP_DUPLICATES)
        conn.execute(INDEX)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return bool(found)


def _names(conn: sqlite3.Connection) -> list[tuple[str]]:
    return conn.execute("SELECT name FROM sqlite_master WHERE name IN ('kv', 'kv_key')").fetchall()
