"""The optional long scenarios: ~1 M logins for RSS growth, and logins during a slow JWKS refresh."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import authmount
from bench.jwtgen import BenchKeys
from bench.loadgen import WrkResult, run_wrk
from bench.procs import Server, free_port, start_pinned
from bench.report import MB, update_doc

ROOT = Path(__file__).resolve().parent.parent
RSS_GROWTH_LIMIT_MB = 50


def _start_authmount(args: argparse.Namespace, run_dir: Path, keys: BenchKeys) -> Server:
    reason = authmount.available()
    if reason:
        raise SystemExit(f"authmount is not runnable: {reason}")
    srv = authmount.start("authmount", run_dir, cpus=args.server_cpus, log_level=args.log_level)
    try:
        authmount.configure_jwt_mount(srv, keys.public_pem)
        authmount.login(srv.url, authmount.ROLE, keys.token)
    except BaseException:
        srv.stop()
        raise
    return srv


def long_run(args: argparse.Namespace, run_dir: Path, inputs: dict[str, Any]) -> int:
    """~args.long_logins durable logins in chunks; RSS sampled after each chunk."""
    conns = args.connections[0]
    srv = _start_authmount(args, run_dir, inputs["keys"])
    samples: list[tuple[int, float, int, int]] = []  # (logins so far, elapsed s, rss, anon rss)
    common = dict(method="POST", body_file=run_dir / "login.json", token_file=None,
                  connections=conns, cpus=args.client_cpus, threads=args.threads)  # fmt: skip
    url = srv.url + "/v1/auth/jwt/login"
    errors = 0
    try:
        rss_start = srv.rss()
        warm = run_wrk(url, duration=max(args.warmup, 5), **common)
        done, t0 = warm.requests, time.monotonic()
        samples.append((done, 0.0, srv.rss(), srv.rss_anon()))
        while done < args.long_logins:
            chunk = run_wrk(url, duration=args.long_chunk, **common)
            done += chunk.requests
            errors += chunk.errors
            samples.append((done, time.monotonic() - t0, srv.rss(), srv.rss_anon()))
            eta = (args.long_logins - done) / chunk.rps if chunk.rps else 0
            print(f"  {done:>9,} logins  {chunk.rps:8,.0f} req/s  RSS {samples[-1][2] / MB:7.1f} MB"
                  f" (anon {samples[-1][3] / MB:7.1f} MB)  errors {chunk.errors}  ~{eta:.0f} s left",
                  flush=True)  # fmt: skip
    finally:
        srv.stop()
    base, last = samples[0][2], samples[-1][2]
    peak = max(s[2] for s in samples)
    growth = (last - base) / MB
    anon_growth = (samples[-1][3] - samples[0][3]) / MB
    # A bounded cache filling up looks like growth early on; the second half tells it from a leak.
    mid = next(x for x in samples if x[0] >= samples[-1][0] / 2)
    late_logins = samples[-1][0] - mid[0]
    late_growth = (last - mid[2]) / MB
    late_rate = late_growth / late_logins * 1_000_000 if late_logins else 0.0
    lines = [
        f"## Long run: RSS over {samples[-1][0]:,} logins ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Case 2 (SQLite service tokens), {conns} connections, RSS sampled every {args.long_chunk:g} s; "
        f"baseline taken after a warm-up of {samples[0][0]:,} logins.",
        "",
        *([f"**Short run ({samples[-1][0]:,} logins, not the ~1 M the target is about): the growth "
            "below is indicative only.**", ""] if args.long_logins < 1_000_000 else []),
        f"- RSS right after setup: {rss_start / MB:.1f} MB",
        f"- RSS after warm-up (baseline): {base / MB:.1f} MB",
        f"- RSS at the end: {last / MB:.1f} MB (peak {peak / MB:.1f} MB)",
        f"- **growth: {growth:+.1f} MB** (target <= {RSS_GROWTH_LIMIT_MB} MB: "
        f"{'ok' if growth <= RSS_GROWTH_LIMIT_MB else 'MISSED'}); of it anonymous memory (heap, "
        f"not file cache): {anon_growth:+.1f} MB; errors: {errors}",
        f"- second half ({late_logins:,} logins): {late_growth:+.1f} MB, i.e. {late_rate:+.0f} MB per "
        "1 M logins at that rate (a bounded cache levels off; a leak keeps this rate)",
        "",
        "| logins | elapsed s | RSS MB | anon RSS MB |",
        "|-------:|----------:|-------:|------------:|",
        *[f"| {n:,} | {t:.0f} | {r / MB:.1f} | {a / MB:.1f} |" for n, t, r, a in samples],
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if not args.no_write:
        update_doc(args.out, "long", text)
        print(f"wrote {args.out}")
    return 0 if growth <= RSS_GROWTH_LIMIT_MB else 1


def _hammer_unknown_kid(base: str, jwt: str, stop: threading.Event, statuses: list[int]) -> None:
    """Logins with a kid the JWKS lacks: each may start a (slow) JWKS refresh."""
    while not stop.is_set():
        status, _ = authmount.api(base, "POST", "/v1/auth/jwks/login", None,
                                  {"role": authmount.ROLE, "jwt": jwt})  # fmt: skip
        statuses.append(status)
        stop.wait(0.2)


def _wait_for_hit(idp_url: str, hits_before: int, timeout: float) -> bool:
    """Wait until the JWKS server saw a new fetch (a refresh is now hanging)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, stats = authmount.api(idp_url, "GET", "/stats", None)
        if stats.get("hits", 0) > hits_before:
            return True
        time.sleep(0.1)
    return False


def slow_jwks(args: argparse.Namespace, run_dir: Path, inputs: dict[str, Any]) -> int:
    """Cached-kid logins on a JWKS mount, before and while the IdP answers after a delay."""
    keys, conns = inputs["keys"], args.connections[0]
    port = free_port()
    idp = start_pinned("jwks", [sys.executable, str(ROOT / "bench" / "jwks_server.py"), "--port",
                                str(port), "--jwks", str(run_dir / "jwks.json")],
                       cpus=args.client_cpus, port=port, log_dir=run_dir)  # fmt: skip
    srv = None
    try:
        srv = _start_authmount(args, run_dir, keys)
        root = srv.extra["root_token"]
        setup: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", "/v1/sys/auth/jwks", {"type": "jwt"}),
            ("POST", "/v1/auth/jwks/config", {"jwks_url": f"{idp.url}/jwks.json"}),
            ("POST", f"/v1/auth/jwks/role/{authmount.ROLE}",
             {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["bench"], "token_policies": ["p"]}),
        ]  # fmt: skip
        for method, path, data in setup:
            status, reply = authmount.api(srv.url, method, path, root, data)
            if status >= 300:
                raise SystemExit(f"slow-JWKS scenario: {method} {path} -> {status}: {reply}")
        authmount.login(srv.url, authmount.ROLE, keys.token, mount="jwks")  # caches the kid
        body = run_dir / "login_jwks.json"
        body.write_text(json.dumps({"role": authmount.ROLE, "jwt": keys.token}))
        url = srv.url + "/v1/auth/jwks/login"
        common = dict(method="POST", body_file=body, token_file=None, connections=conns,
                      cpus=args.client_cpus, threads=args.threads)  # fmt: skip
        run_wrk(url, duration=args.warmup or 1, **common)
        before = run_wrk(url, duration=args.duration, **common)
        authmount.api(idp.url, "POST", f"/control?delay={args.jwks_delay}", None, {})
        stop = threading.Event()
        statuses: list[int] = []
        hammer = threading.Thread(target=_hammer_unknown_kid,
                                  args=(srv.url, keys.unknown_kid_token, stop, statuses))  # fmt: skip
        _, stats0 = authmount.api(idp.url, "GET", "/stats", None)
        hammer.start()
        try:
            # Unknown-kid refreshes are rate-limited (cooldown); measure once one is in flight.
            refresh_seen = _wait_for_hit(idp.url, stats0.get("hits", 0), timeout=30)
            during = run_wrk(url, duration=args.duration, **common)
        finally:
            stop.set()
            hammer.join(timeout=args.jwks_delay + 35)
        _, stats = authmount.api(idp.url, "GET", "/stats", None)
    finally:
        if srv:
            srv.stop()
        idp.stop()
    stalled = during.max_ms >= args.jwks_delay * 1000 * 0.5
    text = _slow_jwks_text(args, conns, before, during, stats, statuses, stalled)
    if not refresh_seen:
        text += "\n**No JWKS refresh started within 30 s: the scenario did not exercise a slow refresh.**\n"
    print("\n" + text)
    if not args.no_write:
        update_doc(args.out, "slow-jwks", text)
        print(f"wrote {args.out}")
    return 1 if stalled else 0


def _slow_jwks_text(args: argparse.Namespace, conns: int, before: WrkResult, during: WrkResult,
                    stats: dict[str, Any], statuses: list[int], stalled: bool) -> str:  # fmt: skip
    rows = [("before (JWKS fast)", before), (f"during ({args.jwks_delay:g} s JWKS, refreshes)", during)]
    lines = [
        f"## Slow JWKS: cached-kid logins during a hanging refresh ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"A `jwks_url` mount; {conns} connections log in with a cached kid for {args.duration:g} s, "
        f"then again while a side thread sends unknown-kid logins (forcing refreshes) and the "
        f"JWKS server answers after {args.jwks_delay:g} s; the second measurement starts once a "
        f"refresh is in flight. JWKS fetches seen: {stats.get('hits', '?')}; "
        f"unknown-kid login statuses: {sorted(set(statuses))} x{len(statuses)}.",
        "",
        "| phase | req/s | p50 ms | p99 ms | max ms | errors |",
        "|-------|------:|-------:|-------:|-------:|-------:|",
        *[f"| {n} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.max_ms:.1f} | {r.errors} |" for n, r in rows],
        "",
        f"**{'STALLED' if stalled else 'ok'}**: the slowest cached-kid login took {during.max_ms:.0f} ms "
        f"(a stall would be >= {args.jwks_delay * 500:.0f} ms).",
    ]  # fmt: skip
    if args.duration < 10:
        lines += ["", f"Smoke run ({args.duration:g} s per phase): req/s and latencies are noisy."]
    return "\n".join(lines) + "\n"
