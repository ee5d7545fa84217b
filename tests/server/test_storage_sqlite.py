"""SQLite engine: the on-disk key index, the upgrade of old files, and WAL checkpoints."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from server.storage import sqlite as sqlite_engine
from server.storage import sqlite_checkpoint, sqlite_schema
from server.storage.keyrange import list_children, prefix_end
from server.storage.sqlite import SQLiteStorage

# How the engine laid the file out before the key index moved to disk.
OLD_SCHEMA = "CREATE TABLE kv (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, value BLOB NOT NULL)"


def _write_old_file(path: str, rows: list[tuple[int, str, Any]]) -> None:
    """A database written by the old engine: WAL mode, rows appended by seq, no key index."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(OLD_SCHEMA)
    conn.executemany(
        "INSERT INTO kv (seq, key, value) VALUES (?, ?, ?)",
        [(seq, key, orjson.dumps(value)) for seq, key, value in rows],
    )
    conn.close()


OLD_ROWS = [
    (1, "core/mounts", {"token/": {"type": "token"}}),
    (2, "sys/token/id/aaa", {"policies": ["default"]}),
    (3, "auth/u1/role/r", {"bound_audiences": ["x"]}),
    (4, "sys/token/id/bbb", "stale"),  # the old engine kept the newest row of a key
    (9, "sys/token/id/bbb", {"policies": ["dev"]}),
    (7, "sys/policy/dev", "path"),
]
OLD_STATE = {
    "core/mounts": {"token/": {"type": "token"}},
    "sys/token/id/aaa": {"policies": ["default"]},
    "sys/token/id/bbb": {"policies": ["dev"]},
    "auth/u1/role/r": {"bound_audiences": ["x"]},
    "sys/policy/dev": "path",
}


async def _state(store: SQLiteStorage, keys: Iterable[str]) -> dict[str, Any]:
    return {k: await store.get(k) for k in keys}


async def test_old_file_is_migrated_on_open(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    _write_old_file(path, OLD_ROWS)
    store = await SQLiteStorage.open(path)
    try:
        assert store.migrated
        assert await _state(store, OLD_STATE) == OLD_STATE
        assert await store.list("") == ["auth/", "core/", "sys/"]
        assert await store.list("sys/token/id/") == ["aaa", "bbb"]
        await store.put("sys/token/id/ccc", 3)
        await store.put("sys/token/id/aaa", "new")
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM kv").fetchone() == (6,)  # one row per key
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    store = await SQLiteStorage.open(path)
    try:
        assert not store.migrated  # done once
        expected = {**OLD_STATE, "sys/token/id/ccc": 3, "sys/token/id/aaa": "new"}
        assert await _state(store, expected) == expected
    finally:
        await store.close()


async def test_failed_migration_leaves_the_old_file_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All or nothing: a failure after the duplicates were dropped undoes that too."""
    path = str(tmp_path / "old.db")
    _write_old_file(path, OLD_ROWS)
    monkeypatch.setattr(sqlite_schema, "INDEX", "CREATE UNIQUE INDEX kv_key ON kv (no_such_column)")
    with pytest.raises(sqlite3.OperationalError, match="no_such_column"):
        await SQLiteStorage.open(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT seq, key FROM kv ORDER BY seq").fetchall() == [
            (seq, key) for seq, key, _ in sorted(OLD_ROWS)]
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == []
    conn.close()
    monkeypatch.undo()
    store = await SQLiteStorage.open(path)  # the lock was released; the next start migrates
    try:
        assert store.migrated
        assert await _state(store, OLD_STATE) == OLD_STATE
    finally:
        await store.close()


PREFIX_END_CASES = [
    ("", None, "empty"),
    ("a/", "a0", "folder"),
    ("sys/token/id/", "sys/token/id0", "token-folder"),
    ("a\U0010ffff", "b", "max-code-point"),
    ("\U0010ffff\U0010ffff", None, "only-max-code-points"),
    ("a\ud7ff", "a\ue000", "skips-surrogates"),
]


@pytest.mark.parametrize(("prefix", "end"), [c[:2] for c in PREFIX_END_CASES],
                         ids=[c[2] for c in PREFIX_END_CASES])
def test_prefix_end(prefix: str, end: str | None) -> None:
    assert prefix_end(prefix) == end


async def test_list_and_delete_prefix_match_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random keys (folders, odd characters, long folders read in several chunks): list,
    list_page and delete_prefix agree with ``list_children`` and a prefix filter."""
    monkeypatch.setattr(sqlite_engine, "LIST_CHUNK", 3)
    rnd = random.Random(7)
    parts = ["a", "b", "a/", "/", "b/c", "0", ".", "é", "\U0001f680", "\U0010ffff", "x/y/"]
    prefixes = ["", "a", "a/", "b/", "/", "x/y/", "a/b", "b/c", "é", "\U0010ffff", "a0"]
    store = await SQLiteStorage.open(str(tmp_path / "l.db"))
    ref: set[str] = set()
    try:
        for step in range(40):
            keys = {"".join(rnd.choice(parts) for _ in range(rnd.randint(1, 4))) for _ in range(30)}
            await store.put_many([(k, step) for k in keys])
            ref |= keys
            for key in rnd.sample(sorted(ref), 10):
                await store.delete(key)
                ref.discard(key)
            for prefix in prefixes:
                children = list_children(ref, prefix)
                assert await store.list(prefix) == children, prefix
                for after in ("", *rnd.sample(children, min(3, len(children)))):
                    for limit in (1, 4, 100):  # a page of 4 or 100 takes several chunks of 3
                        want = [c for c in children if c > after][:limit]
                        assert await store.list_page(prefix, after, limit) == want, (prefix, after)
        for prefix in prefixes:
            doomed = {k for k in ref if k.startswith(prefix)}
            assert await store.delete_prefix(prefix) == len(doomed), prefix
            ref -= doomed
            assert await store.list("") == list_children(ref, "")
    finally:
        await store.close()


async def test_long_list_lets_other_work_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_engine, "LIST_CHUNK", 10)
    store = await SQLiteStorage.open(str(tmp_path / "l.db"))
    try:
        await store.put_many([(f"t/{i:04d}", i) for i in range(100)])
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        names = await store.list("t/")
        task.cancel()
        assert names == [f"{i:04d}" for i in range(100)]
        assert ticks >= 9  # the loop ran between the chunks
    finally:
        await store.close()


async def test_missing_keys_are_not_cached(tmp_path: Path) -> None:
    store = await SQLiteStorage.open(str(tmp_path / "m.db"))
    try:
        assert await store.get("sys/token/id/nope") is None
        assert "sys/token/id/nope" not in store._cache
        await store.put("sys/token/id/nope", 1)
        assert await store.get("sys/token/id/nope") == 1
    finally:
        await store.close()


def _wal_size(path: str) -> int:
    try:
        return os.path.getsize(path + "-wal")
    except FileNotFoundError:
        return 0


@pytest.fixture
def small_wal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoint rounds every 5 ms and a RESTART at 64 frames (256 KiB)."""
    monkeypatch.setattr(sqlite_checkpoint, "INTERVAL", 0.005)
    monkeypatch.setattr(sqlite_checkpoint, "RESTART_FRAMES", 64)


ROUNDS = 100  # ~10 MB of values


async def test_wal_stays_bounded_under_a_write_storm(tmp_path: Path, small_wal: None) -> None:
    path = str(tmp_path / "w.db")
    store = await SQLiteStorage.open(path)
    value = {"pad": "x" * 1000}
    largest = 0
    try:
        for round_ in range(ROUNDS):
            # 64 concurrent writers, time-ordered and random keys, plus overwrites.
            await asyncio.gather(*(
                store.put(f"sys/token/id/{round_:04d}{i:04d}", value) for i in range(64)),
                *(store.put(f"r/{os.urandom(16).hex()}", value) for i in range(32)),
                *(store.put(f"hot/{i}", {"round": round_}) for i in range(8)))
            largest = max(largest, _wal_size(path))
        assert store.checkpointer.runs["RESTART"] > 0
        assert largest < 3_000_000  # without checkpoints: ~22 MB
    finally:
        await store.close()
    assert _wal_size(path) == 0  # close() moved everything into the database file
    assert store.checkpointer._thread is None
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        tokens = conn.execute("SELECT count(*) FROM kv WHERE key LIKE 'sys/token/id/%'").fetchone()
        assert tokens == (ROUNDS * 64,)
        hot = conn.execute("SELECT value FROM kv WHERE key = 'hot/3'").fetchone()[0]
        assert orjson.loads(hot) == {"round": ROUNDS - 1}
    conn.close()


async def test_idle_store_empties_its_wal(tmp_path: Path, small_wal: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_checkpoint, "IDLE", 0.05)
    path = str(tmp_path / "i.db")
    store = await SQLiteStorage.open(path)
    try:
        await store.put_many([(f"k/{i}", i) for i in range(100)])
        assert _wal_size(path) > 0
        async with asyncio.timeout(20):  # a hang guard, not a timing assertion
            while _wal_size(path) or not store.checkpointer.runs["TRUNCATE"]:
                await asyncio.sleep(0.02)
        assert await store.get("k/99") == 99
        await store.put("k/100", 100)  # writable after the truncation
        assert await store.get("k/100") == 100
    finally:
        await store.close()


def test_restart_checkpoint_waits_for_the_writers_transaction(tmp_path: Path) -> None:
    """A RESTART runs between two transactions of the writer, and the writer's next
    transaction waits for it (nobody sleeps in SQLite's busy handler)."""
    import threading

    path = str(tmp_path / "h.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    ckpt = sqlite_checkpoint.Checkpointer(path)
    ckpt.start()
    try:
        ckpt.begin()  # the writer is in a transaction
        done: list[bool] = []
        runner = threading.Thread(target=lambda: done.append(ckpt._exclusive("RESTART")))
        runner.start()
        runner.join(0.2)
        assert runner.is_alive() and ckpt.runs["RESTART"] == 0  # waiting for end()
        conn.execute("INSERT INTO t VALUES (1)")
        ckpt.end()
        runner.join(20)
        assert done == [True] and ckpt.runs["RESTART"] == 1
        ckpt.begin()  # free again: the next transaction starts at once
        ckpt.end()
    finally:
        ckpt.stop()
        conn.close()


# The child opens an old file and stops inside the conversion's transaction (a progress
# handler that blocks once the transaction is open), so the SIGKILL lands mid-migration.
MIGRATION_CHILD = r"""
import asyncio, sys, time
from server.storage import sqlite_schema
from server.storage.sqlite import SQLiteStorage

real = sqlite_schema.migrate

def stalled(conn):
    def progress():
        if conn.in_transaction:
            print("MIGRATING", flush=True)
            time.sleep(60)
        return 0
    conn.set_progress_handler(progress, 100)
    return real(conn)

sqlite_schema.migrate = stalled
import server.storage.sqlite as engine
engine.migrate = stalled
asyncio.run(SQLiteStorage.open(sys.argv[1]))
"""


async def test_sigkill_mid_migration_leaves_a_file_the_next_start_migrates(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    from pathlib import Path

    path = str(tmp_path / "old.db")
    rows = OLD_ROWS + [(100 + i, f"sys/token/id/t{i:05d}", {"i": i}) for i in range(3000)]
    _write_old_file(path, rows)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", MIGRATION_CHILD, path], cwd=str(repo),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line == b"MIGRATING\n", proc.stderr.read().decode() if proc.stderr else line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(path) as conn:  # still the old layout, every row there
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == []
        assert conn.execute("SELECT count(*) FROM kv").fetchone() == (len(rows),)
    conn.close()
    store = await SQLiteStorage.open(path)
    try:
        assert store.migrated
        assert await _state(store, OLD_STATE) == OLD_STATE
        assert await store.get("sys/token/id/t02999") == {"i": 2999}
        assert len(await store.list("sys/token/id/")) == 3002
    finally:
        await store.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
async def test_writer_and_checkpointer_never_preempt_the_event_loop(tmp_path: Path) -> None:
    """The writer and checkpointer threads run as SCHED_BATCH: their wake-ups wait for the
    event loop's thread instead of preempting it (sqlite_checkpoint.yield_to_event_loop);
    the loop's own thread keeps the default policy."""
    store = await SQLiteStorage.open(str(tmp_path / "s.db"))
    try:
        await store.put("k", 1)  # the checkpointer runs after a commit
        assert store._thread is not None and store.checkpointer._thread is not None
        for thread in (store._thread, store.checkpointer._thread):
            assert thread.native_id is not None
            assert os.sched_getscheduler(thread.native_id) == os.SCHED_BATCH, thread.name
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        await store.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
async def test_the_writer_commits_with_the_default_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Around each COMMIT the writer takes the default policy, so that when the fsync
    returns it answers the batch's callers at once instead of waiting for the event loop's
    turn (a group commit of 2.1-2.6 ms on one core became 0.6 ms); it is SCHED_BATCH again
    afterwards, so queueing a write still does not preempt the loop. A failing COMMIT
    restores the policy too."""
    from server.storage import sqlite_batch
    from server.storage.sqlite_checkpoint import wake_promptly as real

    seen: list[tuple[bool, int, int]] = []

    def spy(on: bool) -> bool:
        changed = real(on)
        seen.append((on, os.sched_getscheduler(0), threading.get_native_id()))
        return changed

    monkeypatch.setattr(sqlite_batch, "wake_promptly", spy)
    store = await SQLiteStorage.open(str(tmp_path / "s.db"))
    try:
        assert store.prompt_commit  # the writer runs as SCHED_BATCH
        seen.clear()
        await store.put("k", 1)
        assert store._thread is not None
        writer = store._thread.native_id
        assert writer is not None
        assert seen == [(True, os.SCHED_OTHER, writer), (False, os.SCHED_BATCH, writer)]
        assert os.sched_getscheduler(writer) == os.SCHED_BATCH
        # a COMMIT that fails (the disk full, say) leaves the writer SCHED_BATCH as well
        seen.clear()
        original = sqlite_batch.Batch._commit

        def failing(self: sqlite_batch.Batch) -> None:
            self.conn.execute("ROLLBACK")  # the COMMIT below then fails: no transaction
            original(self)

        monkeypatch.setattr(sqlite_batch.Batch, "_commit", failing)
        with pytest.raises(sqlite3.Error):
            await store.put("k", 2)
        assert [on for on, _, _ in seen] == [True, False]
        assert os.sched_getscheduler(writer) == os.SCHED_BATCH
        monkeypatch.setattr(sqlite_batch.Batch, "_commit", original)
        assert await store.get("k") == 1
    finally:
        await store.close()
