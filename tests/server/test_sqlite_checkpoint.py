"""The SQLite checkpointer reports failing checkpoints (a WAL never checkpointed grows
without bound) and says when they run again."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import structlog

from server.storage import sqlite_checkpoint


class _FailingConnection:
    """A checkpointer connection whose first ``failures`` statements raise (a locked or
    unreadable WAL), then passes through to a real connection."""

    def __init__(self, real: sqlite3.Connection, failures: int) -> None:
        self.real, self.failures = real, failures

    def execute(self, sql: str) -> Any:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        return self.real.execute(sql)


@pytest.mark.parametrize(
    ("failures", "log_every", "logged_at"),
    [
        (0, 3, []),
        (1, 3, [1]),
        (7, 3, [1, 4, 7]),  # the first of the streak, then every LOG_EVERY
        (5, 100, [1]),
    ],
)
def test_failed_checkpoints_are_counted_logged_and_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: int, log_every: int, logged_at: list[int]
) -> None:
    monkeypatch.setattr(sqlite_checkpoint, "LOG_EVERY", log_every)
    path = str(tmp_path / "f.db")
    real = sqlite3.connect(path, isolation_level=None)
    real.execute("PRAGMA journal_mode = WAL")
    ckpt = sqlite_checkpoint.Checkpointer(path)
    ckpt._conn = _FailingConnection(real, failures)  # type: ignore[assignment]
    try:
        with structlog.testing.capture_logs() as logs:
            results = [ckpt._checkpoint("PASSIVE") for _ in range(failures + 1)]
    finally:
        real.close()
    assert [done for done, _ in results] == [False] * failures + [True]
    assert ckpt.errors == failures and ckpt.runs["PASSIVE"] == 1
    failed = [e for e in logs if e["event"] == "sqlite_checkpoint_failed"]
    assert [e["failures_in_a_row"] for e in failed] == logged_at
    assert all(e["log_level"] == "warning" and e["mode"] == "PASSIVE" and "locked" in e["error"] for e in failed)
    recovered = [e for e in logs if e["event"] == "sqlite_checkpoint_recovered"]
    assert [e["failures_in_a_row"] for e in recovered] == ([failures] if failures else [])

