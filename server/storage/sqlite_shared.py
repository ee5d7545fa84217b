"""What lets several processes share one SQLite file: the owner lock, the writer lock and
the change log that tells each process what the others wrote.

``authmount server --workers N`` on SQLite runs N worker processes on one file. The
supervisor holds the **owner lock** (an exclusive ``flock`` on ``<path>.lock``, the lock a
single process takes itself) and hands its descriptor to every worker
(``AUTHMOUNT_SQLITE_LOCK_FD``): any other server or ``authmount operator`` command is still
refused while the workers run. Each worker then opens the file in *shared* mode:

- its writer thread takes the **writer lock** (``flock`` on ``<path>.writer-lock``) around
  each group-commit transaction. SQLite would serialise the writers anyway, but a writer
  that finds the file locked sleeps in SQLite's busy handler (1, 2, 5, 10 ... ms); a
  blocked ``flock`` wakes as soon as the other process commits, and the lock is dropped by
  the kernel when its holder dies;
- one process at a time checkpoints the WAL: the one holding ``<path>.checkpoint-lock``
  (the others try again every second, so a killed checkpointer is replaced);
- every write transaction also appends the keys it changed to the **change log** (table
  ``kv_log``), in the same transaction, except keys under the unannounced prefixes (token
  rows, which every use reads from the file). Each process polls the log every
  ``POLL_INTERVAL`` and calls its invalidation callback for the keys other processes
  wrote: what PostgreSQL nodes learn through LISTEN/NOTIFY.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable

import structlog

__all__ = [
    "LOCK_FD_ENV",
    "POLL_INTERVAL",
    "LOG_RETENTION",
    "FileLock",
    "ChangeLog",
    "owner_lock",
    "adopt_owner_lock",
]

#: The supervisor's owner-lock descriptor, inherited by its workers (never set by hand).
LOCK_FD_ENV = "AUTHMOUNT_SQLITE_LOCK_FD"
#: Seconds between two reads of the change log: other processes' writes reach this one's
#: caches within this plus the event loop's delay (the bound is stated and tested as 100 ms).
POLL_INTERVAL = 0.02
#: Seconds a change-log row is kept. A process that did not poll for that long (a stopped
#: event loop) finds its last row gone and drops every cache instead.
LOG_RETENTION = 60.0
#: Rows read per query of the log (a longer backlog is read in several).
POLL_ROWS = 1024
#: A ``delete_prefix`` that removes more logged keys than this is announced as "anything
#: may have changed" (one row) instead of key by key.
PREFIX_KEYS = 1024

_TABLE = (
    "CREATE TABLE IF NOT EXISTS kv_log"
    " (seq INTEGER PRIMARY KEY, at REAL NOT NULL, node TEXT NOT NULL, key TEXT NOT NULL)"
)
_APPEND = "INSERT INTO kv_log (at, node, key) VALUES (?, ?, ?)"
_PRUNE = "DELETE FROM kv_log WHERE seq < ? AND at < ?"
_READ = "SELECT seq, node, key FROM kv_log WHERE seq >= ? ORDER BY seq LIMIT ?"
_LAST = "SELECT max(seq) FROM kv_log"

log = structlog.get_logger("authmount.storage")


def _lock_file(path: str) -> int:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o700, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def owner_lock(db_path: str) -> int:
    """Take the owner lock of ``db_path`` (``<db_path>.lock``) and return its descriptor.

    :raises RuntimeError: another process holds it.
    """
    fd = _lock_file(db_path + ".lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(f"storage file {db_path} is in use by another process") from None
    return fd


def adopt_owner_lock(db_path: str, fd: int) -> None:
    """Check that ``fd`` (inherited from the supervisor) is the owner lock of ``db_path``
    and that it is held: the lock belongs to the open file, which the supervisor and its
    workers share, so taking it again through ``fd`` succeeds only for them.

    :raises RuntimeError: ``fd`` is not open, names another file, or the lock is not held
        through it (another server owns the file).
    """
    try:
        held = os.fstat(fd)
    except OSError:
        raise RuntimeError(f"{LOCK_FD_ENV}={fd} is not an open descriptor") from None
    try:
        want = os.stat(db_path + ".lock")
    except FileNotFoundError:
        raise RuntimeError(f"{LOCK_FD_ENV}: {db_path}.lock does not exist") from None
    if (held.st_dev, held.st_ino) != (want.st_dev, want.st_ino):
        raise RuntimeError(f"{LOCK_FD_ENV}={fd} is not the lock file of {db_path}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(f"storage file {db_path} is in use by another process") from None


class FileLock:
    """An exclusive ``flock`` on a file of its own (one open file per object, so two objects
    exclude each other even inside one process). Released by the kernel if the process dies."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = _lock_file(path)
        self.held = False

    def acquire(self) -> None:
        """Block until the lock is ours (the GIL is released while waiting)."""
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.held = True

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; True when it is ours."""
        assert self._fd is not None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        return True

    def release(self) -> None:
        if self.held and self._fd is not None:
            self.held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lock too
            self._fd = None
            self.held = False


class ChangeLog:
    """The ``kv_log`` table: written by this process's writer, read by its event loop.

    Rows are ``(seq, at, node, key)``; ``key == ""`` means "anything may have changed".
    ``seq`` only grows (the newest row is never pruned), so a reader remembers the last
    row it saw and reads from there: if that row is gone, it was pruned (older than
    ``LOG_RETENTION``) and rows may have been missed.
    """

    def __init__(self) -> None:
        #: This process's writes carry it; the poller skips them (as PostgreSQL nodes skip
        #: their own notifications).
        self.node = secrets.token_hex(8)
        self._last = 0  # the seq of the last row read (0: none yet)
        self._anchored = False  # True once _last names a row that existed
        self.polls = 0
        self.resets = 0  # polls that found their anchor row pruned

    @staticmethod
    def create(conn: sqlite3.Connection) -> None:
        """Create the table (idempotent; a file written by one process has none)."""
        conn.execute(_TABLE)

    # -- the writer thread ---------------------------------------------------------------
    def append(self, conn: sqlite3.Connection, keys: Iterable[str]) -> None:
        """Inside the writer's transaction: log ``keys`` and prune rows past retention."""
        now = time.time()
        node = self.node
        rows = [(now, node, key) for key in keys]
        if not rows:
            return
        conn.executemany(_APPEND, rows)
        newest = conn.execute(_LAST).fetchall()[0][0]
        conn.execute(_PRUNE, (newest, now - LOG_RETENTION))

    # -- the event loop ------------------------------------------------------------------
    def start(self, reader: sqlite3.Connection) -> None:
        """Begin after the newest row: what was written before this process opened the
        file is in the file, and nothing is cached yet."""
        last = reader.execute(_LAST).fetchall()[0][0]
        self._last = int(last or 0)
        self._anchored = last is not None

    def poll(self, reader: sqlite3.Connection, notify: Callable[[str], None]) -> int:
        """Read the rows written since the last poll and call ``notify(key)`` once per key
        another process changed (``notify("")``: anything may have changed). Returns the
        number of keys notified."""
        self.polls += 1
        seen: dict[str, None] = {}
        while True:
            rows = reader.execute(_READ, (self._last, POLL_ROWS)).fetchall()
            full = len(rows) == POLL_ROWS
            if self._anchored:
                if rows and rows[0][0] == self._last:
                    rows = rows[1:]
                else:  # the row we stopped at was pruned: rows after it may be gone too
                    self.resets += 1
                    log.warning("sqlite_change_log_gap", note="every cache dropped", last_seq=self._last)
                    seen[""] = None
                    self._anchored = False
            for seq, node, key in rows:
                self._last = seq
                self._anchored = True
                if node != self.node:
                    seen[key] = None
            if not full:
                break
        if "" in seen:
            seen = {"": None}
        for key in seen:
            try:
                notify(key)
            except Exception:  # noqa: BLE001 - a cache bug must not stop the poller
                log.exception("storage_invalidation_callback_failed")
        return len(seen)
