"""CPU, rows and bytes per service login in ``TokenStore`` alone (no HTTP, no JWT).

Run: ``.venv/bin/python bench/token_store_cost.py -n 20000 --rounds 5``. For each storage
(in-memory, and a fresh SQLite file with the engine's defaults) it issues ``n`` service
tokens, 16 at a time (so SQLite group-commits as under load), then authenticates each one
``--uses`` times, and prints per call:

- loop CPU: ``time.thread_time`` of the event-loop thread (what a login costs the loop);
- process CPU: ``time.process_time`` (adds the SQLite writer thread);
- rows and bytes the logins left in storage (key + stored JSON value).

Rounds are interleaved runs; the median and the spread (min-max) are printed.
``--identity none|plain|groups`` attaches the identity store (entities made at login; every
login is the same identity, the common case) and, with ``groups``, an external group whose
alias matches the login's IdP group: each use then also computes the token's identity
policies (``TokenStore.policies_of``, what every ACL check judges). Rows and bytes then
count the identity rows too.
``--sweep N`` instead fills a SQLite file with N tokens (none due) and prints the loop CPU
of ``sweep()`` (reads every token) and, where the store has it, ``sweep(due_only=True)``
(what the periodic sweeper runs), and the peak Python heap (tracemalloc) of one more run
of each: what a sweep adds to the server's RSS while it runs. ``--heap N`` prints the Python heap (tracemalloc) that
N more SQLite logins leave allocated (the engine's key index, caches), per login.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``server`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from plugin.framework import Alias, Auth
from plugin.storage import InMemoryStorage
from server.identity.store import Group, GroupAlias, IdentityStore, MountRef
from server.tokens.entry import MountInfo
from server.tokens.store import TokenStore

MOUNT = MountInfo("auth/jwt/", "auth_jwt_1a2b3c4d", 3600, 7200)
CONCURRENCY = 16


def _auth() -> Auth:
    return Auth(policies=["dev"], alias=Alias(name="alice"), metadata={"role": "r1"}, internal_data={"role": "r1"},
                group_aliases=["ops-idp", "other"])


async def _identity(storage: Any, mode: str) -> IdentityStore | None:
    """The identity store of ``--identity`` (None: none), with a granting group for ``groups``."""
    if mode == "none":
        return None
    identity = IdentityStore(storage, mounts=lambda accessor: MountRef(accessor, MOUNT.path, "jwt"))
    await identity.load()
    if mode == "groups":
        await identity.write_group(Group(id="g-ops", name="ops", type="external", policies=["ops"]))
        await identity.write_alias(GroupAlias(id="a-ops", name="ops-idp", mount_accessor=MOUNT.accessor,
                                              canonical_id="g-ops"), created=True)
    return identity


def _memory_rows(storage: InMemoryStorage, prefix: str) -> tuple[int, int]:
    items = [(k, v) for k, v in storage.dump().items() if k.startswith(prefix)]
    return len(items), sum(len(k) + len(orjson.dumps(v)) for k, v in items)


def _sqlite_rows(path: Path, prefix: str) -> tuple[int, int]:
    db = sqlite3.connect(path)
    try:
        n, size = db.execute(
            "SELECT count(*), coalesce(sum(length(key) + length(value)), 0) FROM kv WHERE key LIKE ?", (prefix + "%",)
        ).fetchone()
    finally:
        db.close()
    return int(n), int(size)


async def _one_round(kind: str, n: int, uses: int, identity_mode: str = "none") -> dict[str, float]:
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "tokens.db"
    if kind == "memory":
        storage: Any = InMemoryStorage()
    else:
        from server.storage import open_storage

        storage = await open_storage({"type": "sqlite", "path": str(path)})
    try:
        store = TokenStore(storage, identity=await _identity(storage, identity_mode))
        await store.start(sweep=False)
        auth = _auth()
        # Warm up (caches, code paths), then measure from an empty token table.
        for _ in range(64):
            await store.issue(auth, mount=MOUNT)
        base_rows = _memory_rows(storage, "sys/token/") if kind == "memory" else None
        policies_of = getattr(store, "policies_of", None)
        raws: list[str] = []
        t_loop, t_proc, t_wall = time.thread_time(), time.process_time(), time.perf_counter()
        for _ in range(n // CONCURRENCY):
            blocks = await asyncio.gather(*(store.issue(auth, mount=MOUNT) for _ in range(CONCURRENCY)))
            raws.extend(b[0]["client_token"] for b in blocks)
        issued = len(raws)
        issue = (time.thread_time() - t_loop, time.process_time() - t_proc, time.perf_counter() - t_wall)
        t_loop, t_proc = time.thread_time(), time.process_time()
        for _ in range(uses):
            for raw in raws:
                entry = await store.authenticate(raw, "127.0.0.1")
                if policies_of is not None:
                    await policies_of(entry)
        auth_cpu = (time.thread_time() - t_loop, time.process_time() - t_proc)
        await store.close()
    finally:
        if kind != "memory":
            await storage.close()
    if kind == "memory":
        rows, size = _memory_rows(storage, "sys/token/")
        assert base_rows is not None
        rows, size = rows - base_rows[0], size - base_rows[1]
    else:  # the file also holds the warm-up's logins: count them in
        rows, size = _sqlite_rows(path, "sys/token/")
        rows, size = rows * issued // (issued + 64), size * issued // (issued + 64)
    tmp.cleanup()
    calls = issued * uses
    return {
        "issue_loop_us": issue[0] / issued * 1e6,
        "issue_proc_us": issue[1] / issued * 1e6,
        "issue_wall_us": issue[2] / issued * 1e6,
        "auth_loop_us": auth_cpu[0] / calls * 1e6,
        "auth_proc_us": auth_cpu[1] / calls * 1e6,
        "rows_per_login": rows / issued,
        "bytes_per_login": size / issued,
    }


async def _sweep_peak(store: TokenStore, kwargs: dict[str, bool]) -> int:
    """Bytes the Python heap grew by at most during one sweep (tracemalloc peak)."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await store.sweep(**kwargs)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


async def _sweep_cost(n: int, rounds: int) -> None:
    from server.storage import open_storage

    with tempfile.TemporaryDirectory() as tmp:
        storage = await open_storage({"type": "sqlite", "path": str(Path(tmp) / "sweep.db")})
        try:
            store = TokenStore(storage)
            await store.start(sweep=False)
            auth = _auth()
            for _ in range(n // 64):
                await asyncio.gather(*(store.issue(auth, mount=MOUNT) for _ in range(64)))
            modes: list[tuple[str, dict[str, bool]]] = [("sweep()", {})]
            if "due_only" in inspect.signature(store.sweep).parameters:
                modes.append(("sweep(due_only=True)", {"due_only": True}))
            for name, kwargs in modes:
                cpu = []
                for _ in range(rounds):
                    t0 = time.thread_time()
                    await store.sweep(**kwargs)
                    cpu.append(time.thread_time() - t0)
                cpu.sort()
                peak = await _sweep_peak(store, kwargs)
                print(f"{name:22} {n} tokens: loop CPU median {statistics.median(cpu) * 1e3:8.1f} ms "
                      f"(spread {cpu[0] * 1e3:.1f}-{cpu[-1] * 1e3:.1f}), "
                      f"{statistics.median(cpu) / n * 1e6:.3f} us per token; "
                      f"peak heap {peak / 2**20:.2f} MiB")
        finally:
            await storage.close()


async def _heap_cost(n: int) -> None:
    import gc
    import tracemalloc

    from server.storage import open_storage

    with tempfile.TemporaryDirectory() as tmp:
        storage = await open_storage({"type": "sqlite", "path": str(Path(tmp) / "heap.db")})
        try:
            store = TokenStore(storage)
            await store.start(sweep=False)
            auth = _auth()
            for _ in range(5000 // CONCURRENCY):  # fill the bounded caches first
                await asyncio.gather(*(store.issue(auth, mount=MOUNT) for _ in range(CONCURRENCY)))
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(n // CONCURRENCY):
                await asyncio.gather(*(store.issue(auth, mount=MOUNT) for _ in range(CONCURRENCY)))
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            print(f"Python heap kept per SQLite login: {grown / n:.0f} bytes over {n} logins")
        finally:
            await storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=20000, help="logins per round (default 20000)")
    parser.add_argument("--uses", type=int, default=2, help="authenticate() calls per token (default 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--storage", default="memory,sqlite", help="comma list: memory, sqlite")
    parser.add_argument("--sweep", type=int, default=0, metavar="N", help="measure the sweep over N tokens instead")
    parser.add_argument("--heap", type=int, default=0, metavar="N", help="measure the heap N logins keep instead")
    parser.add_argument("--identity", default="none", choices=["none", "plain", "groups"],
                        help="attach the identity store (plain), with a group granting a policy (groups)")
    args = parser.parse_args()
    if args.heap:
        asyncio.run(_heap_cost(args.heap))
        return
    if args.sweep:
        asyncio.run(_sweep_cost(args.sweep, args.rounds))
        return
    kinds = args.storage.split(",")
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds[r % len(kinds):] + kinds[: r % len(kinds)]:
            results[kind].append(asyncio.run(_one_round(kind, args.n, args.uses, args.identity)))
    for kind, runs in results.items():
        print(f"## {kind}: {args.n} logins x {args.rounds} rounds, {args.uses} authenticate() per token, "
              f"identity {args.identity}")
        for name in runs[0]:
            values = sorted(run[name] for run in runs)
            print(f"  {name:16} median {statistics.median(values):9.2f}   spread {values[0]:.2f}-{values[-1]:.2f}")


if __name__ == "__main__":
    main()
