"""Crash and shutdown safety of a real authmount process on SQLite file storage.

``kill -9`` in the middle of a burst of concurrent logins: after a restart every login
that was answered 200 still has a working token, mounts/roles/policies are intact and
``PRAGMA integrity_check`` is ok. SIGTERM while logins are in flight (held up on a slow
JWKS fetch): every in-flight request gets a complete 200, new connections are refused,
the process exits 0 and the issued tokens survive the restart.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.jsonserver import JSONServer
from tests.e2e.serverproc import ServerProc, launch, start_server
from tests.plugin.keyfactory import default_claims, jwks, make_token, rsa_key

pytestmark = pytest.mark.e2e

KEY = rsa_key(kid="crash-1", slot=31)
TIMEOUT = 30
POLICY = 'path "auth/token/lookup-self" {\n  capabilities = ["read"]\n}\n'


def sqlite_config(workdir: Path) -> dict[str, Any]:
    return {"storage": {"type": "sqlite", "path": str(workdir / "data" / "authmount.db")}, "log_format": "json"}


def call(srv: ServerProc, method: str, path: str, token: str | None, body: Any = None) -> requests.Response:
    headers = {"X-Vault-Token": token} if token else {}
    return requests.request(method, f"{srv.url}/v1/{path}", json=body, headers=headers, timeout=TIMEOUT)


def ok(srv: ServerProc, method: str, path: str, body: Any = None) -> dict[str, Any]:
    resp = call(srv, method, path, srv.root_token, body)
    assert resp.status_code in (200, 204), (method, path, resp.status_code, resp.text)
    return resp.json() if resp.status_code == 200 else {}


def login_body(sub: str = "alice") -> dict[str, str]:
    return {"role": "ci", "jwt": make_token(default_claims(sub=sub), key=KEY)}


def integrity_check(db: Path) -> str:
    conn = sqlite3.connect(str(db))
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def setup_state(srv: ServerProc, **config: Any) -> None:
    """A mount with config and role, a policy, as an operator would create them."""
    ok(srv, "POST", "sys/auth/ci/jwt", {"type": "jwt", "description": "crash test"})
    ok(srv, "POST", "auth/ci/jwt/config", config or {"jwt_validation_pubkeys": [KEY.pem],
                                                      "bound_issuer": "https://idp.example.com"})
    ok(srv, "POST", "auth/ci/jwt/role/ci", {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
                                             "token_policies": ["ci"], "token_ttl": "1h"})
    ok(srv, "POST", "sys/policy/ci", {"policy": POLICY})


def assert_state_intact(srv: ServerProc) -> None:
    assert "ci/jwt/" in ok(srv, "GET", "sys/auth")["data"]
    assert ok(srv, "GET", "auth/ci/jwt/role/ci")["data"]["token_policies"] == ["ci"]
    assert ok(srv, "GET", "sys/policy/ci")["data"]["rules"] == POLICY


@pytest.fixture(autouse=True)
def _no_vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)


def test_kill_9_during_login_burst_loses_no_acknowledged_token(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    db = tmp_path / "data" / "authmount.db"
    srv = launch(config=config, workdir=tmp_path)
    try:
        srv.wait_ready(30)
        root = srv.root_token
        assert root
        setup_state(srv)
        before = ok(srv, "POST", "auth/token/create", {"policies": ["ci"], "ttl": "1h"})["auth"]["client_token"]

        acknowledged: list[str] = []
        errors: list[str] = []
        lock = threading.Lock()
        enough = threading.Event()

        def burst(worker: int) -> None:
            with requests.Session() as http:
                for i in range(10_000):
                    try:
                        resp = http.post(f"{srv.url}/v1/auth/ci/jwt/login", json=login_body(f"w{worker}-{i}"),
                                         timeout=TIMEOUT)
                    except requests.RequestException:
                        return  # the process is gone
                    if resp.status_code != 200:
                        with lock:
                            errors.append(f"{resp.status_code} {resp.text[:200]}")
                        return
                    with lock:
                        acknowledged.append(resp.json()["auth"]["client_token"])
                        if len(acknowledged) >= 60:
                            enough.set()

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(burst, w) for w in range(8)]
            assert enough.wait(120), "the burst never got going"
            srv.proc.send_signal(signal.SIGKILL)  # mid-burst: requests are in flight right now
            for f in futures:
                f.result(TIMEOUT)
        srv.proc.wait(10)
        assert srv.returncode == -signal.SIGKILL
        assert not errors, errors
    finally:
        srv.kill()
    assert integrity_check(db) == "ok"

    with start_server(config=config, workdir=tmp_path, root_token=root) as again:
        assert "Root Token:" not in again.stdout_text()
        assert_state_intact(again)
        lost = [t[:8] for t in [before, *acknowledged]
                if call(again, "GET", "auth/token/lookup-self", t).status_code != 200]
        assert not lost, f"{len(lost)} of {len(acknowledged) + 1} acknowledged tokens lost"
        # and the server keeps working after the crash
        assert call(again, "POST", "auth/ci/jwt/login", None, login_body()).status_code == 200
    assert again.returncode == 0
    assert integrity_check(db) == "ok"


class SlowJWKS:
    """Serves the JWKS, but holds every response until ``release()`` once ``hold()`` is on."""

    def __init__(self) -> None:
        self.requests = 0
        self.arrived = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._server = JSONServer(lambda path: jwks(KEY), before=self._arrive)
        self.url = f"http://127.0.0.1:{self._server.port}/jwks"

    def _arrive(self, path: str) -> None:
        self.requests += 1
        self.arrived.set()
        self._gate.wait(60)

    def hold(self) -> None:
        self.requests = 0
        self.arrived.clear()
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self._gate.set()
        self._server.close()


@pytest.fixture
def slow_jwks() -> Iterator[SlowJWKS]:
    server = SlowJWKS()
    yield server
    server.close()


def test_sigterm_during_burst_completes_in_flight_requests(tmp_path: Path, slow_jwks: SlowJWKS) -> None:
    config = sqlite_config(tmp_path)
    with start_server(config=config, workdir=tmp_path) as first:
        root = first.root_token
        assert root
        setup_state(first, jwks_url=slow_jwks.url, bound_issuer="https://idp.example.com")
    assert first.returncode == 0

    # A fresh process has an empty key cache: the first logins all wait on one JWKS fetch.
    srv = launch(config=config, workdir=tmp_path)
    try:
        srv.wait_ready(30)
        srv.root_token = root
        slow_jwks.hold()
        workers = 12
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(requests.post, f"{srv.url}/v1/auth/ci/jwt/login", json=login_body(f"u{i}"),
                                   timeout=TIMEOUT) for i in range(workers)]
            assert slow_jwks.arrived.wait(30), "no login reached the JWKS fetch"
            time.sleep(0.3)  # let every login connect and join the in-flight fetch
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # the server stops accepting while the logins are still held up
            with pytest.raises(requests.ConnectionError):
                requests.get(f"{srv.url}/v1/sys/health", timeout=5)
            assert srv.returncode is None  # still draining
            slow_jwks.release()
            responses = [f.result(TIMEOUT) for f in futures]
        assert [r.status_code for r in responses] == [200] * workers, [r.text[:200] for r in responses]
        tokens = [r.json()["auth"]["client_token"] for r in responses]  # complete JSON bodies
        assert srv.proc.wait(TIMEOUT) == 0
        assert slow_jwks.requests == 1  # single flight
        assert "Traceback" not in srv.log_text()
    finally:
        srv.kill()
    assert integrity_check(tmp_path / "data" / "authmount.db") == "ok"

    slow_jwks.release()
    with start_server(config=config, workdir=tmp_path, root_token=root) as again:
        assert_state_intact(again)
        for tok in tokens:
            assert call(again, "GET", "auth/token/lookup-self", tok).status_code == 200
    assert again.returncode == 0


def test_sigterm_mid_burst_answers_are_complete_and_durable(tmp_path: Path) -> None:
    """Fast logins hammering the server when SIGTERM lands: every answer that arrives is a
    complete 200 (never a truncated body or a 5xx), the exit code is 0, and every answered
    token survives the restart. Requests after the listener closed are refused."""
    config = sqlite_config(tmp_path)
    srv = launch(config=config, workdir=tmp_path)
    answered: list[str] = []
    broken: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()
    try:
        srv.wait_ready(30)
        root = srv.root_token
        setup_state(srv)

        def burst(worker: int) -> None:
            for i in range(10_000):
                try:
                    resp = requests.post(f"{srv.url}/v1/auth/ci/jwt/login", json=login_body(f"t{worker}-{i}"),
                                         timeout=TIMEOUT)
                except requests.ConnectionError:
                    return  # refused or closed before an answer: the server is going away
                except requests.RequestException as exc:  # truncated body, timeout ...
                    with lock:
                        broken.append(repr(exc))
                    return
                try:
                    token = resp.json()["auth"]["client_token"] if resp.status_code == 200 else None
                except ValueError:
                    token = None
                with lock:
                    if token is None:
                        broken.append(f"{resp.status_code} {resp.text[:200]}")
                        return
                    answered.append(token)
                    if len(answered) >= 30:
                        enough.set()

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(burst, w) for w in range(6)]
            assert enough.wait(120), "the burst never got going"
            srv.proc.send_signal(signal.SIGTERM)
            for f in futures:
                f.result(60)
        assert srv.proc.wait(TIMEOUT) == 0
        assert not broken, broken
        assert "Traceback" not in srv.log_text()
    finally:
        srv.kill()
    assert integrity_check(tmp_path / "data" / "authmount.db") == "ok"
    with start_server(config=config, workdir=tmp_path, root_token=root) as again:
        lost = [t for t in answered if call(again, "GET", "auth/token/lookup-self", t).status_code != 200]
        assert not lost, f"{len(lost)} of {len(answered)} answered tokens lost"
    assert again.returncode == 0
