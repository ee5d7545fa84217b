"""SQLite crash safety: SIGKILL a process mid write-storm; every acknowledged write survives."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from server.storage.sqlite import SQLiteStorage

REPO = Path(__file__).resolve().parents[2]

# The child writes forever with 64 concurrent writers and prints one line per write only
# after the write was acknowledged (i.e. committed): "P key", "U key n" or "D key";
# "I key" is printed before a delete is issued (it may commit without being acknowledged).
CHILD = r"""
import asyncio, sys
from server.storage.sqlite import SQLiteStorage

async def writer(store, t):
    i = 0
    while True:
        i += 1
        key = f"w{t}/{i}"
        await store.put(key, {"t": t, "i": i, "pad": "é" * 50})
        print("P", key, flush=True)
        if i % 5 == 0:
            n = await store.update(f"ctr/{t}", lambda old: (old or 0) + 1)
            print("U", f"ctr/{t}", n, flush=True)
        if i % 7 == 0:
            print("I", f"w{t}/{i - 3}", flush=True)  # intent: may be committed, unacked
            await store.delete(f"w{t}/{i - 3}")
            print("D", f"w{t}/{i - 3}", flush=True)

async def main():
    store = await SQLiteStorage.open(sys.argv[1], synchronous=sys.argv[2])
    print("READY", flush=True)
    await asyncio.gather(*(writer(store, t) for t in range(64)))

asyncio.run(main())
"""


def _run_and_kill(path: str, synchronous: str, acks_before_kill: int) -> list[list[str]]:
    """Run the child until it acknowledged ``acks_before_kill`` writes, SIGKILL it.

    Returns every complete line it printed (all of them acknowledged writes).
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, synchronous],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(REPO),
    )
    assert proc.stdout is not None
    lines: list[list[str]] = []
    try:
        first = proc.stdout.readline()
        assert first == b"READY\n", proc.stderr.read().decode() if proc.stderr else first
        while len(lines) < acks_before_kill:
            line = proc.stdout.readline()
            assert line, "child exited early"
            lines.append(line.decode().split())
        os.kill(proc.pid, signal.SIGKILL)
        # Lines still in the pipe were printed before the kill: they count as acknowledged.
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    for raw in rest.split(b"\n")[:-1]:  # the last piece may be a torn line
        lines.append(raw.decode().split())
    return lines


@pytest.mark.parametrize(
    ("synchronous", "acks"), [("FULL", 1500), ("NORMAL", 4000)], ids=["full", "normal"]
)
async def test_sigkill_mid_storm_keeps_acknowledged_writes(
    tmp_path: Path, synchronous: str, acks: int
) -> None:
    path = str(tmp_path / "crash.db")
    lines = await asyncio.to_thread(_run_and_kill, path, synchronous, acks)
    puts = {ln[1] for ln in lines if ln[0] == "P"}
    deletes = {ln[1] for ln in lines if ln[0] == "D"}
    intents = {ln[1] for ln in lines if ln[0] == "I"}
    counters: dict[str, int] = {}
    for ln in lines:
        if ln[0] == "U":
            counters[ln[1]] = max(counters.get(ln[1], 0), int(ln[2]))
    assert len(puts) >= acks // 2 and counters and deletes

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()

    store = await SQLiteStorage.open(path)
    try:
        missing = [k for k in sorted(puts - intents) if await store.get(k) is None]
        assert missing == []
        resurrected = [k for k in sorted(deletes) if await store.get(k) is not None]
        assert resurrected == []
        for key, acked in counters.items():
            value = await store.get(key)
            assert value is not None and value >= acked, key
        sample = sorted(puts - intents)[0]
        t, i = sample[1:].split("/")
        assert await store.get(sample) == {"t": int(t), "i": int(i), "pad": "é" * 50}
        # The reopened store is writable and keeps working.
        await store.put("after/crash", True)
        assert await store.get("after/crash") is True
    finally:
        await store.close()
