"""What a revocation of many tokens costs.

N service tokens on a SQLite file (half made by ``auth/token/create``, half by
``create-orphan``), then ``sys/leases/revoke-prefix/auth/token/create`` while a client looks
itself up every 5 ms. Prints the creation time, the revocation's time and the lookups' latency
during it. In process, behind aiohttp's test server (real HTTP over loopback).

``--expired``: instead, the token store's clock moves 2 hours on (every token made has
expired: a backlog after downtime) and a full sweep removes them all, what
``auth/token/tidy`` and the periodic sweeper do.

Run: ``.venv/bin/python bench/revoke_many.py 20000`` (``--expired``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp.test_utils import TestClient  # noqa: E402

from server.app import create_app  # noqa: E402
from server.appkeys import TOKENS  # noqa: E402
from server.http.listverb import make_test_server  # noqa: E402
from server.settings import Settings, StorageSettings  # noqa: E402

ROOT = {"X-Vault-Token": "root"}


async def run(count: int, workdir: str, *, expired: bool = False) -> None:
    settings = Settings(storage=StorageSettings(type="sqlite", path=str(Path(workdir) / "authmount.db")), dev=True,
                        dev_root_token_id="root", log_level="warning")
    client = TestClient(make_test_server(create_app(settings)))
    await client.start_server()
    try:
        gate = asyncio.Semaphore(16)

        async def create(path: str) -> None:
            async with gate:
                resp = await client.post(f"/v1/{path}", json={"policies": ["default"], "ttl": "1h"}, headers=ROOT)
                assert resp.status == 200, await resp.text()

        start = time.perf_counter()
        await asyncio.gather(*(create("auth/token/create" if i % 2 else "auth/token/create-orphan") for i in range(count)))
        print(f"created {count} tokens in {time.perf_counter() - start:.1f} s")

        latencies: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                began = time.perf_counter()
                await client.get("/v1/auth/token/lookup-self", headers=ROOT)
                latencies.append(time.perf_counter() - began)
                await asyncio.sleep(0.005)

        prober = asyncio.create_task(probe())
        start = time.perf_counter()
        if expired:
            assert client.app is not None
            tokens = client.app[TOKENS]
            real = tokens.clock
            tokens.clock = lambda: real() + 7200  # the root token has no TTL: its lookups go on
            what = f"sweep: {await tokens.sweep()} removed"
        else:
            resp = await client.put("/v1/sys/leases/revoke-prefix/auth/token/create", json={}, headers=ROOT)
            what = f"revoke-prefix: {resp.status}"
        took = time.perf_counter() - start
        done.set()
        await prober
        latencies.sort()
        print(f"{what} in {took:.2f} s ({count if expired else count // 2} of {count} tokens); lookup-self meanwhile: "
              f"{len(latencies)} requests, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms")
        listing = await client.request("LIST", "/v1/sys/leases/lookup/auth/token/create-orphan/", headers=ROOT)
        print(f"left: {len(((await listing.json()).get('data') or {}).get('keys', []))} tokens made by create-orphan")
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", type=int, nargs="?", default=10000, help="tokens to make (default 10000)")
    parser.add_argument("--expired", action="store_true", help="expire them all and time a full sweep instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="revoke-many-") as workdir:
        asyncio.run(run(args.count, workdir, expired=args.expired))


if __name__ == "__main__":
    main()
