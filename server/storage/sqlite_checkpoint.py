"""WAL checkpoints for the SQLite engine, in a thread of their own instead of inside COMMIT."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import structlog

from server.storage.sqlite_shared import FileLock

__all__ = ["Checkpointer", "INTERVAL", "RESTART_FRAMES", "IDLE", "wake_promptly", "yield_to_event_loop"]

#: Seconds between checkpoint rounds while commits come in.
INTERVAL = 0.25
#: WAL frames (pages) that make a round end with a RESTART checkpoint: the WAL stays at
#: about this size (16 MiB with 4 KiB pages) under any load.
RESTART_FRAMES = 4096
#: Seconds without commits after which the WAL file is emptied (TRUNCATE).
IDLE = 2.0
#: While checkpoints keep failing, every this many failures is logged again.
LOG_EVERY = 100
#: Shared mode: seconds between two attempts of a process that does not checkpoint to
#: become the one that does (when that process stopped or died).
LEADER_RETRY = 1.0

log = structlog.get_logger("authmount.storage")


def yield_to_event_loop() -> bool:
    """Schedule the calling thread (the writer, the checkpointer) as ``SCHED_BATCH`` (Linux):
    same CPU share, but its wake-ups do not preempt the event loop's thread. With the
    default policy every hand-off of a write woke the writer at once, which then waited
    for the GIL the loop held: about 3,000 involuntary context switches a second on one
    core, and a commit per loop turn. Now the loop finishes its turn, and the writer commits
    what that turn and the next queued: writer CPU per service login 53-56 -> 24-27 µs,
    2 workers on one file -10 % CPU per login (docs/performance.md). Elsewhere, or if the
    system refuses, nothing changes. True when the thread now runs as ``SCHED_BATCH``."""
    return _set_policy(getattr(os, "SCHED_BATCH", None))


def wake_promptly(on: bool) -> bool:
    """The writer around its ``COMMIT`` (``on``), and after it (not ``on``): the default
    policy meanwhile. When the commit's ``fsync`` returns, the writer then takes the core at
    once to answer the batch's callers instead of waiting for the event loop's turn: on one
    core a service login's group commit took 2.1-2.6 ms against 0.13-0.26 ms for the
    ``fsync``, 6-11 % of the commits over 5 ms, and now 0.6 ms with none over 10 ms, with
    fewer, larger commits (docs/performance.md, round eight). Only a thread that
    ``yield_to_event_loop`` made ``SCHED_BATCH`` calls this. True when the policy changed."""
    return _set_policy(getattr(os, "SCHED_OTHER" if on else "SCHED_BATCH", None))


def _set_policy(policy: int | None) -> bool:
    if policy is None:  # pragma: no cover - not Linux
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # 0: this thread
    except OSError:
        return False
    return True


class Checkpointer:
    """Copies committed WAL frames into the database file off the commit path.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses the threshold, so
    every write waiting for that group commit waited for it too (15-60 ms p99 spikes).
    The writer turns it off (``wal_autocheckpoint = 0``) and calls :meth:`poke` after each
    commit; this thread then runs, at most every ``INTERVAL`` seconds:

    - a PASSIVE checkpoint (never blocks the writer or readers);
    - a RESTART checkpoint when the WAL still holds ``RESTART_FRAMES`` frames or more. A
      PASSIVE checkpoint cannot finish while commits keep coming, so under a steady load
      the WAL would only grow; RESTART copies the few frames the PASSIVE one left and
      makes the next commit start the WAL from the beginning. It needs the write lock, so
      it runs between two of the writer's transactions (:meth:`begin`/:meth:`end`) rather
      than racing the writer through SQLite's sleeping busy handler: one group commit
      waits a few ms, once per ``RESTART_FRAMES`` frames;
    - a TRUNCATE checkpoint after ``IDLE`` seconds without commits, which empties the
      WAL file while nobody is writing.

    Durability does not depend on checkpoints: a commit is durable once its WAL frames
    are synced. :meth:`stop` ends the thread (after a running checkpoint finishes).

    A failing checkpoint (a locked or unreadable WAL) is retried at the next round and
    logged (``sqlite_checkpoint_failed``: the first of a streak, then every ``LOG_EVERY``;
    ``sqlite_checkpoint_recovered`` when one runs again), since a WAL that is never
    checkpointed grows without bound.

    Shared mode (several processes on the file, ``sqlite_shared``): only the process
    holding ``<path>.checkpoint-lock`` checkpoints (the others try to take it every
    ``LEADER_RETRY`` seconds). Its rounds run every ``INTERVAL`` while ``PRAGMA
    data_version`` says some process committed, and RESTART/TRUNCATE take the writer lock
    (``<path>.writer-lock``) that every process's writer holds through its transactions.
    """

    def __init__(self, path: str, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        #: Shared mode: does this process checkpoint? (it holds the checkpoint lock)
        self.leader = not shared
        self._leader_lock: FileLock | None = None
        self._write_lock: FileLock | None = None
        self.interval = INTERVAL
        self.restart_frames = RESTART_FRAMES
        self.idle = IDLE
        self.runs = {"PASSIVE": 0, "RESTART": 0, "TRUNCATE": 0}  # checkpoints run, by mode
        self.errors = 0  # failed checkpoints, in total
        self._failing = 0  # failed checkpoints since the last one that ran
        self._wake = threading.Event()
        # The hand-over of the write lock for RESTART/TRUNCATE: the writer is in a
        # transaction (_writer_busy); a checkpoint wants or holds the lock ("wanted",
        # "running"), so the writer waits before its next transaction.
        self._handover = threading.Condition()
        self._writer_busy = False
        self._exclusive_state = ""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None

    def start(self) -> None:
        """Open the checkpointer's own connection and start its thread."""
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA cache_size = -256")  # checkpoints read the WAL, not the cache
        if self.shared:
            self._leader_lock = FileLock(self.path + ".checkpoint-lock")
            self._write_lock = FileLock(self.path + ".writer-lock")
        self._thread = threading.Thread(
            target=self._main_shared if self.shared else self._main,
            name="authmount-sqlite-checkpointer", daemon=True,
        )
        self._thread.start()

    def poke(self) -> None:
        """A commit happened (called by the writer thread; cheap when already poked)."""
        if not self._wake.is_set():
            self._wake.set()

    def begin(self) -> None:
        """Writer thread, before each transaction: wait while a RESTART/TRUNCATE wants or
        holds the write lock (then the writer never sleeps in SQLite's busy handler)."""
        with self._handover:
            while self._exclusive_state:
                self._handover.wait()
            self._writer_busy = True

    def end(self) -> None:
        """Writer thread, after each transaction (committed or not)."""
        with self._handover:
            self._writer_busy = False
            if self._exclusive_state:
                self._handover.notify_all()

    def _exclusive(self, mode: str) -> bool:
        """Run a RESTART or TRUNCATE checkpoint between two of the writer's transactions."""
        if self._write_lock is not None:  # shared: between two transactions of any process
            self._write_lock.acquire()
            try:
                return self._checkpoint(mode)[0]
            finally:
                self._write_lock.release()
        with self._handover:
            self._exclusive_state = "wanted"
            # The current transaction ends within one commit; the timeout is a safety net.
            self._handover.wait_for(lambda: not self._writer_busy, timeout=5.0)
            self._exclusive_state = "running"
        try:
            return self._checkpoint(mode)[0]
        finally:
            with self._handover:
                self._exclusive_state = ""
                self._handover.notify_all()

    def stop(self) -> None:
        """Stop the thread and close its connection."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for lock in (self._leader_lock, self._write_lock):
            if lock is not None:
                lock.close()
        self._leader_lock = self._write_lock = None
        self.leader = not self.shared

    def _checkpoint(self, mode: str) -> tuple[bool, int]:
        """Run one checkpoint; return (completed, frames in the WAL)."""
        assert self._conn is not None
        try:
            busy, frames, done = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()[0]
        except sqlite3.Error as exc:  # e.g. busy past the timeout: try again at the next round
            self.errors += 1
            self._failing += 1
            if self._failing % LOG_EVERY == 1:  # the first of a streak, then every LOG_EVERY
                log.warning(
                    "sqlite_checkpoint_failed", mode=mode, error=str(exc),
                    failures_in_a_row=self._failing, path=self.path,
                )
            return False, 0
        if self._failing:
            log.info("sqlite_checkpoint_recovered", mode=mode, failures_in_a_row=self._failing, path=self.path)
            self._failing = 0
        self.runs[mode] += 1
        return not busy and frames == done, int(frames)

    def _main(self) -> None:
        yield_to_event_loop()
        dirty = False  # commits since the WAL file was last emptied
        while not self._stopping.is_set():
            if not self._wake.wait(self.idle):
                if dirty:
                    dirty = not self._exclusive("TRUNCATE")
                continue
            if self._stopping.is_set():
                break
            self._wake.clear()
            dirty = True
            _, frames = self._checkpoint("PASSIVE")
            if frames >= self.restart_frames:
                self._exclusive("RESTART")
            self._stopping.wait(self.interval)

    def _main_shared(self) -> None:
        """Shared mode: lead (hold the checkpoint lock) or wait to; rounds as ``_main``,
        woken every ``interval`` since other processes' commits poke nobody here."""
        yield_to_event_loop()
        assert self._conn is not None and self._leader_lock is not None
        dirty = False
        version = None
        last_change = time.monotonic()
        while not self._stopping.is_set():
            if not self.leader:
                if not self._leader_lock.try_acquire():
                    self._stopping.wait(LEADER_RETRY)
                    continue
                self.leader = True
                log.info("sqlite_checkpointer_leading", path=self.path)
            self._stopping.wait(self.interval)
            if self._stopping.is_set():
                break
            self._wake.clear()
            try:
                now_version = self._conn.execute("PRAGMA data_version").fetchall()[0][0]
            except sqlite3.Error:
                now_version = None  # unreadable: let the checkpoint below report it
            if now_version is None or now_version != version:
                version = now_version
                dirty, last_change = True, time.monotonic()
                _, frames = self._checkpoint("PASSIVE")
                if frames >= self.restart_frames:
                    self._exclusive("RESTART")
            elif dirty and time.monotonic() - last_change >= self.idle:
                dirty = not self._exclusive("TRUNCATE")
