"""Storage micro-benchmark: concurrent puts/s (64 writers), reads/s and event-loop cost per op.

Run: ``python -m bench.storage_bench [--ops 20000] [--writers 64] [--postgres] [--uvloop]``.
``--postgres`` starts a throw-away server with ``tests.pg`` (its fsync is off, so the
PostgreSQL numbers show client/pool overhead, not disk). "loop us/put" is the CPU time the
event-loop thread spends per put (what a login pays on its core); the SQLite writer
thread's time is reported separately as total process CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from typing import Any

import orjson

from server.storage import open_storage

VALUE = {"policies": ["default", "dev"], "ttl": 3600, "meta": {"role": "r", "sub": "user-1"},
         "accessor": "a" * 24, "creation_time": 1764000000}


async def _puts(store: Any, ops: int, writers: int) -> dict[str, float]:
    per = ops // writers

    async def writer(w: int) -> None:
        for i in range(per):
            await store.put(f"sys/token/id/{w}-{i}", VALUE)

    cpu0, loop0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    wall = time.perf_counter() - t0
    done = per * writers
    return {
        "puts/s": done / wall,
        "loop us/put": (time.thread_time() - loop0) / done * 1e6,
        "cpu us/put": (time.process_time() - cpu0) / done * 1e6,
        "puts/commit": done / getattr(store, "commits", done) if getattr(store, "commits", 0)
        else 1.0,
    }


async def _reads(store: Any, ops: int, writers: int) -> dict[str, float]:
    per = ops // writers
    keys = [f"sys/token/id/{w}-{i}" for w in range(writers) for i in range(per)]
    t0 = time.perf_counter()
    for key in keys:
        assert await store.get(key) is not None
    wall = time.perf_counter() - t0
    return {"gets/s": len(keys) / wall, "us/get": wall / len(keys) * 1e6}


def _dict_cache_reference(ops: int) -> float:
    """us per read for the alternative design: a dict of JSON bytes + orjson.loads."""
    cache = {f"sys/token/id/{i}": orjson.dumps(VALUE) for i in range(ops)}
    keys = list(cache)
    t0 = time.perf_counter()
    for key in keys:
        orjson.loads(cache[key])
    return (time.perf_counter() - t0) / len(keys) * 1e6


async def _run_engine(name: str, cfg: dict[str, Any], ops: int, writers: int) -> None:
    store = await open_storage(cfg)
    try:
        put = await _puts(store, ops, writers)
        read = await _reads(store, ops, writers)
    finally:
        await store.close()
    cells = {**put, **read}
    print(f"{name:16s} " + "  ".join(f"{k} {v:9.1f}" for k, v in cells.items()), flush=True)


async def main(args: argparse.Namespace) -> None:
    """Run every engine and print one line each."""
    tmp = tempfile.mkdtemp(prefix="authmount-bench-")
    print(f"sqlite {sqlite3.sqlite_version}, {args.ops} ops, {args.writers} writers, "
          f"loop {type(asyncio.get_running_loop()).__name__}, cpus {os.cpu_count()}")
    await _run_engine("memory", {"type": "memory"}, args.ops, args.writers)
    for sync in ("FULL", "NORMAL"):
        path = os.path.join(tmp, f"bench-{sync}.db")
        await _run_engine(f"sqlite {sync}", {"type": "sqlite", "path": path,
                                             "sqlite_synchronous": sync}, args.ops, args.writers)
    if args.postgres:
        from tests.pg import start_postgres

        server = start_postgres()
        try:
            dsn = server.create_database("bench")
            await _run_engine("postgres", {"type": "postgres", "dsn": dsn, "pool_size": 10},
                              args.ops // 4, args.writers)
        finally:
            server.stop()
    print(f"reference: dict cache + orjson.loads {_dict_cache_reference(args.ops):.2f} us/get")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    ns = parser.parse_args()
    if ns.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(main(ns))
