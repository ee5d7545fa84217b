"""``authmount operator diagnose`` (``server.diagnose``): each check against real files,
sockets, SQLite and PostgreSQL, with the line it prints and whether the command fails."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.cli import main
from server.diagnose import Check, diagnose
from server.keyring import Keyring, load_storage_key, write_key_file
from server.storage.sqlite import SQLiteStorage


def _write(tmp_path: Path, settings: dict[str, Any]) -> Path:
    path = tmp_path / "authmount.yaml"
    path.write_text(yaml.safe_dump({"listen_address": "127.0.0.1:0", "storage": {"type": "memory"}, **settings}))
    return path


def _by_name(checks: list[Check], name: str) -> Check:
    return next(c for c in checks if c.name == name)


def _cert(tmp_path: Path, days: float) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authmount.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=400))
            .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_a_settings_file_that_does_not_load(tmp_path: Path) -> None:
    path = _write(tmp_path, {"log_level": "loud"})
    [check] = diagnose(path)
    assert (check.name, check.status) == ("settings", "fail") and "log_level" in check.detail


@pytest.mark.parametrize(("days", "status", "says"), [
    (365, "ok", "certificate CN=authmount.test, valid until"),
    (10, "warn", "expires in 10 days"),
    (-1, "fail", "expired at"),
])
def test_the_listener_certificate(tmp_path: Path, days: float, status: str, says: str) -> None:
    cert, key = _cert(tmp_path, days)
    check = _by_name(diagnose(_write(tmp_path, {"tls_cert_file": cert, "tls_key_file": key})), "tls")
    assert check.status == status and says in check.detail


def test_tls_that_does_not_load_or_is_off_on_the_network(tmp_path: Path) -> None:
    cert, _ = _cert(tmp_path, 365)
    (tmp_path / "wrong.key").write_text("not a key")
    check = _by_name(diagnose(_write(tmp_path, {"tls_cert_file": cert, "tls_key_file": str(tmp_path / "wrong.key")})),
                     "tls")
    assert check.status == "fail" and check.detail.startswith("tls_cert_file/tls_key_file:")
    check = _by_name(diagnose(_write(tmp_path, {"listen_address": "0.0.0.0:0"})), "tls")
    assert check.status == "warn" and "clear text" in check.detail


def test_the_listen_address(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        check = _by_name(diagnose(_write(tmp_path, {"listen_address": f"127.0.0.1:{port}"})), "listener")
        assert check.status == "warn" and "is in use" in check.detail
    finally:
        busy.close()
    check = _by_name(diagnose(_write(tmp_path, {"listen_address": "no-such-host.invalid:8200"})), "listener")
    assert check.status == "fail" and "does not resolve" in check.detail


@pytest.mark.parametrize(("settings", "status", "says"), [
    ({"api_addr": "https://authmount.example.com:8200", "listen_address": "0.0.0.0:0"}, "ok",
     "https://authmount.example.com:8200, from api_addr: identity tokens' issuer "
     "https://authmount.example.com:8200/v1/identity/oidc"),
    ({"listen_address": "127.0.0.1:8250"}, "ok", "http://127.0.0.1:8250, from listen_address (api_addr not set)"),
    ({"listen_address": "0.0.0.0:8250"}, "warn", "api_addr is not set and 0.0.0.0:8250 is every address: identity "
                                                 "tokens' issuer would be /v1/identity/oidc"),
])
def test_the_api_address(tmp_path: Path, settings: dict[str, Any], status: str, says: str) -> None:
    check = _by_name(diagnose(_write(tmp_path, settings)), "api address")
    assert check.status == status and check.detail.startswith(says), check


async def _sqlite_with_keyring(path: Path, key: bytes) -> None:
    store = await SQLiteStorage.open(str(path))
    try:
        await Keyring.open(store, key)
        await store.put("sys/policy/x", {"name": "x"})
    finally:
        await store.close()


def test_the_sqlite_storage_and_its_key(tmp_path: Path) -> None:
    """The key that sealed the keyring opens it; another key, or none, fails; a server using
    the file is fine (diagnose reads beside it)."""
    db, key_file = tmp_path / "data" / "a.db", tmp_path / "data" / "a.key"
    db.parent.mkdir()
    settings = {"storage": {"type": "sqlite", "path": str(db)}}
    write_key_file(key_file, os.urandom(32))
    key, _ = load_storage_key(key_file=str(key_file), env={}, create=False)
    asyncio.run(_sqlite_with_keyring(db, key))
    checks = diagnose(_write(tmp_path, settings))
    assert _by_name(checks, "storage").detail == f"sqlite: {db}, 3 rows, no server is using it"
    assert _by_name(checks, "storage key").status == "ok" and "opens the keyring" in _by_name(checks, "storage key").detail

    async def beside_a_server() -> list[Check]:
        store = await SQLiteStorage.open(str(db))
        try:
            return await asyncio.to_thread(diagnose, _write(tmp_path, settings))
        finally:
            await store.close()

    assert "a server is using it" in _by_name(asyncio.run(beside_a_server()), "storage").detail
    key_file.unlink()
    write_key_file(key_file, os.urandom(32))
    check = _by_name(diagnose(_write(tmp_path, settings)), "storage key")
    assert check.status == "fail" and "does not open the keyring" in check.detail
    key_file.unlink()
    check = _by_name(diagnose(_write(tmp_path, settings)), "storage key")
    assert check.status == "fail" and "does not exist" in check.detail


def test_postgres_that_does_not_answer(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    settings = {"storage": {"type": "postgres", "dsn": f"postgresql://authmount@127.0.0.1:{port}/authmount",
                            "key_file": str(tmp_path / "k")}}
    check = _by_name(diagnose(_write(tmp_path, settings)), "storage")
    assert check.status == "fail" and check.detail.startswith("postgres: ")


def test_an_empty_postgres_database(tmp_path: Path, postgres_dsn: str) -> None:
    settings = {"storage": {"type": "postgres", "dsn": postgres_dsn, "key_file": str(tmp_path / "k")}}
    checks = diagnose(_write(tmp_path, settings))
    assert _by_name(checks, "storage") == Check("storage", "ok", "postgres: connected; no table yet (created at the "
                                                                 "first start)")
    assert _by_name(checks, "storage key").status == "ok"


def test_declared_objects_and_audit_devices(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = {
        "mounts": [{"path": "ci", "type": "jwt", "roles": {"dev": {"token_ttl": "forever"}}}],
        "audit": [{"path": "file", "type": "file", "options": {"file_path": str(tmp_path / "audit.log")}},
                  {"path": "bad", "type": "file", "options": {"file_path": str(tmp_path / "a.log"), "colour": "red"}},
                  {"path": "gone", "type": "file", "options": {"file_path": str(tmp_path / "no" / "dir" / "a.log")}},
                  {"path": "sock", "type": "socket", "options": {"address": f"127.0.0.1:{port}"}}],
    }
    checks = diagnose(_write(tmp_path, settings))
    seeds = _by_name(checks, "declared objects")
    assert seeds.status == "fail" and "token_ttl" in seeds.detail
    assert _by_name(checks, "audit[0] file").status == "ok"
    assert _by_name(checks, "audit[1] bad") == Check("audit[1] bad", "fail", "unknown options for a file audit device: "
                                                                                 "colour")
    if os.geteuid() != 0:  # root may write anywhere
        assert _by_name(checks, "audit[2] gone").status == "fail"
    sock = _by_name(checks, "audit[3] sock")
    assert sock.status == "warn" and "does not answer now" in sock.detail


def test_the_command_fails_on_a_failed_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = _write(tmp_path, {})
    assert main(["operator", "diagnose", "--config", str(ok)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"[ ok   ] settings: read from {ok}" and out.rstrip().endswith("0 failed, 0 warnings")
    bad = _write(tmp_path, {"listen_address": "no-such-host.invalid:8200"})
    assert main(["operator", "diagnose", "--config", str(bad)]) == 1
    assert "[ fail ] listener:" in capsys.readouterr().out


def test_trusted_proxies_that_take_in_clients(tmp_path: Path) -> None:
    """A trusted proxy network as wide as 0.0.0.0/0 lets any client there claim any address."""
    check = _by_name(diagnose(_write(tmp_path, {"trusted_proxies": ["10.0.0.0/8", "192.168.1.0/24"]})),
                     "trusted proxies")
    assert check == Check("trusted proxies", "ok", "10.0.0.0/8, 192.168.1.0/24")
    check = _by_name(diagnose(_write(tmp_path, {"trusted_proxies": ["0.0.0.0/0", "::/0", "10.1.2.3/32"]})),
                     "trusted proxies")
    assert check.status == "warn" and check.detail.startswith("0.0.0.0/0, ::/0: any client there may set")
    assert not [c for c in diagnose(_write(tmp_path, {})) if c.name == "trusted proxies"]


def test_a_first_start_would_refuse_an_existing_root_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "root-token"
    token_file.write_text("old")
    settings = {"storage": {"type": "sqlite", "path": str(tmp_path / "a.db")}, "initial_root_token_file": str(token_file)}
    check = _by_name(diagnose(_write(tmp_path, settings)), "initial root token file")
    assert check.status == "fail" and "move it away" in check.detail
    token_file.unlink()
    assert not [c for c in diagnose(_write(tmp_path, settings)) if c.name == "initial root token file"]


def test_the_api_address_behind_tls_is_https(tmp_path: Path) -> None:
    cert, key = _cert(tmp_path, 365)
    check = _by_name(diagnose(_write(tmp_path, {"tls_cert_file": cert, "tls_key_file": key,
                                                "listen_address": "127.0.0.1:8243"})), "api address")
    assert check.status == "ok" and check.detail.startswith("https://127.0.0.1:8243, from listen_address"), check
