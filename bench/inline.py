"""Inline authentication side by side: authmount and OpenBao in memory, each on the server core
(OpenBao with ``GOMAXPROCS=1``), ``wrk`` on the other core with 16 connections, alternating
4 s runs. The request is ``GET sys/auth`` (a policy of the login's role grants it)
authenticated by OpenBao 2.4's ``X-Vault-Inline-Auth-*`` headers: a JWT login and the request
in one, no token stored. Prints req/s, the server's CPU per request (from ``/proc``) and p99,
medians of the rounds.

Run: ``.venv/bin/python bench/inline.py --rounds 4``. Per-tree figures for authmount alone
(SQLite, ``lookup-self``): ``bench/ab.py inline``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import authmount, openbao  # noqa: E402
from bench.jwtgen import make_keys  # noqa: E402
from bench.loadgen import ensure_wrk, run_wrk  # noqa: E402
from bench.procs import Server  # noqa: E402

POLICY = 'path "sys/auth" { capabilities = ["read"] }'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)
    ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="authmount-inline-"))
    keys = make_keys()
    servers: dict[str, Server] = {}
    try:
        servers["authmount"] = authmount.start("authmount", work, cpus="0", log_level="info",
                                               storage={"type": "memory"})
        servers["openbao"] = openbao.start("openbao", work, cpus="0", storage="memory", one_core=True)
        headers = work / "inline-headers.txt"
        headers.write_text("".join(f"{k}: {v}\n" for k, v in authmount.inline_headers(authmount.ROLE, keys.token).items()))
        for server in servers.values():
            authmount.configure_jwt_mount(server, keys.public_pem)  # its roles' policy is "p"
            status, out = authmount.api(server.url, "PUT", "/v1/sys/policies/acl/p", server.extra["root_token"],
                                        {"policy": POLICY})
            if status != 204:
                raise RuntimeError(f"writing the policy: {status} {out}")
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, server in servers.items():
                before = server.cpu_seconds()
                result = run_wrk(server.url + "/v1/sys/auth", method="GET", body_file=None, token_file=None,
                                 headers_file=headers, connections=args.connections, duration=args.duration, cpus="1")
                used = server.cpu_seconds() - before
                if not result.requests or result.errors:
                    raise RuntimeError(f"{name}: {result.errors} errors in {result.requests} requests")
                runs[name].append((result.rps, used * 1e6 / result.requests, result.p99_ms))
    finally:
        for server in servers.values():
            server.stop()
    medians = {}
    for name, values in runs.items():
        rps = medians[name] = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        p99 = statistics.median(v[2] for v in values)
        print(f"{name}: {rps:,.0f} req/s, CPU {cpu:.0f} us/request, p99 {p99:.1f} ms "
              f"(runs {', '.join(f'{v[0]:,.0f}' for v in values)})")
    print(f"authmount / openbao req/s: {medians['authmount'] / medians['openbao']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
