"""Operator essentials with real processes: TLS on the listener (hvac and the Vault CLI ``bao``
with ``VAULT_CACERT``, client certificates, the minimum version), SIGHUP (log level, rate
limits, seeded objects and the certificate reloaded, the process kept), the root token
written to a 0600 file, ``operator generate-root``, ``--dev --config`` and the listen address
override."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
import requests
import trustme
import yaml

from tests.e2e.serverproc import REPO_ROOT, ServerProc, ServerStartError, start_server

pytestmark = pytest.mark.e2e

BAO = Path(sys.executable).with_name("bao")


def authmount(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child = {"PYTHONPATH": str(REPO_ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    child.update(env or {})
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=cwd, env=child, capture_output=True,
                          text=True, timeout=120)


@dataclass
class Pki:
    """A CA (trustme), a server certificate for 127.0.0.1, a client certificate, as files."""

    dir: Path
    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert: Path
    client_key: Path

    def context(self, *, client: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def reissue(self) -> str:
        """A new server certificate in the same files; returns its serial (hex)."""
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))
        return _serial(self.cert_file.read_bytes())


def _serial(pem: bytes) -> str:
    from cryptography import x509

    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    pki = Pki(tmp_path, ca, tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key",
              tmp_path / "client.pem", tmp_path / "client.key")
    ca.cert_pem.write_to_path(str(pki.ca_file))
    pki.reissue()
    client = ca.issue_cert("ops@example.com")
    client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
    client.private_key_pem.write_to_path(str(pki.client_key))
    return pki


def _served_serial(srv: ServerProc, pki: Pki) -> str:
    host, port = srv.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with pki.context().wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return _serial(ssl.DER_cert_to_PEM_cert(der).encode())


def tls_config(pki: Pki, **extra: object) -> dict[str, object]:
    return {"storage": {"type": "memory"}, "tls_cert_file": str(pki.cert_file), "tls_key_file": str(pki.key_file),
            **extra}


# -- TLS -------------------------------------------------------------------------------------------
def test_tls_listener_serves_hvac_and_the_vault_cli_with_vault_cacert(pki: Pki, tmp_path: Path) -> None:
    config = tls_config(pki, initial_root_token_file=str(tmp_path / "root.token"))
    with start_server(config=config, workdir=tmp_path, ssl_context=pki.context()) as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        token = (tmp_path / "root.token").read_text().strip()
        client = hvac.Client(url=srv.url, token=token, verify=str(pki.ca_file))
        assert client.auth.token.lookup_self()["data"]["policies"] == ["root"]
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(srv.url + "/v1/sys/health", timeout=5)  # not trusted without the CA
        with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP on the TLS port
            requests.get(srv.url.replace("https://", "http://") + "/v1/sys/health", timeout=5)
        if BAO.exists():
            env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "VAULT_ADDR": srv.url, "BAO_ADDR": srv.url,
                   "VAULT_TOKEN": token, "BAO_TOKEN": token, "VAULT_CACERT": str(pki.ca_file),
                   "BAO_CACERT": str(pki.ca_file)}
            done = subprocess.run([str(BAO), "auth", "enable", "jwt"], env=env, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, done.stderr
            listed = subprocess.run([str(BAO), "auth", "list", "-format=json"], env=env, capture_output=True,
                                    text=True, timeout=60)
            assert "jwt/" in json.loads(listed.stdout)
            bad = subprocess.run([str(BAO), "auth", "list"], env={**env, "VAULT_CACERT": "", "BAO_CACERT": ""},
                                 capture_output=True, text=True, timeout=60)
            assert bad.returncode != 0 and "certificate" in bad.stderr
        # authmount apply over TLS, as the Vault CLI: VAULT_CACERT
        (tmp_path / "f.yaml").write_text(yaml.safe_dump({"policies": {"p": 'path "x" { capabilities = ["read"] }'}}))
        env = {"VAULT_ADDR": srv.url, "VAULT_TOKEN": token, "VAULT_CACERT": str(pki.ca_file)}
        applied = authmount("apply", "-f", "f.yaml", cwd=tmp_path, env=env)
        assert applied.returncode == 0, applied.stderr
        refused = authmount("apply", "-f", "f.yaml", cwd=tmp_path, env={**env, "VAULT_CACERT": ""})
        assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr


def test_client_certificates_required_and_minimum_version(pki: Pki, tmp_path: Path) -> None:
    config = tls_config(pki, tls_client_ca_file=str(pki.ca_file), tls_require_and_verify_client_cert=True,
                        tls_min_version="tls13")
    with start_server(config=config, dev=True, root_token_id="root", workdir=tmp_path,
                      ssl_context=pki.context(client=True)) as srv:
        with_cert = hvac.Client(url=srv.url, token="root", verify=str(pki.ca_file),
                                cert=(str(pki.client_cert), str(pki.client_key)))
        assert with_cert.sys.read_health_status(method="GET")["initialized"] is True
        without = hvac.Client(url=srv.url, token="root", verify=str(pki.ca_file))
        with pytest.raises(requests.exceptions.ConnectionError):
            without.sys.read_health_status(method="GET")
        old = pki.context(client=True)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        host, port = srv.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with pytest.raises(ssl.SSLError):
                old.wrap_socket(raw, server_hostname=host).close()
        if BAO.exists():
            env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "VAULT_ADDR": srv.url, "VAULT_TOKEN": "root",
                   "VAULT_CACERT": str(pki.ca_file), "VAULT_CLIENT_CERT": str(pki.client_cert),
                   "VAULT_CLIENT_KEY": str(pki.client_key)}
            status = subprocess.run([str(BAO), "status"], env=env, capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tls_key_file": ""}, "tls_key_file: tls_cert_file and tls_key_file go together"),
        ({"tls_require_and_verify_client_cert": True}, "tls_require_and_verify_client_cert: needs tls_client_ca_file"),
        ({"tls_min_version": "tls10"}, "tls_min_version: must be one of tls12, tls13"),
        ({"tls_cert_file": "/nonexistent.pem"}, "tls_cert_file/tls_key_file: /nonexistent.pem, "),
    ],
    ids=["key missing", "client cert without CA", "old version", "unreadable file"],
)
def test_bad_tls_settings_stop_the_start(pki: Pki, tmp_path: Path, extra: dict[str, object], message: str) -> None:
    (tmp_path / "tls.yaml").write_text(yaml.safe_dump({**tls_config(pki), "listen_address": "127.0.0.1:0", **extra}))
    result = authmount("server", "--config", "tls.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr.splitlines()[-1]


# -- SIGHUP ----------------------------------------------------------------------------------------
def _wait_for(srv: ServerProc, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = srv.log_text()
        if text in log:
            return log
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged:\n{srv.log_text()[-3000:]}")


def test_sighup_reloads_log_level_rate_limits_seeds_and_certificate(pki: Pki, tmp_path: Path) -> None:
    cfg = tmp_path / "authmount.yaml"
    base = {
        **tls_config(pki), "listen_address": "127.0.0.1:0", "log_level": "info",
        "mounts": [{"path": "jwt", "type": "jwt", "roles": {}}],
        "policies": {"ops": 'path "sys/auth" { capabilities = ["read"] }'},
        "rate_limit": {"login_burst": 100},
    }
    cfg.write_text(yaml.safe_dump(base))
    with start_server(config=cfg, workdir=tmp_path, ssl_context=pki.context()) as srv:
        client = hvac.Client(url=srv.url, token=srv.root_token, verify=str(pki.ca_file))
        before = _served_serial(srv, pki)
        changed = dict(base, log_level="debug", rate_limit={"login_burst": 2, "login_per_ip_per_second": 0.01},
                       policies={"ops": 'path "sys/auth" { capabilities = ["read", "sudo"] }'},
                       listen_address="127.0.0.1:1")
        cfg.write_text(yaml.safe_dump(changed))
        after = pki.reissue()
        srv.proc.send_signal(signal.SIGHUP)
        log = _wait_for(srv, '"event":"sighup_reload"')
        line = json.loads(next(x for x in log.splitlines() if '"sighup_reload"' in x))
        assert line["changes"] == [
            "log_level: info -> debug",
            "rate_limit.login_per_ip_per_second: 50.0 -> 0.01",
            "rate_limit.login_burst: 100 -> 2",
            "seed: update policy ops",
            f"tls certificate reloaded from {pki.cert_file}",
            "not applied until a restart: listen_address",
        ]
        assert srv.proc.poll() is None  # SIGHUP used to kill the process
        assert before != after and _served_serial(srv, pki) == after
        assert "sudo" in client.sys.read_acl_policy("ops")["data"]["policy"]
        statuses = [requests.post(f"{srv.url}/v1/auth/jwt/login", json={}, verify=str(pki.ca_file),
                                  timeout=5).status_code for _ in range(4)]
        assert statuses == [400, 400, 429, 429]  # the new burst of 2
        # a broken file: logged, the running settings stay
        cfg.write_text("log_level: loud\n")
        srv.proc.send_signal(signal.SIGHUP)
        log = _wait_for(srv, '"event":"sighup_reload_failed"')
        assert "log_level: must be one of debug, info, warning, error" in log
        assert client.sys.read_health_status(method="GET")["initialized"] is True
    assert srv.returncode == 0


# -- the root token --------------------------------------------------------------------------------
def test_root_token_file_and_generate_root(tmp_path: Path) -> None:
    token_file = tmp_path / "secrets" / "root.token"
    cfg = tmp_path / "authmount.yaml"
    cfg.write_text(yaml.safe_dump({"listen_address": "127.0.0.1:0", "initial_root_token_file": str(token_file),
                                   "storage": {"type": "sqlite", "path": str(tmp_path / "data" / "a.db")}}))
    with start_server(config=cfg, workdir=tmp_path) as srv:
        out = srv.stdout_text()
        root = token_file.read_text().strip()
        assert "Root Token:" not in out and root not in out and root not in srv.log_text()
        assert f"Initial root token written to {token_file} (mode 0600)" in out
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        assert srv.client(root).auth.token.lookup_self()["data"]["policies"] == ["root"]
        running = authmount("operator", "generate-root", "--config", str(cfg), cwd=tmp_path)
        assert running.returncode == 1 and "Error:" in running.stderr  # SQLite has one owner: stop the server
    with start_server(config=cfg, workdir=tmp_path) as srv:  # later starts leave the file alone
        assert token_file.read_text().strip() == root
    generated = authmount("operator", "generate-root", "--config", str(cfg), cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    new = generated.stdout.split("Root Token: ", 1)[1].strip()
    assert new != root and new.startswith("hvs.")
    with start_server(config=cfg, workdir=tmp_path) as srv:
        assert srv.client(new).auth.token.lookup_self()["data"]["policies"] == ["root"]
        assert srv.client(root).auth.token.lookup_self()["data"]["policies"] == ["root"]  # both stay valid
        assert new not in srv.log_text()
    fresh = tmp_path / "fresh.yaml"  # a first start whose token file already exists: refused before minting
    fresh.write_text(yaml.safe_dump({"listen_address": "127.0.0.1:0", "initial_root_token_file": str(token_file),
                                     "storage": {"type": "sqlite", "path": str(tmp_path / "b.db")}}))
    result = authmount("server", "--config", str(fresh), cwd=tmp_path)
    assert result.returncode == 1
    assert f"initial_root_token_file: {token_file} exists" in result.stderr.splitlines()[-1]
    assert token_file.read_text().strip() == root
    never = authmount("operator", "generate-root", "--config", str(tmp_path / "nothing.yaml"), cwd=tmp_path)
    assert never.returncode == 1 and "cannot read" in never.stderr


# -- dev with a config file, listen address override ---------------------------------------------------
def test_dev_mode_applies_a_config_file_on_top_of_dev_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "dev.yaml"
    cfg.write_text(yaml.safe_dump({"log_level": "warning", "mounts": [{"path": "ci", "type": "jwt"}],
                                   "policies": {"ci": 'path "auth/ci/*" { capabilities = ["read"] }'}}))
    with start_server(dev=True, root_token_id="root", workdir=tmp_path, args=["--config", str(cfg)]) as srv:
        out = srv.stdout_text()
        assert "Storage: memory" in out and "Log Level: warning" in out and "Root Token: root" in out
        client = srv.client()
        assert "ci/" in client.sys.list_auth_methods()["data"]
        assert "ci" in client.sys.list_acl_policies()["data"]["keys"]


def test_listen_address_flag_and_environment_override_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump({"listen_address": "127.0.0.1:1", "storage": {"type": "memory"}}))
    with start_server(config=cfg, workdir=tmp_path, env={"AUTHMOUNT_LISTEN_ADDRESS": "127.0.0.1:0"}) as srv:
        assert srv.address.startswith("127.0.0.1:") and srv.address != "127.0.0.1:1"
    with start_server(config=cfg, workdir=tmp_path, env={"AUTHMOUNT_LISTEN_ADDRESS": "bad"},
                      args=["--listen-address", "127.0.0.1:0"]) as srv:
        assert srv.address != "127.0.0.1:1"
    with pytest.raises(ServerStartError) as caught:
        with start_server(config=cfg, workdir=tmp_path, env={"AUTHMOUNT_LISTEN_ADDRESS": "nope"}, timeout=10):
            pass
    assert "AUTHMOUNT_LISTEN_ADDRESS: must be host:port" in caught.value.stderr


@pytest.fixture(autouse=True)
def _no_vault_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_CACERT"):
        monkeypatch.delenv(name, raising=False)
    yield
