"""Storage micro-benchmark: concurrent puts/s (64 writers), reads/s and event-loop cost per op.

Run: ``taskset -c 1 python -m bench.storage_bench [--ops 20000] [--writers 64] [--postgres]
[--uvloop]`` (pinned to one core, like the login benchmark).
``--costs`` prints the SQLite engine's CPU per operation instead: writer-thread and
event-loop CPU per put for time-ordered keys (token selectors) and random keys (HMACs),
at a growing table, and event-loop CPU per get (cached, read from the file, missing).
``--memory N`` puts N time-ordered keys (batches of 1000) and prints the RSS growth.
``--latency S`` runs simulated service logins for S seconds per key pattern and prints
login latency percentiles and CPU per login. The "login simulation" runs
64 concurrent fake logins (117 us of CPU each, the verify-only ceiling of ~8.5k/s, then
the two puts a service-token login makes) and reports throughput against the same loop
without storage.
``--postgres`` starts a throw-away server with ``tests.pg`` (its fsync is off, so the
PostgreSQL numbers show client/pool overhead, not disk). "loop us/put" is the CPU time the
event-loop thread spends per put (what a login pays on its core); the SQLite writer
thread's time is reported separately as total process CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import secrets
import sqlite3
import tempfile
import time
from typing import Any

import orjson

from server.storage import open_storage

VALUE = {"policies": ["default", "dev"], "ttl": 3600, "meta": {"role": "r", "sub": "user-1"},
         "accessor": "a" * 24, "creation_time": 1764000000}


def _keys(ops: int, writers: int) -> list[list[str]]:
    """Per writer, random keys shaped like token hashes (what a login storm writes)."""
    per = ops // writers
    return [[f"sys/token/id/{secrets.token_hex(32)}" for _ in range(per)] for _ in range(writers)]


async def _puts(store: Any, keys: list[list[str]]) -> dict[str, float]:
    async def writer(mine: list[str]) -> None:
        for key in mine:
            await store.put(key, VALUE)

    cpu0, loop0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
    await asyncio.gather(*(writer(mine) for mine in keys))
    wall = time.perf_counter() - t0
    done = sum(map(len, keys))
    return {
        "puts/s": done / wall,
        "loop us/put": (time.thread_time() - loop0) / done * 1e6,
        "cpu us/put": (time.process_time() - cpu0) / done * 1e6,
        "puts/commit": done / getattr(store, "commits", done) if getattr(store, "commits", 0)
        else 1.0,
    }


async def _reads(store: Any, keys: list[list[str]]) -> dict[str, float]:
    flat = [k for mine in keys for k in mine]
    t0 = time.perf_counter()
    for key in flat:
        assert await store.get(key) is not None
    wall = time.perf_counter() - t0
    return {"gets/s": len(flat) / wall, "us/get": wall / len(flat) * 1e6}


def _layout_reference(ops: int, batch: int = 16) -> str:
    """Writer CPU per put, raw sqlite3, FULL sync, batches of 16, three layouts, time-ordered
    and random keys (the engine uses "seq rowid + unique key")."""
    out = []
    layouts = {
        "key PRIMARY KEY": "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID",
        "seq rowid + unique key": "CREATE TABLE kv (seq INTEGER PRIMARY KEY, key TEXT UNIQUE, value BLOB)",
        "seq rowid, no key index": "CREATE TABLE kv (seq INTEGER PRIMARY KEY, key TEXT, value BLOB)",
    }
    blob = orjson.dumps(TOKEN_VALUE)
    for kind in ("ordered", "random"):
        keys = [_key(kind) for _ in range(ops)]
        for name, schema in layouts.items():
            path = os.path.join(tempfile.mkdtemp(prefix="authmount-bench-"), "raw.db")
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA cache_size = -8192")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(schema)
            t0 = time.thread_time()
            for start in range(0, ops, batch):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO kv (key, value) VALUES (?, ?)",
                                 [(k, blob) for k in keys[start : start + batch]])
                conn.execute("COMMIT")
            out.append(f"{kind} {name} {(time.thread_time() - t0) / ops * 1e6:.1f}")
            conn.close()
    return "reference: raw sqlite writer cpu us/put, " + ", ".join(out)


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
    keys = _keys(ops, writers)
    try:
        put = await _puts(store, keys)
        read = await _reads(store, keys)
    finally:
        await store.close()
    cells = {**put, **read}
    print(f"{name:16s} " + "  ".join(f"{k} {v:9.1f}" for k, v in cells.items()), flush=True)


_ORDER = itertools.count(time.time_ns() // 1000)


def _key(kind: str) -> str:
    """A token key: time-ordered (fixed-width selector, creation order) or random (HMAC)."""
    if kind == "ordered":
        return f"sys/token/id/{next(_ORDER):014x}{secrets.token_hex(9)}"
    return f"sys/token/id/{secrets.token_hex(32)}"


def _thread_cpu(thread: Any) -> float:
    """CPU seconds used so far by another thread of this process."""
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


async def _put_costs(store: Any, kind: str, total: int, step: int, writers: int = 16) -> list[str]:
    """Writer and loop CPU per put over ``step``-sized slices of ``total`` puts."""
    out = []
    for done in range(0, total, step):
        keys = [_key(kind) for _ in range(step)]
        it = iter(keys)

        async def writer() -> None:
            for key in it:
                await store.put(key, VALUE)

        ckpt = getattr(getattr(store, "checkpointer", None), "_thread", None)
        w0, l0, c0 = _thread_cpu(store._thread), time.thread_time(), store.commits
        k0 = _thread_cpu(ckpt) if ckpt else 0.0
        await asyncio.gather(*(writer() for _ in range(writers)))
        w, lp = _thread_cpu(store._thread) - w0, time.thread_time() - l0
        k = _thread_cpu(ckpt) - k0 if ckpt else 0.0
        out.append(f"{done + step:>7d} keys: writer {w / step * 1e6:5.1f} checkpointer "
                   f"{k / step * 1e6:4.1f} loop {lp / step * 1e6:4.1f} "
                   f"({step / max(store.commits - c0, 1):.0f}/commit)")
    return out


async def _get_costs(store: Any, keys: list[str], label: str) -> str:
    t0 = time.thread_time()
    for key in keys:
        await store.get(key)
    return f"{label} {(time.thread_time() - t0) / len(keys) * 1e6:.2f}"


async def costs(args: argparse.Namespace) -> None:
    """CPU per put (writer thread, event loop) and per get (event loop), SQLite FULL."""
    tmp = tempfile.mkdtemp(prefix="authmount-bench-")
    print(f"sqlite {sqlite3.sqlite_version}, 16 writers, values {len(orjson.dumps(VALUE))} bytes; "
          "CPU us per put, cumulative table size")
    for kind in ("ordered", "random"):
        store = await open_storage({"type": "sqlite", "path": os.path.join(tmp, f"{kind}.db")})
        try:
            for line in await _put_costs(store, kind, args.ops, args.ops // 4):
                print(f"  {kind:8s} {line}", flush=True)
        finally:
            await store.close()
    path = os.path.join(tmp, "gets.db")
    for entries in (32768, 0):
        store = await open_storage({"type": "sqlite", "path": path, "sqlite_cache_entries": entries})
        try:
            keys = [_key("ordered") for _ in range(20000)]
            for start in range(0, len(keys), 1000):
                await store.put_many([(k, VALUE) for k in keys[start : start + 1000]])
            sample = keys[-10000:]  # recently written: in the cache if there is one
            cells = [await _get_costs(store, sample, "hit (cached)" if entries else "hit (file)")]
            if not entries:
                cells.append(await _get_costs(store, [_key("random") for _ in range(10000)], "miss"))
                t0 = time.thread_time()
                for _ in range(20):
                    names = await store.list("sys/token/id/")
                cells.append(f"list of {len(names)} keys {(time.thread_time() - t0) / 20 * 1e3:.1f} ms")
            print("  loop us per get: " + ", ".join(cells), flush=True)
        finally:
            await store.close()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


async def memory(args: argparse.Namespace) -> None:
    """RSS growth while ``args.memory`` time-ordered keys are put in batches of 1000."""
    path = os.path.join(tempfile.mkdtemp(prefix="authmount-bench-"), "mem.db")
    store = await open_storage({"type": "sqlite", "path": path})
    try:
        for start in range(0, 20000, 1000):  # warm-up: fill caches and statement caches
            await store.put_many([(_key("ordered"), VALUE) for _ in range(1000)])
        gc.collect()
        base, t0 = _rss_mb(), time.perf_counter()
        marks = []
        for start in range(0, args.memory, 1000):
            await store.put_many([(_key("ordered"), VALUE) for _ in range(1000)])
            if (start + 1000) % (args.memory // 4) == 0:
                gc.collect()
                marks.append(f"{start + 1000}: +{_rss_mb() - base:.1f} MB")
        print(f"RSS after warm-up {base:.1f} MB; growth at " + ", ".join(marks)
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        await store.close()


TOKEN_VALUE = {**VALUE, "meta": {"role": "r", "sub": "user-1", "pad": "p" * 520}}  # ~700 B


async def latency(args: argparse.Namespace) -> None:
    """Simulated service logins on one loop (117 us of CPU, then the token writes; 16
    concurrent clients) for ``args.latency`` seconds each: login latency percentiles
    (wall) and process CPU per login, for one time-ordered row per login and for two
    random rows per login (today's token layout)."""
    from server.storage import sqlite_batch

    batches: list[float] = []  # wall time of each group-commit transaction (writer thread)
    run = sqlite_batch.Batch.run

    def timed_run(self: Any, batch: list[Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return run(self, batch)
        finally:
            batches.append(time.perf_counter() - t0)

    sqlite_batch.Batch.run = timed_run  # type: ignore[method-assign]
    tmp = tempfile.mkdtemp(prefix="authmount-bench-")
    for kind, rows in (("ordered", 1), ("random", 2)):
        store = await open_storage({"type": "sqlite", "path": os.path.join(tmp, f"{kind}.db")})
        lat: list[float] = []
        batches.clear()
        stop = time.perf_counter() + args.latency

        async def client() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                _busy(117)
                await asyncio.sleep(0)
                await store.put_many([(_key(kind), TOKEN_VALUE) for _ in range(rows)])
                lat.append(time.perf_counter() - t0)

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(16)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await store.close()
        lat.sort()
        batches.sort()
        pct = {p: lat[min(len(lat) - 1, int(len(lat) * p / 100))] * 1e3 for p in (50, 99, 99.9)}
        print(f"{kind:8s} x{rows}: {len(lat) / wall:6.0f} logins/s, cpu {cpu / len(lat) * 1e6:5.0f} us/login, "
              f"ms p50 {pct[50]:5.2f} p99 {pct[99]:6.2f} p99.9 {pct[99.9]:6.2f} max {lat[-1] * 1e3:6.1f}; "
              f"commits {len(batches)}, ms p50 {batches[len(batches) // 2] * 1e3:.2f} "
              f"p99 {batches[int(len(batches) * 0.99)] * 1e3:.2f} max {batches[-1] * 1e3:.1f}, "
              f"{sum(b > 0.01 for b in batches)} over 10 ms", flush=True)


def _busy(us: float) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


async def _login_sim(cfg: dict[str, Any] | None, logins: int, concurrency: int = 64) -> float:
    """Logins/s of fake logins (CPU work + two token puts) on one event loop."""
    store = await open_storage(cfg) if cfg else None
    started = 0

    async def client() -> None:
        nonlocal started
        while started < logins:
            started += 1
            _busy(117)
            await asyncio.sleep(0)  # a request boundary
            if store is not None:
                await store.put(f"sys/token/accessor/{secrets.token_hex(32)}", {"id_hash": "x"})
                await store.put(f"sys/token/id/{secrets.token_hex(32)}", VALUE)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    rate = logins / (time.perf_counter() - t0)
    if store is not None:
        await store.close()
    return rate


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
    path = os.path.join(tmp, "bench-nocache.db")
    await _run_engine("sqlite no cache", {"type": "sqlite", "path": path,
                                          "sqlite_cache_entries": 0}, args.ops, args.writers)
    if args.postgres:
        from tests.pg import start_postgres

        server = start_postgres()
        try:
            dsn = server.create_database("bench")
            await _run_engine("postgres", {"type": "postgres", "dsn": dsn, "pool_size": 10},
                              args.ops // 4, args.writers)
        finally:
            server.stop()
    ceiling = await _login_sim(None, args.ops // 4)
    line = [f"login simulation: no storage {ceiling:.0f}/s"]
    for name, cfg in [("memory", {"type": "memory"}),
                      ("sqlite FULL", {"type": "sqlite", "path": os.path.join(tmp, "sim.db")}),
                      ("sqlite NORMAL", {"type": "sqlite", "path": os.path.join(tmp, "sim2.db"),
                                         "sqlite_synchronous": "NORMAL"})]:
        rate = await _login_sim(cfg, args.ops // 4)
        line.append(f"{name} {rate:.0f}/s ({rate / ceiling:.0%})")
    print(", ".join(line))
    print(f"reference: dict cache + orjson.loads {_dict_cache_reference(args.ops):.2f} us/get")
    print(_layout_reference(args.ops))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ops", type=int, default=20000)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--costs", action="store_true", help="SQLite CPU per operation")
    parser.add_argument("--memory", type=int, default=0, help="RSS growth over N puts")
    parser.add_argument("--latency", type=float, default=0, help="seconds of simulated logins")
    ns = parser.parse_args()
    if ns.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(costs(ns) if ns.costs else memory(ns) if ns.memory
                else latency(ns) if ns.latency else main(ns))
