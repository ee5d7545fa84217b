"""What each unauthenticated endpoint costs a real authmount process, per call.

Run: ``.venv/bin/python bench/anon_cost.py -n 2000`` (``--cases auth_url,health`` for a few,
``--json`` for machine-readable output). It starts ``authmount server`` on a fresh SQLite
file (pinned to ``--cpus``, the per-IP rate limit off so one client can send thousands of
calls; every other limit at its default), a tiny in-process IdP (discovery document, a
token endpoint that refuses every code and answers ``authorization_pending`` to every device
poll, a device authorization endpoint), enables ``jwt``, ``oidc`` (with a ``device`` and a
``direct`` role besides ``web``), a form_post ``oidcfp`` mount and two OIDC provider clients
(confidential, public), and then, for each case, sends ``n`` calls one after another on one keep-alive
connection, the way an anonymous client can. Per case it prints:

- **storage**: the rows and bytes (key + value) the calls left in the ``kv`` table, the
  growth of the database file plus its WAL right after the calls, and whether SQLite saw
  any commit at all (``PRAGMA data_version`` from a read-only connection);
- **memory**: the server's RSS (and its anonymous part, what a leak grows) after the calls
  minus before, per call;
- **CPU**: the server's on-CPU time per call, all threads (``/proc/<pid>/task/*/schedstat``,
  nanoseconds), and the client-side latency (median).

Each value an anonymous caller sends to the OIDC paths is sent at its byte limit
(``plugin.path_oidc.LIMITS``), the worst an attacker can do without a 400.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``plugin`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import authmount
from bench.jwtgen import make_keys
from bench.procs import process_tree, rss_fields
from plugin.path_oidc import LIMITS

REDIRECT = "http://localhost:8250/oidc/callback"
DIRECT_PATH = "/v1/auth/oidc/oidc/callback"


class FakeIdP:
    """Discovery for the OIDC mounts; the token endpoint refuses every code (400) and keeps
    every device login pending; the device endpoint hands out device codes."""

    def __init__(self) -> None:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/.well-known/openid-configuration":
                    self._send(200, {
                        "issuer": idp.issuer, "authorization_endpoint": idp.issuer + "/authorize",
                        "token_endpoint": idp.issuer + "/token", "jwks_uri": idp.issuer + "/jwks",
                        "device_authorization_endpoint": idp.issuer + "/device",
                    })
                else:
                    self._send(200, {"keys": []})

            def do_POST(self) -> None:  # noqa: N802
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
                if self.path == "/device":
                    self._send(200, {
                        "device_code": "d" * 43, "user_code": "ABCD-EFGH", "interval": 5, "expires_in": 600,
                        "verification_uri": idp.issuer + "/device",
                        "verification_uri_complete": idp.issuer + "/device?user_code=ABCD-EFGH",
                    })
                elif form.get("grant_type") == ["urn:ietf:params:oauth:grant-type:device_code"]:
                    self._send(400, {"error": "authorization_pending"})
                else:
                    self._send(400, {"error": "invalid_grant"})

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of pid and its children so far."""
    total = 0
    for p in process_tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
    return total


class Store:
    """The server's SQLite file, seen from a read-only connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def snapshot(self) -> dict[str, int]:
        rows, size = self.db.execute("SELECT count(*), coalesce(sum(length(key) + length(value)), 0) FROM kv").fetchone()
        wal = Path(str(self.path) + "-wal")
        return {
            "rows": int(rows),
            "bytes": int(size),
            "files": self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0),
            "version": int(self.db.execute("PRAGMA data_version").fetchone()[0]),
        }


@dataclass
class Case:
    name: str
    method: str
    path: str
    body: Callable[[], tuple[bytes | None, str | None]]  # (body, content type)
    expect: int
    headers: dict[str, str] = field(default_factory=dict)


PROVIDER = "/v1/identity/oidc/provider/default"


def _json(data: dict[str, Any]) -> Callable[[], tuple[bytes, str]]:
    raw = json.dumps(data).encode()
    return lambda: (raw, "application/json")


def _none() -> tuple[None, None]:
    return None, None


def build_cases(base: str, keys_forged: str, provider: dict[str, str]) -> list[Case]:
    conn = http.client.HTTPConnection(urlsplit(base).netloc, timeout=30)

    def call(method: str, path: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        conn.request(method, path, body=json.dumps(data) if data else None, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        reply: dict[str, Any] = json.loads(resp.read() or b"{}")
        return reply

    big = {
        "role": "web",
        "redirect_uri": REDIRECT + "?namespace=" + "n" * LIMITS["namespace"],
        "client_nonce": "c" * LIMITS["client_nonce"],
    }
    url = call("POST", "/v1/auth/oidc/oidc/auth_url", big)["data"]["auth_url"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    fp_url = call("POST", "/v1/auth/oidcfp/oidc/auth_url", big)["data"]["auth_url"]
    fp_state = parse_qs(urlsplit(fp_url).query)["state"][0]
    device = {"role": "dev", "client_nonce": "c" * LIMITS["client_nonce"]}
    device_state = call("POST", "/v1/auth/oidc/oidc/auth_url", device)["data"]["state"]
    direct = {"role": "dir", "redirect_uri": base + DIRECT_PATH, "client_nonce": "c" * LIMITS["client_nonce"]}
    direct_state = call("POST", "/v1/auth/oidc/oidc/auth_url", direct)["data"]["state"]
    conn.close()
    forged = "am1.1." + "A" * (len(state) - 6)
    code = "x" * LIMITS["code"]
    nonce = "c" * LIMITS["client_nonce"]
    return [
        Case("login (malformed JWT)", "POST", "/v1/auth/jwt/login", _json({"role": "r", "jwt": "x" * 16384}), 400),
        Case("login (forged signature)", "POST", "/v1/auth/jwt/login", _json({"role": "r", "jwt": keys_forged}), 400),
        Case("inline login (malformed JWT), sys/auth", "GET", "/v1/sys/auth", _none, 400,
             authmount.inline_headers("r", "x" * 6000)),
        Case("inline login (forged signature), sys/auth", "GET", "/v1/sys/auth", _none, 400,
             authmount.inline_headers("r", keys_forged)),
        Case("oidc/auth_url", "POST", "/v1/auth/oidc/oidc/auth_url", _json(big), 200),
        Case("oidc/callback GET (forged state)", "GET",
             "/v1/auth/oidc/oidc/callback?" + urlencode({"state": forged, "code": code[:2048], "client_nonce": nonce}),
             _none, 400),
        Case("oidc/callback GET (real state, wrong code)", "GET",
             "/v1/auth/oidc/oidc/callback?" + urlencode({"state": state, "code": code[:2048], "client_nonce": nonce}),
             _none, 400),
        Case("oidc/callback POST (forged state)", "POST", "/v1/auth/oidcfp/oidc/callback",
             _json({"state": forged, "code": code}), 400),
        Case("oidc/callback POST (real state, wrong code)", "POST", "/v1/auth/oidcfp/oidc/callback",
             _json({"state": fp_state, "code": code}), 400),
        Case("oidc/auth_url (device)", "POST", "/v1/auth/oidc/oidc/auth_url", _json(device), 200),
        Case("oidc/poll (forged state)", "POST", "/v1/auth/oidc/oidc/poll",
             _json({"state": forged, "client_nonce": nonce}), 400),
        Case("oidc/poll (device, pending)", "POST", "/v1/auth/oidc/oidc/poll",
             _json({"state": device_state, "client_nonce": nonce}), 400),
        Case("oidc/poll (direct, pending)", "POST", "/v1/auth/oidc/oidc/poll",
             _json({"state": direct_state, "client_nonce": nonce}), 400),
        Case("oidc/callback GET (direct, confirmation page)", "GET",
             DIRECT_PATH + "?" + urlencode({"state": direct_state, "code": code[:2048]}), _none, 200),
        Case("oidc/callback GET (direct, confirmed, wrong code)", "GET",
             DIRECT_PATH + "?" + urlencode({"state": direct_state, "code": code[:2048], "confirmation": "1"}), _none, 400),
        Case("oidc/callback GET (direct, error_description)", "GET",
             DIRECT_PATH + "?" + urlencode({"state": direct_state, "error": "e" * LIMITS["error"],
                                            "error_description": "<" * LIMITS["error_description"]}), _none, 400),
        Case("provider token (unknown client)", "POST", PROVIDER + "/token",
             _json({"grant_type": "authorization_code", "code": "x", "client_id": "nope", "client_secret": "x"}), 401),
        Case("provider token (client authenticated, forged code)", "POST", PROVIDER + "/token",
             _json({"grant_type": "authorization_code", "code": "1." + "A" * 600, "redirect_uri": REDIRECT,
                    "client_id": provider["client_id"], "client_secret": provider["client_secret"]}), 400),
        Case("provider token (public client, forged code)", "POST", PROVIDER + "/token",
             _json({"grant_type": "authorization_code", "code": "1." + "A" * 600, "redirect_uri": REDIRECT,
                    "client_id": provider["public_id"]}), 400),
        Case("provider userinfo (forged bearer)", "GET", PROVIDER + "/userinfo", _none, 401,
             {"Authorization": "Bearer hvb." + "A" * 300}),
        Case("provider discovery", "GET", PROVIDER + "/.well-known/openid-configuration", _none, 200),
        Case("provider keys", "GET", PROVIDER + "/.well-known/keys", _none, 200),
        Case("sys/internal/ui/mounts", "GET", "/v1/sys/internal/ui/mounts", _none, 200),
        Case("sys/health", "GET", "/v1/sys/health", _none, 200),
        Case("sys/seal-status", "GET", "/v1/sys/seal-status", _none, 200),
        Case("sys/init", "GET", "/v1/sys/init", _none, 200),
        Case("sys/leader", "GET", "/v1/sys/leader", _none, 200),
    ]


def run_case(case: Case, base: str, pid: int, store: Store, n: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection(urlsplit(base).netloc, timeout=30)

    def one() -> float:
        body, ctype = case.body()
        t0 = time.perf_counter()
        conn.request(case.method, case.path, body=body,
                     headers={**case.headers, **({"Content-Type": ctype} if ctype else {})})
        resp = conn.getresponse()
        resp.read()
        if resp.status != case.expect:
            raise RuntimeError(f"{case.name}: HTTP {resp.status}, expected {case.expect}")
        return time.perf_counter() - t0

    for _ in range(min(50, n)):  # warm up: caches, discovery, code paths
        one()
    time.sleep(3)  # let the idle WAL checkpoint run (it truncates the WAL after 2 s)
    before, rss0, cpu0 = store.snapshot(), rss_fields(pid), cpu_ns(pid)
    latencies = [one() for _ in range(n)]
    cpu1, rss1, after = cpu_ns(pid), rss_fields(pid), store.snapshot()
    conn.close()
    return {
        "case": case.name,
        "calls": n,
        "rows": after["rows"] - before["rows"],
        "stored_bytes_per_call": (after["bytes"] - before["bytes"]) / n,
        "file_growth_bytes": after["files"] - before["files"],
        "commits_seen": after["version"] != before["version"],
        "rss_growth_per_call": (rss1["VmRSS"] - rss0["VmRSS"]) / n,
        "anon_growth_per_call": (rss1["RssAnon"] - rss0["RssAnon"]) / n,
        "rss_after_mib": rss1["VmRSS"] / 2**20,
        "cpu_us_per_call": (cpu1 - cpu0) / n / 1000,
        "p50_ms": statistics.median(latencies) * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="calls per case")
    parser.add_argument("--cpus", default="0", help="taskset CPU list for the server")
    parser.add_argument("--cases", default="", help="comma-separated substrings of case names")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    reason = authmount.available()
    if reason:
        sys.exit(reason)
    workdir = Path(tempfile.mkdtemp(prefix="anon-cost-"))
    idp = FakeIdP()
    keys, attacker = make_keys(), make_keys()
    server = authmount.start("anon", workdir, cpus=args.cpus, log_level="warning")
    try:
        base, root = server.url, server.extra["root_token"]
        must = authmount._must
        must(base, "POST", "/v1/sys/auth/jwt", root, {"type": "jwt"})
        must(base, "POST", "/v1/auth/jwt/config", root, {"jwt_validation_pubkeys": [keys.public_pem]})
        must(base, "POST", "/v1/auth/jwt/role/r", root,
             {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["bench"], "token_policies": ["p"]})
        for mount, mode in (("oidc", "query"), ("oidcfp", "form_post")):
            must(base, "POST", f"/v1/sys/auth/{mount}", root, {"type": "oidc"})
            must(base, "POST", f"/v1/auth/{mount}/config", root, {
                "oidc_discovery_url": idp.issuer, "oidc_client_id": "bench", "oidc_client_secret": "s",
                "oidc_response_mode": mode, "namespace_in_state": True,
            })
            must(base, "POST", f"/v1/auth/{mount}/role/web", root, {"user_claim": "sub", "allowed_redirect_uris": [REDIRECT]})
        must(base, "POST", "/v1/auth/oidc/role/dev", root,
             {"user_claim": "sub", "allowed_redirect_uris": [REDIRECT], "callback_mode": "device"})
        must(base, "POST", "/v1/auth/oidc/role/dir", root,
             {"user_claim": "sub", "allowed_redirect_uris": [base + DIRECT_PATH], "callback_mode": "direct"})
        for name, kind in (("bench", "confidential"), ("pub", "public")):  # the OIDC provider's clients
            must(base, "POST", f"/v1/identity/oidc/client/{name}", root,
                 {"redirect_uris": [REDIRECT], "assignments": ["allow_all"], "client_type": kind})
        bench_client = must(base, "GET", "/v1/identity/oidc/client/bench", root)["data"]
        provider = {"client_id": bench_client["client_id"], "client_secret": bench_client["client_secret"],
                    "public_id": must(base, "GET", "/v1/identity/oidc/client/pub", root)["data"]["client_id"]}
        store = Store(workdir / "anon" / "authmount.db")
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        results = []
        for case in build_cases(base, attacker.token, provider):
            if wanted and not any(w in case.name for w in wanted):
                continue
            results.append(run_case(case, base, server.proc.pid, store, args.n))
            if not args.json:
                r = results[-1]
                print(
                    f"{r['case']:<45} rows {r['rows']:>3}  stored {r['stored_bytes_per_call']:>6.1f} B/call  "
                    f"files {r['file_growth_bytes']:>+8d} B  commits {'yes' if r['commits_seen'] else 'no ':<3}  "
                    f"RSS {r['rss_growth_per_call']:>+7.1f} B/call (anon {r['anon_growth_per_call']:>+7.1f})  "
                    f"CPU {r['cpu_us_per_call']:>7.1f} µs/call  p50 {r['p50_ms']:.2f} ms",
                    flush=True,
                )
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            print(f"server RSS at the end: {rss_fields(server.proc.pid)['VmRSS'] / 2**20:.1f} MiB")
    finally:
        server.stop()
        idp.close()


if __name__ == "__main__":
    main()
