"""Audit devices and metrics against a real ``authmount server`` process, driven with hvac.

A file device enabled with ``client.sys.enable_audit_device``; a login, a token use and a
revocation, then the file: every request has its request and response line, no raw token,
JWT or secret is anywhere in it, and ``sys/audit-hash`` of the token is the logged hash.
Fail closed: the only device made unwritable (its file replaced by ``/dev/full``, reopened
with a real SIGHUP) refuses logins with 503 and issues no token; repairing it (and SIGHUP)
restores service. A socket device against a local TCP listener. Metrics parsed with
prometheus-client's own parser, one process and ``--workers 2`` (multi-process mode).
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.serverproc import ServerProc, start_server
from tests.plugin.keyfactory import make_token, rsa_key

pytestmark = pytest.mark.e2e

KEY = rsa_key(kid="audit-e2e")
ISS = "https://ci.example.com"
SECRET = "oidc-client-secret-that-must-never-be-logged"


@pytest.fixture(autouse=True)
def _no_vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)


def jwt(**claims: Any) -> str:
    base = {"iss": ISS, "sub": "repo:org/app", "aud": "authmount", "iat": int(time.time()), "exp": int(time.time()) + 600}
    return make_token(base | claims, key=KEY)


def configure(srv: ServerProc, mount: str = "jwt") -> hvac.Client:
    client = srv.client()
    client.sys.enable_auth_method("jwt", path=mount)
    client.write_data(f"auth/{mount}/config", data={"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISS})
    client.write_data(f"auth/{mount}/role/ci", data={"role_type": "jwt", "user_claim": "sub",
                                                     "bound_audiences": ["authmount"], "token_policies": ["deploy"]})
    return client


def login(srv: ServerProc, token: str, mount: str = "jwt") -> requests.Response:
    return requests.post(f"{srv.url}/v1/auth/{mount}/login", json={"role": "ci", "jwt": token}, timeout=10)


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_device_records_every_request_hashed(tmp_path: Path) -> None:
    log = tmp_path / "audit" / "audit.log"
    with start_server(dev=True, workdir=tmp_path) as srv:
        client = configure(srv)
        client.sys.enable_audit_device("file", options={"file_path": str(log)})
        assert "file/" in client.sys.list_enabled_audit_devices()["data"]
        # a mount keyed with an HMAC secret: the secret is in a request's data
        client.sys.enable_auth_method("jwt", path="shared")
        resp = requests.post(f"{srv.url}/v1/auth/shared/config", headers={"X-Vault-Token": srv.root_token or ""},
                             json={"jwt_validation_hmac_secrets": [SECRET]}, timeout=10)
        assert resp.status_code == 204, resp.text
        good = jwt()
        issued = login(srv, good).json()["auth"]
        user = hvac.Client(url=srv.url, token=issued["client_token"])
        assert user.auth.token.lookup_self()["data"]["policies"] == ["default", "deploy"]
        bad = jwt(aud="elsewhere")
        assert login(srv, bad).status_code == 400
        user.auth.token.revoke_self()
        hashed = client.sys.calculate_hash(path="file", input_to_hash=issued["client_token"])["data"]["hash"]
        time.sleep(0.1)
    text = log.read_text()
    for raw in (good, bad, issued["client_token"], issued["accessor"], srv.root_token or "", SECRET):
        assert raw and raw not in text, raw[:12]
    lines = entries(log)
    assert lines[0]["request"]["path"] == "sys/audit/test"
    paired: dict[str, list[str]] = {}
    for e in lines[2:]:  # after the test entry and the enabling request's response
        paired.setdefault(e["request"]["id"], []).append(e["type"])
    assert paired and all(kinds == ["request", "response"] for kinds in paired.values()), paired
    issued_entry = next(e for e in lines if e["type"] == "response" and "auth" in e.get("response", {}))
    assert issued_entry["response"]["auth"]["client_token"] == hashed
    used = {e["request"]["path"] for e in lines if e["request"].get("client_token") == hashed}
    assert used == {"auth/token/lookup-self", "auth/token/revoke-self"}
    refused = next(e for e in lines if e.get("response", {}).get("login_failure"))
    assert refused["response"]["login_failure"]["reason"] == "audience"
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_fail_closed_until_the_device_is_repaired(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    config = {"storage": {"type": "sqlite", "path": str(tmp_path / "db")}, "log_level": "info"}
    with start_server(config=config, workdir=tmp_path) as srv:
        client = configure(srv)
        client.sys.enable_audit_device("file", options={"file_path": str(log)})
        assert login(srv, jwt()).status_code == 200
        before = client.auth.token.list_accessors()["data"]["keys"]
        log.unlink()
        log.symlink_to("/dev/full")  # every write fails: ENOSPC
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        resp = login(srv, jwt())
        assert resp.status_code == 503, resp.text
        assert resp.json()["errors"] == ["audit unavailable: no audit device could record the request"]
        assert requests.get(f"{srv.url}/v1/sys/health", timeout=5).status_code == 503
        with pytest.raises(hvac.exceptions.VaultDown):  # the root token's requests fail closed too
            client.auth.token.list_accessors()
        log.unlink()
        srv.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert requests.get(f"{srv.url}/v1/sys/health", timeout=5).status_code == 200
        # no token was issued while the device failed: only the one login after repair adds one
        assert login(srv, jwt()).status_code == 200
        after = client.auth.token.list_accessors()["data"]["keys"]
        assert len(after) == len(before) + 1
    assert "audit_device_failed" in srv.log_text()


class Listener:
    """A TCP listener collecting lines (a log collector's socket input)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn, conn.makefile("rb") as stream:
            for line in stream:
                self.lines.append(line)

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return [json.loads(line) for line in self.lines]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def test_socket_device(tmp_path: Path, listener: Listener) -> None:
    with start_server(dev=True, workdir=tmp_path) as srv:
        client = configure(srv)
        client.sys.enable_audit_device("socket", path="collector",
                                       options={"address": f"127.0.0.1:{listener.port}", "socket_type": "tcp"})
        token = jwt()
        assert login(srv, token).status_code == 200
        got = listener.wait_for(4)
    logged = [(e["type"], e["request"]["path"]) for e in got]
    assert logged[:4] == [("request", "sys/audit/test"), ("response", "sys/audit/collector"),
                          ("request", "auth/jwt/login"), ("response", "auth/jwt/login")]
    assert token.encode() not in b"".join(listener.lines)


def scrape(url: str, token: str | None) -> dict[tuple[str, tuple[Any, ...]], float]:
    resp = requests.get(f"{url}/v1/sys/metrics?format=prometheus", headers={"X-Vault-Token": token or ""},
                        timeout=10)
    assert resp.status_code == 200, resp.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(resp.text) for s in f.samples}


def logins(samples: dict[tuple[str, tuple[Any, ...]], float], outcome: str, role: str = "ci") -> float:
    return samples.get(("authmount_logins_total", (("mount", "auth/jwt/"), ("outcome", outcome), ("role", role))), 0)


def test_metrics_move_with_logins(tmp_path: Path) -> None:
    with start_server(dev=True, workdir=tmp_path) as srv:
        configure(srv)
        for token in (jwt(), jwt(), jwt(aud="x"), jwt(iss="https://evil.example.com"), "garbage"):
            login(srv, token)
        samples = scrape(srv.url, srv.root_token)
    assert [logins(samples, o) for o in ("success", "audience", "issuer", "parse")] == [2, 1, 1, 1]
    assert samples[("vault_core_handle_login_request_count", ())] == 5
    created = (("auth_method", "jwt"), ("creation_ttl", "+Inf"), ("mount_point", "auth/jwt/"), ("namespace", "root"),
               ("token_type", "service"))
    assert samples[("vault_token_creation_total", created)] == 2  # "vault_token_creation" on the wire


def test_metrics_add_up_across_workers(tmp_path: Path, postgres_dsn: str) -> None:
    """``--workers 2``: prometheus-client's multi-process mode; any worker answers the sum."""
    from tests.e2e.idp import free_port

    port = free_port()
    config = {"listen_address": f"127.0.0.1:{port}", "storage": {"type": "postgres", "dsn": postgres_dsn}}
    with start_server(config=config, workdir=tmp_path, args=["--workers", "2"]) as srv:
        deadline = time.monotonic() + 10
        while srv.root_token is None and time.monotonic() < deadline:
            time.sleep(0.05)
        configure(srv)
        time.sleep(0.5)  # the other worker sees the mount
        ok = sum(login(srv, jwt()).status_code == 200 for _ in range(20))
        assert ok == 20
        time.sleep(0.2)  # a worker writes its observations to the shared files within 100 ms
        seen = set()
        for _ in range(10):  # new connections land on either worker: every answer is the total
            seen.add(logins(scrape(srv.url, srv.root_token), "success"))
        assert seen == {20.0}
    assert srv.returncode == 0
