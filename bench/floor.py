"""The layers under a GET, side by side: what the HTTP stack costs before authmount's own work.

Run: ``.venv/bin/python bench/floor.py --rounds 5``. Every server runs on the server core at
once (an idle one costs nothing) and ``wrk`` runs alternate between them, as in
``bench/ab.py``; the figure is the server's CPU per request (user + system, from ``/proc``),
medians of the rounds. The ladder, on the asyncio loop and on uvloop:

- **floor**: an asyncio protocol that parses with aiohttp's own C parser and writes the
  hello's bytes (``bench/ceiling.py --mode floor``): sockets, the loop and the parser only;
- **lowlevel**: aiohttp's low-level server, no application or router, answering with
  authmount's one-step ``JSONReply`` (``--mode lowlevel``): aiohttp's request machinery;
- **hello**: the bare aiohttp application (``--mode hello``, case 4's ceiling);
- **authmount 404**: a path outside ``/v1/``, i.e. authmount's HTTP layer (request id, log
  line, router, JSON error) and nothing behind it;
- **sys/health** and **lookup-self**: two whole requests.

What separates floor and hello is aiohttp's request machinery, which any aiohttp
application pays; what separates hello and lookup-self is what the issue's ratio (lookup-self
/ hello >= 0.5) measures.

``--logins`` adds the login ceiling (case 1, uvloop) and authmount's batch and service
logins (cases 3 and 2, on the asyncio server above), and prints the one-core ratios as CPU
ratios (the ceiling's CPU per request over authmount's: what the req/s ratio is when the
server core is saturated). Measured side by side, they do not move with the machine's speed
between the minutes at which ``bench/run.py`` measures each case. ``--ratios`` runs only the
five servers those ratios need and prints their table (``bench/run.py`` ends with it).

``--durability`` runs the service login with SQLite's default ``synchronous=FULL`` (case 2),
with ``NORMAL`` (no ``fsync`` at a commit: a power failure may lose the last commits, a killed
process loses nothing), on ``memory`` storage, and the batch login, and prints how busy each
kept the server core: what the durable commit's wait costs in req/s and in CPU per login.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import authmount
from bench.ab import Target, measure, workspace
from bench.ceiling import ROLE
from bench.jwtgen import BenchKeys, make_keys
from bench.loadgen import ensure_wrk
from bench.procs import Server, free_port, start_pinned

CEILING = str(Path(__file__).with_name("ceiling.py"))
LOOPS = ("asyncio", "uvloop")
LOGIN = "/v1/auth/jwt/login"
#: (what, reference rung, authmount rung, target): the issue's one-core ratios, as CPU ratios.
RATIOS = (
    ("lookup-self / hello", "hello (uvloop)", "lookup-self (asyncio)", 0.50),
    ("batch login / login ceiling", "login ceiling (uvloop)", "batch login", 0.75),
    ("service login / login ceiling", "login ceiling (uvloop)", "service login", 0.60),
)


def start_all(workdir: Path, loops: tuple[str, ...], logins: bool = False) -> list[Target]:
    """Every rung of the ladder on each of ``loops``, started and configured (and the login
    rungs with ``logins``)."""
    keys = make_keys()
    targets: list[Target] = []
    try:
        for loop in loops:
            for mode in ("floor", "lowlevel", "hello"):
                targets.append(_bare(workdir, mode, loop))
        for loop in loops:
            # cases 2 and 3 run on the default loop
            targets += _authmount(workdir, keys, loop, logins=logins and loop == "asyncio", health=True,
                                  notfound=True)  # fmt: skip
        if logins:
            targets.append(_login_ceiling(workdir, keys))
    except BaseException:
        stop_all(targets)
        raise
    return targets


def start_ratio_set(workdir: Path, cpus: str = "0") -> list[Target]:
    """The five sides of the issue's one-core ratios and nothing else: the hello and the
    login ceiling (uvloop), authmount's lookup-self, batch and service logins (asyncio), all
    on the server cores ``cpus``."""
    keys = make_keys()
    targets: list[Target] = []
    try:
        targets.append(_bare(workdir, "hello", "uvloop", cpus))
        targets.append(_login_ceiling(workdir, keys, cpus))
        targets += _authmount(workdir, keys, "asyncio", logins=True, health=False, notfound=False, cpus=cpus)
    except BaseException:
        stop_all(targets)
        raise
    return targets


def start_durability_set(workdir: Path, cpus: str = "0") -> list[Target]:
    """The service login on SQLite ``FULL`` and ``NORMAL`` and on ``memory``, and the batch
    login, one authmount server each on the server cores ``cpus``."""
    keys = make_keys()
    targets: list[Target] = []
    sides = (
        ("service login, SQLite FULL", "full", None, authmount.ROLE),
        ("service login, SQLite NORMAL", "normal", {"type": "sqlite", "path": str(workdir / "normal.db"),
                                                    "sqlite_synchronous": "NORMAL"}, authmount.ROLE),
        ("service login, memory", "memory", {"type": "memory"}, authmount.ROLE),
        ("batch login, SQLite FULL", "batch", None, authmount.BATCH_ROLE),
    )  # fmt: skip
    try:
        for label, name, storage, role in sides:
            body = workdir / f"{name}.json"
            body.write_text(json.dumps({"role": role, "jwt": keys.token}))
            server = authmount.start(f"authmount-{name}", workdir, cpus=cpus, log_level="info", storage=storage)
            targets.append(Target(label, server, server.url + LOGIN, "POST", body=body))
            authmount.configure_jwt_mount(server, keys.public_pem)
    except BaseException:
        stop_all(targets)
        raise
    return targets


def busy_table(runs: dict[str, list[tuple[float, float]]]) -> list[str]:
    """Markdown rows: each server's median req/s, CPU per request and the share of the server
    core it kept busy (req/s x CPU per request), with its rounds' CPU figures."""
    rows = ["| server | req/s | CPU us per request | server core busy | rounds (CPU us) |", "|---|---:|---:|---:|---|"]
    for name, values in runs.items():
        rps = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        busy = statistics.median(v[0] * v[1] / 1e6 for v in values)
        rows.append(f"| {name} | {rps:,.0f} | {cpu:.1f} | {busy:.2f} | {' '.join(f'{v[1]:.0f}' for v in values)} |")
    return rows


def _bare(workdir: Path, mode: str, loop: str, cpus: str = "0") -> Target:
    """One rung of ``bench/ceiling.py`` (floor, lowlevel, hello) answering ``GET /hello``."""
    server = _ceiling(workdir, f"{mode}-{loop}", mode, "--loop", loop, cpus=cpus)
    return Target(f"{mode} ({loop})", server, server.url + "/hello", "GET")


def _authmount(workdir: Path, keys: BenchKeys, loop: str, *, logins: bool, health: bool, notfound: bool,
               cpus: str = "0") -> list[Target]:
    """One authmount server on ``loop`` and its rungs: the 404 (``notfound``), ``sys/health``
    (``health``), lookup-self, and with ``logins`` the batch and service logins."""
    server = authmount.start(f"authmount-{loop}", workdir, cpus=cpus, log_level="info", event_loop=loop)
    try:
        authmount.configure_jwt_mount(server, keys.public_pem)
        token = workdir / f"token-{loop}.txt"
        token.write_text(authmount.login(server.url, authmount.ROLE, keys.token)["client_token"])
    except BaseException:
        server.stop()
        raise
    targets = []
    if notfound:
        targets.append(Target(f"authmount 404 ({loop})", server, server.url + "/nothing", "GET", refused=True))
    if health:
        targets.append(Target(f"sys/health ({loop})", server, server.url + "/v1/sys/health", "GET"))
    targets.append(Target(f"lookup-self ({loop})", server, server.url + "/v1/auth/token/lookup-self", "GET",
                          token=token))  # fmt: skip
    if logins:
        for label, role in (("batch login", authmount.BATCH_ROLE), ("service login", authmount.ROLE)):
            body = workdir / f"{role}.json"
            body.write_text(json.dumps({"role": role, "jwt": keys.token}))
            targets.append(Target(label, server, server.url + LOGIN, "POST", body=body))
    return targets


def _login_ceiling(workdir: Path, keys: BenchKeys, cpus: str = "0") -> Target:
    """The login ceiling (case 1, uvloop) verifying ``keys``' token."""
    pem = workdir / "public.pem"
    pem.write_text(keys.public_pem)
    body = workdir / "ceiling.json"
    body.write_text(json.dumps({"role": ROLE, "jwt": keys.token}))
    server = _ceiling(workdir, "ceiling-login", "login", "--pubkey", str(pem), cpus=cpus)
    return Target("login ceiling (uvloop)", server, server.url + LOGIN, "POST", body=body)


def _ceiling(workdir: Path, name: str, mode: str, *flags: str, cpus: str = "0") -> Server:
    """``bench/ceiling.py --mode mode *flags`` on the server cores ``cpus``, on a free port."""
    port = free_port()
    return start_pinned(name, [sys.executable, CEILING, "--mode", mode, "--port", str(port), *flags],
                        cpus=cpus, port=port, log_dir=workdir / name)


def stop_all(targets: list[Target]) -> None:
    """Stop each server once (one authmount server serves several rungs)."""
    for server in {id(t.server): t.server for t in targets}.values():
        server.stop()


def run_rounds(targets: list[Target], *, rounds: int, duration: float, warmup: float, connections: int,
               cpus: str) -> dict[str, list[tuple[float, float]]]:  # fmt: skip
    """A warm-up run of each target, then ``rounds`` rounds of one ``wrk`` run each, a
    different target first each round: (req/s, server CPU us per request) per run."""
    for target in targets:
        measure(target, connections=connections, duration=warmup, cpus=cpus)
    runs: dict[str, list[tuple[float, float]]] = {t.label: [] for t in targets}
    for n in range(rounds):
        shift = n % len(targets)
        for target in targets[shift:] + targets[:shift]:
            runs[target.label].append(measure(target, connections=connections, duration=duration, cpus=cpus))
    return runs


def table(runs: dict[str, list[float]]) -> list[str]:
    """Markdown rows: each rung's median CPU per request and its rounds, then the one-core
    ratios whose both sides were measured."""
    rows = ["| server | CPU us per request (median) | rounds |", "|---|---:|---|"]
    medians = {name: statistics.median(values) for name, values in runs.items()}
    for name, values in runs.items():
        rows.append(f"| {name} | {medians[name]:.1f} | {' '.join(f'{v:.0f}' for v in values)} |")
    for label, reference, case, target in RATIOS:
        if reference in medians and case in medians:
            rows.append(f"{label}: {medians[reference] / medians[case]:.2f} (target {target})")
    return rows


def ratio_table(runs: dict[str, list[tuple[float, float]]]) -> list[str]:
    """Markdown rows of the one-core ratios measured side by side: each ratio's median req/s
    and CPU per request of both sides, the req/s ratio and the CPU ratio (the reference's CPU
    per request over authmount's), against the target."""
    rps = {name: statistics.median(v[0] for v in values) for name, values in runs.items()}
    cpu = {name: statistics.median(v[1] for v in values) for name, values in runs.items()}
    rows = ["| ratio | reference: req/s, CPU us/req | authmount: req/s, CPU us/req | req/s ratio | CPU ratio "
            "| target |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for label, reference, case, target in RATIOS:
        if reference in runs and case in runs:
            rows.append(f"| {label} | {rps[reference]:,.0f}, {cpu[reference]:.1f} | {rps[case]:,.0f}, {cpu[case]:.1f} "
                        f"| {rps[case] / rps[reference]:.2f} | {cpu[reference] / cpu[case]:.2f} | {target} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the rounds, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=4, help="seconds per wrk run (default 4)")
    p.add_argument("--warmup", type=float, default=1)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--client-cpus", default="1")
    p.add_argument("--loops", default=",".join(LOOPS), help="comma list of asyncio, uvloop")
    p.add_argument("--logins", action="store_true", help="add the login ceiling and the batch and service logins")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--ratios", action="store_true",
                      help="only the five sides of the one-core ratios, and the ratios' table (what bench/run.py adds)")
    only.add_argument("--durability", action="store_true",
                      help="only the service login on SQLite FULL, NORMAL and memory, and the batch login")
    args = p.parse_args(argv)
    loops = tuple(x for x in args.loops.split(",") if x)
    if not loops or set(loops) - set(LOOPS):
        p.error(f"--loops: a comma list of {', '.join(LOOPS)}")
    ensure_wrk()
    with workspace("authmount-floor-") as (workdir, _):
        if args.durability:
            targets = start_durability_set(workdir)
        elif args.ratios:
            targets = start_ratio_set(workdir)
        else:
            targets = start_all(workdir, loops, args.logins)
        try:
            runs = run_rounds(targets, rounds=args.rounds, duration=args.duration, warmup=args.warmup,
                              connections=args.connections, cpus=args.client_cpus)  # fmt: skip
        finally:
            stop_all(targets)
    print(f"{args.rounds} rounds of {args.duration:g} s, {args.connections} connections")
    if args.durability:
        print("\n".join(busy_table(runs)))
    elif args.ratios:
        print("\n".join(ratio_table(runs)))
    else:
        print("\n".join(table({label: [v[1] for v in values] for label, values in runs.items()})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
