"""Where the time goes per login: N logins in-process under cProfile, top functions printed.

Run: ``.venv/bin/python bench/profile_login.py -n 2000`` (authmount, SQLite service tokens),
``--batch`` for batch tokens, ``--target ceiling`` for the bare aiohttp+jose ceiling.
The app runs in this process behind aiohttp's TestServer (real HTTP over loopback), so the
profile covers parsing, routing, JWT verification, token issue and the storage commit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import re
import sys
import sysconfig
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``server`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bench.ceiling import make_login_app
from bench.jwtgen import make_keys
from bench.report import update_doc

ROOT_TOKEN = "bench-profile-root"
REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "performance.md"
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


@contextlib.contextmanager
def quiet_stdout(enabled: bool) -> Iterator[None]:
    """Send fds 1 and 2 to /dev/null (the server logs a line per request), restore them after."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in saved:
        os.dup2(devnull, fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def authmount_app(workdir: Path, storage: str, log_level: str) -> web.Application:
    """authmount's app on SQLite (or memory) with a known root token, logging like the server."""
    from server.app import create_app
    from server.http.log import configure_logging
    from server.settings import settings_from_mapping

    raw = {
        "storage": {"type": storage, "path": str(workdir / "profile.db")},
        "log_level": log_level,
        "rate_limit": {"login_per_ip_per_second": 0},  # one client IP at full speed: no per-IP limit
    }
    # dev=True only to get a known root token; storage and log format stay production-like.
    settings = settings_from_mapping(raw, dev=True, dev_root_token_id=ROOT_TOKEN)
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


async def _must(
    client: TestClient[web.Request, web.Application], method: str, path: str, body: dict[str, Any], token: str | None = None
) -> dict[str, Any]:
    headers = {"X-Vault-Token": token} if token else {}
    async with client.request(method, path, json=body, headers=headers) as resp:
        data = await resp.json(content_type=None) if resp.content_length != 0 else {}
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path} -> {resp.status}: {data}")
        return data or {}


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if not match:
        raise RuntimeError(f"response without Content-Length: {head[:300]!r}")
    return status, await reader.readexactly(int(match.group(1)))


async def setup_authmount(client: TestClient[web.Request, web.Application], public_pem: str, batch: bool) -> None:
    """Mount auth/jwt with the static key and a role, like bench/run.py does over the wire."""
    await _must(client, "POST", "/v1/sys/auth/jwt", {"type": "jwt"}, ROOT_TOKEN)
    await _must(client, "POST", "/v1/auth/jwt/config", {"jwt_validation_pubkeys": [public_pem]}, ROOT_TOKEN)
    role = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["bench"], "token_policies": ["p"]}
    if batch:
        role["token_type"] = "batch"
    await _must(client, "POST", "/v1/auth/jwt/role/bench", role, ROOT_TOKEN)


async def run(args: argparse.Namespace, profiler: cProfile.Profile) -> tuple[int, float]:
    """Build the app, warm up, then profile ``args.n`` logins; returns (logins, seconds)."""
    keys = make_keys()
    with tempfile.TemporaryDirectory(prefix="authmount-profile-") as tmp:
        if args.target == "ceiling":
            app = make_login_app(keys.public_pem)
        else:
            app = authmount_app(Path(tmp), args.storage, args.log_level)
        async with TestClient(TestServer(app)) as client:
            if args.target == "authmount":
                await setup_authmount(client, keys.public_pem, args.batch)
                if args.audit:
                    await _must(client, "POST", "/v1/sys/audit/file",
                                {"type": "file", "options": {"file_path": str(Path(tmp) / "audit.log")}}, ROOT_TOKEN)
            body = json.dumps({"role": "bench", "jwt": keys.token}).encode()
            request = (
                f"POST /v1/auth/jwt/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            port = client.server.port

            async def worker(count: int) -> None:
                # A bare keep-alive client on raw streams: next to nothing of it shows in the
                # profile, unlike aiohttp's client, so the top functions are the server's.
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    for _ in range(count):
                        writer.write(request)
                        status, reply = await _read_response(reader)
                        if status != 200 or b"client_token" not in reply:
                            raise RuntimeError(f"login -> {status}: {reply[:300]!r}")
                finally:
                    writer.close()

            await worker(args.warmup)
            share, rest = divmod(args.n, args.concurrency)
            counts = [share + (1 if i < rest else 0) for i in range(args.concurrency)]
            start = time.perf_counter()
            if args.memory:
                # Memory mode: no cProfile, allocation sites that grew over the N logins instead.
                tracemalloc.start(8)
                before = tracemalloc.take_snapshot()
                await asyncio.gather(*(worker(c) for c in counts if c))
                gc.collect()
                _print_memory_growth(before, tracemalloc.take_snapshot(), args.n, args.top)
                tracemalloc.stop()
                return args.n, time.perf_counter() - start
            profiler.enable()
            await asyncio.gather(*(worker(c) for c in counts if c))
            profiler.disable()
            return args.n, time.perf_counter() - start


def _print_memory_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int,
                         top: int) -> None:  # fmt: skip
    """Allocation sites whose live memory grew, largest first (bytes per login)."""
    diff = after.compare_to(before, "traceback")
    grown = sum(d.size_diff for d in diff)
    print(f"live Python memory grew {grown / 1024 / 1024:+.1f} MB over {n} logins "
          f"({grown / n:+,.0f} bytes per login); top sites:")  # fmt: skip
    for d in diff[:top]:
        if d.size_diff <= 0:
            break
        frames = [f for f in reversed(list(d.traceback)) if "tracemalloc" not in f.filename][:4]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames)
        print(f"  {d.size_diff / n:9,.0f} B/login  {d.count_diff / n:6.2f} objs/login  {where}")


def _group(filename: str, func: str) -> str:
    """Bucket for one profiled function: repo file, third-party package, stdlib module or C call."""
    if filename == "~":  # C functions: keep the few that matter visible by name
        name = func.strip("<>").removeprefix("built-in method ")
        method = re.fullmatch(r"method '(\w+)' of '([\w.]+)' objects", name)
        return "C: " + (f"{method.group(2).rsplit('.', 1)[-1]}.{method.group(1)}" if method else name)
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    for base, label in ((REPO, ""), (STDLIB, "stdlib: ")):
        try:
            return label + str(path.resolve().relative_to(base)).removesuffix(".py")
        except ValueError:
            continue
    return filename


def by_group(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own time (tottime) summed per group, largest first."""
    totals: dict[str, float] = {}
    for (filename, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        key = _group(filename, func)
        totals[key] = totals.get(key, 0.0) + tottime
    return sorted(totals.items(), key=lambda kv: kv[1], reverse=True)


def _doc_section(what: str, args: argparse.Namespace, n: int, seconds: float,
                 groups: list[tuple[str, float]], total: float) -> str:  # fmt: skip
    lines = [
        f"## Where the time goes per login: {what} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`bench/profile_login.py -n {n} -c {args.concurrency}"
        f"{' --batch' if args.batch else ''}{' --target ceiling' if args.target == 'ceiling' else ''}`: "
        f"{seconds / n * 1e6:.0f} us per login under cProfile (profiler overhead included; "
        "the event loop thread only, so a storage writer thread does not show). Own time "
        "(tottime) per module, package or C function:",
        "",
        "| share | us/login | where |",
        "|------:|---------:|-------|",
        *[f"| {t / total * 100:.1f} % | {t / n * 1e6:.1f} | `{name}` |" for name, t in groups[: min(args.top, 20)]],
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse flags, profile, print the top functions."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=2000, help="profiled logins (default 2000)")
    p.add_argument("--warmup", type=int, default=100, help="unprofiled logins first (default 100)")
    p.add_argument("-c", "--concurrency", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--target", choices=["authmount", "ceiling"], default="authmount")
    p.add_argument("--storage", choices=["sqlite", "memory"], default="sqlite")
    p.add_argument("--batch", action="store_true", help="role with token_type=batch")
    p.add_argument("--audit", action="store_true", help="with one file audit device")
    p.add_argument("--log-level", default="info", help="authmount log_level (default info)")
    p.add_argument("--top", type=int, default=35, help="functions to print (default 35)")
    p.add_argument("--sort", default="cumulative", choices=["cumulative", "tottime", "ncalls"])
    p.add_argument("--dump", type=Path, help="also write the raw profile (for snakeviz etc.)")
    p.add_argument("--memory", action="store_true",
                   help="instead of cProfile: tracemalloc, where live memory grows per login")
    p.add_argument("--write-doc", action="store_true",
                   help="write the per-module table into docs/performance.md")  # fmt: skip
    args = p.parse_args(argv)
    profiler = cProfile.Profile()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with quiet_stdout(args.target == "authmount" and not args.memory), runner:
        n, seconds = runner.run(run(args, profiler))
    if args.memory:
        return 0
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    groups = by_group(stats)
    total = sum(t for _, t in groups) or 1.0
    stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)
    what = args.target if args.target == "ceiling" else (
        f"authmount, {'batch' if args.batch else 'service'} tokens, {args.storage} storage")
    print(f"{n} logins ({what}), concurrency {args.concurrency}: {seconds:.2f} s under the profiler, "
          f"{seconds / n * 1e6:.0f} us per login (profiler overhead included)")
    print("Own time per module/package (the SQLite writer thread is not profiled, only the loop):")
    for name, seconds_in in groups[: args.top]:
        print(f"  {seconds_in / total * 100:5.1f} %  {seconds_in / n * 1e6:7.1f} us/login  {name}")
    print(out.getvalue())
    if args.write_doc:
        variant = "ceiling" if args.target == "ceiling" else ("batch" if args.batch else "service")
        update_doc(DOC, f"profile-{variant}", _doc_section(what, args, n, seconds, groups, total))
        print(f"wrote {DOC}")
    if args.dump:
        stats.dump_stats(str(args.dump))
        print(f"raw profile written to {args.dump}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
