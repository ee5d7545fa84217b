"""The OIDC provider's sign-in, side by side with OpenBao: ``authorize`` (a login's token
asks for a code) then ``token`` (the client exchanges it, ``client_secret_basic``), the two
calls of every sign-in after the user's login. Both servers on the server cores (OpenBao
with ``GOMAXPROCS=1`` when that is one core), the same client, assignment, provider and
named key (``--algorithm``, RS256 by default); an asyncio load generator pinned to the client cores keeps ``--concurrency``
sign-ins in flight, the servers taking turns for ``--rounds`` rounds of ``--duration`` s.
Reports sign-ins per second, p99 of a whole sign-in, and server CPU per sign-in from /proc.

    .venv/bin/python -m bench.provider_flow --rounds 3 --duration 8
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench import authmount, openbao
from bench.jwtgen import BenchKeys, make_keys
from bench.procs import Server

REDIRECT = "https://app.example.com/callback"


def _configure(server: Server, keys: BenchKeys, algorithm: str = "RS256") -> dict[str, str]:
    """A jwt mount and a login's token (it has an entity), a named key of ``algorithm``, a
    client signing with it that every entity may use, and the default provider serving every
    client; the client's ID and secret and the token."""
    base, root = server.url, server.extra["root_token"]
    authmount.configure_jwt_mount(server, keys.public_pem)
    token = authmount.login(base, authmount.ROLE, keys.token)["client_token"]
    authmount._must(base, "POST", "/v1/identity/oidc/key/bench", root,
                    {"algorithm": algorithm, "allowed_client_ids": ["*"]})
    authmount._must(base, "POST", "/v1/identity/oidc/client/bench", root,
                    {"redirect_uris": [REDIRECT], "assignments": ["allow_all"], "key": "bench"})
    client = authmount._must(base, "GET", "/v1/identity/oidc/client/bench", root)["data"]
    return {"token": token, "client_id": client["client_id"], "client_secret": client["client_secret"]}


async def _sign_ins(url: str, creds: dict[str, str], duration: float, concurrency: int) -> list[float]:
    """Sign-ins for ``duration`` seconds, ``concurrency`` at a time; each one's seconds."""
    params = {"client_id": creds["client_id"], "scope": "openid", "redirect_uri": REDIRECT, "response_type": "code",
              "state": "s"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode())
             .decode()}
    took: list[float] = []
    deadline = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one_after_another() -> None:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                async with http.get(url + "/v1/identity/oidc/provider/default/authorize", params=params,
                                    headers={"X-Vault-Token": creds["token"]}) as resp:
                    code = (await resp.json())["code"]
                form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
                async with http.post(url + "/v1/identity/oidc/provider/default/token", data=form, headers=basic) as resp:
                    answer = await resp.json()
                    if resp.status != 200 or "id_token" not in answer:
                        raise RuntimeError(f"{url}: token endpoint answered {resp.status}: {answer}")
                took.append(time.perf_counter() - start)

        await asyncio.gather(*(one_after_another() for _ in range(concurrency)))
    return took


def _measure(server: Server, creds: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    cpu = server.cpu_seconds()
    start = time.monotonic()
    took = asyncio.run(_sign_ins(server.url, creds, args.duration, args.concurrency))
    elapsed = time.monotonic() - start
    used = server.cpu_seconds() - cpu
    return {"rate": len(took) / elapsed, "p99_ms": statistics.quantiles(took, n=100)[98] * 1000,
            "cpu_us": used / len(took) * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    ap.add_argument("--algorithm", default="RS256", help="the signing key's (RS256, ES256, EdDSA, ...)")
    args = ap.parse_args(argv)
    os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    keys = make_keys()
    servers: list[tuple[str, Server]] = []
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="provider-bench-") as tmp:
        work = Path(tmp)
        try:
            servers.append(("authmount, in memory", authmount.start(
                "authmount-mem", work, cpus=args.server_cpus, log_level="info", storage={"type": "memory"})))
            servers.append(("authmount, SQLite", authmount.start("authmount-sqlite", work, cpus=args.server_cpus,
                                                                 log_level="info")))
            one_core = "," not in args.server_cpus and "-" not in args.server_cpus
            servers.append(("OpenBao, in memory", openbao.start("openbao", work, cpus=args.server_cpus,
                                                                storage="memory", one_core=one_core)))
            creds = {name: _configure(srv, keys, args.algorithm) for name, srv in servers}
            for name, srv in servers:  # warm-up
                asyncio.run(_sign_ins(srv.url, creds[name], 2.0, args.concurrency))
            for _ in range(args.rounds):
                for name, srv in servers:
                    results.setdefault(name, []).append(_measure(srv, creds[name], args))
        finally:
            for _, srv in servers:
                srv.stop()
    print(f"| server ({args.algorithm}) | sign-ins/s | p99 ms | server CPU us per sign-in |  ({args.rounds} rounds of "
          f"{args.duration:g} s, {args.concurrency} in flight; medians, ranges)")
    print("|---|---:|---:|---:|")
    for name, rounds in results.items():
        cells = []
        for key, fmt in (("rate", "{:,.0f}"), ("p99_ms", "{:.1f}"), ("cpu_us", "{:,.0f}")):
            values = sorted(r[key] for r in rounds)
            cells.append(f"{fmt.format(statistics.median(values))} ({fmt.format(values[0])}-{fmt.format(values[-1])})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
