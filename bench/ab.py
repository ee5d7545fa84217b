"""A/B two trees of authmount on one request: both servers side by side, wrk runs alternating.

Run: ``.venv/bin/python bench/ab.py batch --a main~1 --b . --rounds 8`` (``--a``/``--b``: a
commit, checked out into a temporary git worktree, or ``.`` for the working tree; ``--more
REF``, repeated, adds trees C, D, ... to the same rounds, e.g. to walk a range of history). Cases:
``login`` (SQLite service token), ``audit`` (the same with a file audit device), ``batch``, ``lookup`` (``auth/token/lookup-self``
of a login's token), ``child`` (the same of a token made by ``auth/token/create``, which has a
parent), ``health`` (``sys/health``), ``inline`` (``auth/token/lookup-self`` authenticated by an
inline login of the login case's role and JWT: no token stored); ``--storage memory`` for the
in-memory engine.

Both servers run on the server core at once (an idle one costs nothing), so each round
measures A and B within seconds of each other, in alternating order. The machine's
background load moves between minutes more than a change of a few percent; alternating
rounds and comparing medians is what lets such a change show (docs/performance.md,
issue 11 round four). The figure is the server's CPU per request (user + system of every
thread, from ``/proc``), which other load on the machine does not inflate the way it
inflates latency.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import authmount
from bench.jwtgen import BenchKeys, make_keys
from bench.loadgen import ensure_wrk, run_wrk
from bench.procs import Server

ROOT = Path(__file__).resolve().parent.parent
CASES = ("login", "audit", "batch", "lookup", "child", "health", "inline")


@dataclass(slots=True)
class Target:
    """One side's server and the request wrk sends it."""

    label: str
    server: Server
    url: str
    method: str
    body: Path | None = None
    token: Path | None = None
    headers: Path | None = None  # more headers ("Name: value" lines)
    refused: bool = False  # every reply must be a non-2xx (a path that is not found)


@contextmanager
def checkout(ref: str, workdir: Path) -> Iterator[Path]:
    """The tree of ``ref``: the working tree for ``.``, else a temporary detached worktree."""
    if ref == ".":
        yield ROOT
        return
    path = workdir / f"tree-{len(list(workdir.iterdir()))}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), ref], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def start(label: str, tree: Path, case: str, storage: str, workdir: Path, keys: BenchKeys) -> Target:
    """authmount from ``tree``, configured like bench/run.py's cases."""
    server = authmount.start(label, workdir, cpus="0", log_level="info", tree=tree,
                             storage={"type": "memory"} if storage == "memory" else None)
    try:
        authmount.configure_jwt_mount(server, keys.public_pem)
        role = authmount.BATCH_ROLE if case == "batch" else authmount.ROLE
        body = workdir / f"login-{label}.json"
        body.write_text(json.dumps({"role": role, "jwt": keys.token}))
        token = workdir / f"token-{label}.txt"
        if case == "child":
            token.write_text(authmount.child_token(server))
        else:
            token.write_text(authmount.login(server.url, authmount.ROLE, keys.token)["client_token"])
        if case == "audit":
            authmount.enable_file_audit(server, workdir / f"audit-{label}.log")
    except BaseException:
        server.stop()
        raise
    if case in ("login", "audit", "batch"):
        return Target(label, server, server.url + "/v1/auth/jwt/login", "POST", body=body)
    if case in ("lookup", "child"):
        return Target(label, server, server.url + "/v1/auth/token/lookup-self", "GET", token=token)
    if case == "inline":  # lookup-self authenticated by an inline login of the login case's role and JWT
        headers = workdir / f"inline-{label}.txt"
        headers.write_text("".join(f"{k}: {v}\n" for k, v in authmount.inline_headers(authmount.ROLE, keys.token).items()))
        return Target(label, server, server.url + "/v1/auth/token/lookup-self", "GET", headers=headers)
    return Target(label, server, server.url + "/v1/sys/health", "GET")


def measure(target: Target, *, connections: int, duration: float, cpus: str) -> tuple[float, float]:
    """One wrk run: (requests per second, server CPU microseconds per request). Every reply
    must be a 2xx (a non-2xx for a ``refused`` target), with no socket error."""
    before = target.server.cpu_seconds()
    result = run_wrk(target.url, method=target.method, body_file=target.body, token_file=target.token,
                     headers_file=target.headers,
                     connections=connections, duration=duration, cpus=cpus)
    used = target.server.cpu_seconds() - before
    wrong = result.requests - result.non_2xx if target.refused else result.non_2xx
    if not result.requests or wrong or result.errors - result.non_2xx:
        raise RuntimeError(f"{target.label}: {result.errors} errors in {result.requests} requests")
    return result.rps, used * 1e6 / result.requests


def summary(runs: dict[str, list[tuple[float, float]]]) -> list[str]:
    """Lines with each tree's medians, then each later tree's ratio of CPU per request to A's."""
    lines, medians = [], {}
    for label, values in runs.items():
        rps = statistics.median(v[0] for v in values)
        cpu = medians[label] = statistics.median(v[1] for v in values)
        each = " ".join(f"{v[1]:.0f}" for v in values)
        lines.append(f"{label}: {rps:,.0f} req/s, CPU {cpu:.1f} us/request (median; runs {each})")
    return lines + ratio_lines(medians, "CPU per request")


def ratio_lines(medians: dict[str, float], measure: str) -> list[str]:
    """``B/A <measure>: 0.966``, and so on for every tree after A (``medians`` in label order)."""
    return [f"{label}/A {measure}: {medians[label] / medians['A']:.3f}" for label in list(medians)[1:]]


def tree_parser(doc: str | None) -> argparse.ArgumentParser:
    """The flags every side-by-side tool shares: the case, the trees (``--a``, ``--b``,
    ``--more``) and the storage engine."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("case", choices=CASES)
    p.add_argument("--a", default="HEAD", help="commit for A, or . for the working tree (default HEAD)")
    p.add_argument("--b", default=".", help="commit for B, or . for the working tree (default .)")
    p.add_argument("--more", action="append", default=[], metavar="REF", help="a further tree (C, D, ...); repeatable")
    p.add_argument("--storage", choices=("sqlite", "memory"), default="sqlite")
    return p


def trees_of(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The refs ``tree_parser``'s flags named, and their labels A, B, C, ..."""
    refs = [args.a, args.b, *args.more]
    return refs, [chr(ord("A") + i) for i in range(len(refs))]


def trees_named(labels: list[str], refs: list[str]) -> str:
    """``A = HEAD, B = .``: which tree each label is, for the report's first line."""
    return ", ".join(f"{label} = {ref}" for label, ref in zip(labels, refs, strict=True))


@contextmanager
def workspace(prefix: str) -> Iterator[tuple[Path, Path]]:
    """A temporary directory for one run and its ``trees`` folder (``checkout``'s), removed
    afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    trees = workdir / "trees"
    trees.mkdir()
    try:
        yield workdir, trees
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the rounds, print the summary."""
    p = tree_parser(__doc__)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--client-cpus", default="1")
    args = p.parse_args(argv)
    ensure_wrk()
    keys = make_keys()
    refs, labels = trees_of(args)
    targets: list[Target] = []
    with workspace("authmount-ab-") as (workdir, trees):
        with ExitStack() as stack:
            try:
                for label, ref in zip(labels, refs, strict=True):
                    tree = stack.enter_context(checkout(ref, trees))
                    targets.append(start(label, tree, args.case, args.storage, workdir, keys))
                    measure(targets[-1], connections=args.connections, duration=args.warmup, cpus=args.client_cpus)
                runs: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
                for n in range(args.rounds):
                    for target in targets if n % 2 == 0 else targets[::-1]:
                        runs[target.label].append(measure(target, connections=args.connections,
                                                          duration=args.duration, cpus=args.client_cpus))
            finally:
                for target in targets:
                    target.server.stop()  # before their trees go
        print(f"{args.case}: {trees_named(labels, refs)}, {args.rounds} rounds of {args.duration:g} s")
        print("\n".join(summary(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
