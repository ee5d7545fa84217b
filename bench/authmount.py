"""Start authmount for the benchmark and configure its JWT mount over the HTTP API."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import Server, free_port, process_tree, start_pinned

if TYPE_CHECKING:
    from tests.pg import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
ROLE = "bench"
BATCH_ROLE = "bench-batch"
# server/cli.py's banner prints ``Root Token: <id>`` once, on first start.
ROOT_TOKEN_RE = re.compile(r"^Root Token: (\S+)", re.MULTILINE)


def server_argv() -> list[str]:
    """How to launch ``authmount server``: the venv console script, else ``-m server.cli``."""
    script = Path(sys.executable).with_name("authmount")
    if script.exists():
        return [str(script), "server"]
    return [sys.executable, "-m", "server.cli", "server"]


def available() -> str | None:
    """None when authmount can be started, else the reason it cannot (yet)."""
    try:
        done = subprocess.run(
            [*server_argv(), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run authmount: {exc}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return f"`authmount server --help` failed: {tail[0]}"
    return None


def supports_workers() -> bool:
    """Whether ``authmount server`` has a ``--workers`` flag."""
    done = subprocess.run(
        [*server_argv(), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    return "--workers" in done.stdout


def write_config(
    directory: Path, port: int, *, log_level: str, storage: dict[str, Any] | None = None,
    event_loop: str = "asyncio",
) -> Path:
    """A minimal YAML config: loopback listener and durable SQLite storage (or ``storage``)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "authmount.yaml"
    db = directory / "authmount.db"
    if storage is not None and storage.get("type") == "postgres" and "key_file" not in storage:
        storage = {**storage, "key_file": str(directory / "storage.key")}  # one key for every worker
    # JSON is valid YAML; it spares us quoting rules.
    config.write_text(
        json.dumps(
            {
                "listen_address": f"127.0.0.1:{port}",
                "storage": storage or {"type": "sqlite", "path": str(db)},
                "log_level": log_level,
                "event_loop": event_loop,
                # The load generator logs in from one IP far faster than any real client:
                # the per-IP login limit (default 50/s) would turn the run into 429s.
                "rate_limit": {"login_per_ip_per_second": 0},
            },
            indent=2,
        )
    )
    return config


def api(
    base: str, method: str, path: str, token: str | None, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One HTTP call to the Vault-style API; returns (status, JSON body or {})."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("X-Vault-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return exc.code, {"raw": raw.decode(errors="replace")}


def _must(
    base: str, method: str, path: str, token: str | None, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    status, reply = api(base, method, path, token, body)
    if status >= 300:
        raise RuntimeError(f"{method} {path} -> {status}: {reply}")
    return reply


def _root_token(server: Server, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = ROOT_TOKEN_RE.search(server.log_text())
        if match:
            return match.group(1)
        time.sleep(0.1)
    raise RuntimeError(f"no root token line in {server.log_path}:\n{server.log_text()[-2000:]}")


def start(
    name: str,
    workdir: Path,
    *,
    cpus: str,
    log_level: str,
    event_loop: str = "asyncio",
    workers: int = 1,
    storage: dict[str, Any] | None = None,
    tree: Path | None = None,
) -> Server:
    """Start authmount on a fresh SQLite file (or ``storage``); the root token goes into
    server.extra. ``tree``: run the server code of that checkout (``python -m server.cli``
    from it, which puts it first on the module path) instead of the installed one."""
    port = free_port()
    config = write_config(workdir / name, port, log_level=log_level, storage=storage, event_loop=event_loop)
    launch = [sys.executable, "-m", "server.cli", "server"] if tree is not None else server_argv()
    argv = [*launch, "--config", str(config)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    server = start_pinned(name, argv, cpus=cpus, port=port, log_dir=workdir / name, cwd=tree or ROOT)
    try:
        server.extra["root_token"] = _root_token(server)
    except BaseException:
        server.stop()
        raise
    return server


def configure_jwt_mount(server: Server, public_pem: str) -> None:
    """Enable auth/jwt with the static public key, a service-token role and a batch role."""
    base, root = server.url, server.extra["root_token"]
    _must(base, "POST", "/v1/sys/auth/jwt", root, {"type": "jwt"})
    _must(base, "POST", "/v1/auth/jwt/config", root, {"jwt_validation_pubkeys": [public_pem]})
    common = {
        "role_type": "jwt",
        "user_claim": "sub",
        "bound_audiences": ["bench"],
        "token_policies": ["p"],
    }
    _must(base, "POST", f"/v1/auth/jwt/role/{ROLE}", root, common)
    _must(base, "POST", f"/v1/auth/jwt/role/{BATCH_ROLE}", root, {**common, "token_type": "batch"})


def enable_file_audit(server: Server, path: Path) -> None:
    """Enable one file audit device at ``sys/audit/file`` writing to ``path``."""
    _must(server.url, "POST", "/v1/sys/audit/file", server.extra["root_token"],
          {"type": "file", "options": {"file_path": str(path)}})


def login(base: str, role: str, jwt: str, mount: str = "jwt") -> dict[str, Any]:
    """One login; returns the Vault ``auth`` block (raises on failure)."""
    reply = _must(base, "POST", f"/v1/auth/{mount}/login", None, {"role": role, "jwt": jwt})
    auth = reply.get("auth") or {}
    if not auth.get("client_token"):
        raise RuntimeError(f"login via role {role!r} returned no client_token: {reply}")
    return auth


def inline_headers(role: str, jwt: str, mount: str = "jwt") -> dict[str, str]:
    """The ``X-Vault-Inline-Auth-*`` headers of a login with ``role`` and ``jwt``: a request
    that carries them is authenticated by that login, and no token is stored."""
    def param(key: str, value: str) -> str:
        return base64.urlsafe_b64encode(json.dumps({"key": key, "value": value}).encode()).decode().rstrip("=")

    return {"X-Vault-Inline-Auth-Path": f"auth/{mount}/login", "X-Vault-Inline-Auth-Parameter-role": param("role", role),
            "X-Vault-Inline-Auth-Parameter-jwt": param("jwt", jwt)}


def child_token(server: Server) -> str:
    """A token made by ``auth/token/create`` with the root token (so it has a parent, whose
    liveness every use checks; a login's token has none)."""
    reply = _must(server.url, "POST", "/v1/auth/token/create", server.extra["root_token"],
                  {"policies": ["default"], "ttl": "24h"})
    return str(reply["auth"]["client_token"])


def start_postgres(cpus: str, durable: bool = True) -> PostgresServer:
    """A throw-away PostgreSQL (tests/pg.py) pinned to ``cpus``; durable settings by default.

    :raises RuntimeError: when no PostgreSQL can be installed or started.
    """
    from tests.pg import FAST_OPTIONS, PostgresServer, PostgresUnavailable, ensure_installed

    try:
        server = PostgresServer(ensure_installed(), extra_options=() if durable else FAST_OPTIONS)
        server.start()
    except PostgresUnavailable as exc:
        raise RuntimeError(str(exc)) from exc
    try:
        pid = int(Path(server.datadir, "postmaster.pid").read_text().split()[0])
        cpu_set = {int(c) for c in cpus.split(",")}
        # Backends fork from the postmaster later and inherit its affinity.
        for p in process_tree(pid):
            os.sched_setaffinity(p, cpu_set)
    except BaseException:
        server.stop()
        raise
    return server
