"""Instructions per request of authmount trees, counted by valgrind (callgrind), every thread.

Run: ``.venv/bin/python bench/icount.py login --a main~1 --b . --requests 1000`` (trees and
cases as ``bench/ab.py``: ``--a``/``--b`` a commit or ``.``, ``--more REF`` repeatable;
``--repeat N`` runs every tree N times to show the spread).

Why: ``bench/ab.py``'s CPU time per request moves by 2-4 % between rounds on this machine
(a shared virtual machine), so a change worth 1 % cannot show there however often it runs.
The number of instructions a request executes does not depend on the neighbours: two runs
of one tree agree within ~0.5 %. It counts user space only (a system call's kernel time is
not in it: ``bench/ab.py`` is what shows those) and does not weigh cache misses, so it
guides changes to Python code and ``bench/ab.py`` and ``bench/run.py`` stay the judges of
time (docs/performance.md, issue 11 round six).

How: each tree's server runs under ``valgrind --tool=callgrind --instr-atstart=no`` (about
50x slower); one keep-alive client sends the case's request, 200 times to warm up, then
``callgrind_control -i on``, ``--requests`` more, and a dump. The dump's total over the
requests is the figure.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import authmount
from bench.ab import checkout, ratio_lines, tree_parser, trees_named, trees_of, workspace
from bench.jwtgen import BenchKeys, make_keys
from bench.procs import Server, free_port, start_pinned

WARMUP = 200
START_TIMEOUT = 300.0  # the interpreter's start under valgrind takes ~10-30 s


def available() -> bool:
    """Whether valgrind and callgrind_control are installed."""
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def _start(label: str, tree: Path, storage: str, workdir: Path) -> tuple[Server, Path]:
    port = free_port()
    config = authmount.write_config(workdir / label, port, log_level="info",
                                    storage={"type": "memory"} if storage == "memory" else None)
    out = workdir / f"callgrind-{label}.out"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            sys.executable, "-m", "server.cli", "server", "--config", str(config)]
    server = start_pinned(label, argv, cpus="0", port=port, log_dir=workdir / label, cwd=tree, wait=False)
    deadline = time.monotonic() + START_TIMEOUT
    while (match := authmount.ROOT_TOKEN_RE.search(server.log_text())) is None:
        if time.monotonic() > deadline or server.proc.poll() is not None:
            server.stop()
            raise RuntimeError(f"{label}: no root token line:\n{server.log_text()[-2000:]}")
        time.sleep(0.2)
    server.extra["root_token"] = match.group(1)
    return server, out


def _requester(
    server: Server, case: str, keys: BenchKeys, workdir: Path
) -> tuple[http.client.HTTPConnection, Callable[[int], None]]:
    """Configure ``server`` like bench/ab.py does; a keep-alive connection and a function
    sending the case's request n times on it."""
    authmount.configure_jwt_mount(server, keys.public_pem)
    token = authmount.login(server.url, authmount.ROLE, keys.token)["client_token"]
    if case == "audit":
        authmount.enable_file_audit(server, workdir / f"audit-{server.name}.log")
    body: str | None = None
    headers: dict[str, str] = {}
    if case in ("login", "audit", "batch"):
        role = authmount.BATCH_ROLE if case == "batch" else authmount.ROLE
        method, path = "POST", "/v1/auth/jwt/login"
        body, headers = json.dumps({"role": role, "jwt": keys.token}), {"Content-Type": "application/json"}
    elif case == "lookup":
        method, path, headers = "GET", "/v1/auth/token/lookup-self", {"X-Vault-Token": token}
    else:
        method, path = "GET", "/v1/sys/health"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)

    def send(n: int) -> None:
        for _ in range(n):
            conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"{server.name}: {method} {path} answered {reply.status}")

    return conn, send


def _dumped_total(out: Path) -> int:
    """The instruction total of the dump ``callgrind_control -d`` wrote next to ``out``."""
    for path in sorted(out.parent.glob(out.name + ".*")):
        text = path.read_text(errors="replace")
        if "Trigger: dump" in text:
            for line in text.splitlines():
                if line.startswith("totals:"):
                    return int(line.split()[1])
    raise RuntimeError(f"no callgrind dump next to {out}")


def count(label: str, tree: Path, case: str, storage: str, requests: int, workdir: Path, keys: BenchKeys) -> float:
    """Instructions per request of ``tree``'s server on ``case``."""
    server, out = _start(label, tree, storage, workdir)
    try:
        conn, send = _requester(server, case, keys, workdir)
        try:
            send(WARMUP)
            pid = str(server.proc.pid)  # taskset execs valgrind: the same process
            subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
            send(requests)
            subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        finally:
            conn.close()
    finally:
        server.stop()
    return _dumped_total(out) / requests


def summary(counts: dict[str, list[float]]) -> list[str]:
    """Each tree's median and runs, then each later tree's ratio to A's."""
    medians = {label: statistics.median(values) for label, values in counts.items()}
    lines = [f"{label}: {medians[label]:,.0f} instructions/request (runs {' '.join(f'{v:,.0f}' for v in values)})"
             for label, values in counts.items()]
    return lines + ratio_lines(medians, "instructions per request")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, count every tree, print the summary."""
    p = tree_parser(__doc__)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    if not available():
        print("valgrind (callgrind) is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    keys = make_keys()
    refs, labels = trees_of(args)
    counts: dict[str, list[float]] = {label: [] for label in labels}
    with workspace("authmount-icount-") as (workdir, trees):
        with ExitStack() as stack:
            paths = [stack.enter_context(checkout(ref, trees)) for ref in refs]
            for n in range(args.repeat):
                for label, tree in zip(labels, paths, strict=True):
                    counts[label].append(count(f"{label}{n}", tree, args.case, args.storage, args.requests,
                                               workdir, keys))
        print(f"{args.case}: {trees_named(labels, refs)}, {args.requests} requests per run")
        print("\n".join(summary(counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
