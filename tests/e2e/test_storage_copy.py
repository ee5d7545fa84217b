"""A copy of the storage is not a credential (hardening issue, item 3), against a real process.

Before: the batch-token HMAC key and the token salt sat in the SQLite file in the clear, next to
OIDC client secrets and HMAC keys; with read access to the file (a backup, a replica) a batch
token with ``policies: ["root"]`` and no expiry was minted, and with it a root service token.

Now every secret is sealed under data keys that only the storage key (a 0600 file beside the
database here, never inside it) opens. The test writes secrets through the API, rotates the
keys, stops the server and greps the database, its WAL and shared-memory files for every
secret in every encoding; without the key file the copy does not even start; and even with
the real batch key, a token claiming root, no expiry or a mount that does not exist is refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from server.keyring import Keyring, load_storage_key
from server.storage import open_storage
from server.tokens.batch import encode_batch
from server.tokens.entry import TokenEntry
from server.tokens.keys import load_batch_keys, load_salt
from tests.e2e.jsonserver import JSONServer
from tests.e2e.serverproc import ServerProc, ServerStartError, start_server
from tests.plugin.keyfactory import DROP, default_claims, jwks, make_token, rsa_key

pytestmark = pytest.mark.e2e

TIMEOUT = 30
HMAC_SECRET = "hmac-" + secrets.token_hex(24)
CLIENT_SECRET = "client-" + secrets.token_hex(24)
KEY = rsa_key(kid="k", slot=41)


class IdP:
    def __init__(self) -> None:
        self.server = JSONServer(self.route)
        self.issuer = f"http://127.0.0.1:{self.server.port}"

    def route(self, path: str) -> Any:
        if path == "/.well-known/openid-configuration":
            return {"issuer": self.issuer, "authorization_endpoint": self.issuer + "/authorize",
                    "token_endpoint": self.issuer + "/token", "jwks_uri": self.issuer + "/jwks",
                    "response_types_supported": ["code"], "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"]}
        return jwks(KEY) if path == "/jwks" else None


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    server = IdP()
    yield server
    server.server.close()


def call(srv: ServerProc, method: str, path: str, body: Any = None, token: str | None = None) -> requests.Response:
    headers = {"X-Vault-Token": token or str(srv.root_token)}
    return requests.request(method, f"{srv.url}/v1/{path}", json=body, headers=headers, timeout=TIMEOUT)


def ok(resp: requests.Response) -> Any:
    assert resp.status_code in (200, 204), resp.text
    return resp.json() if resp.status_code == 200 else None


def hmac_jwt() -> str:
    return make_token(default_claims(aud=DROP, sub="ci"), key=HMAC_SECRET.encode(), alg="HS256")


@pytest.fixture(scope="module")
def used(tmp_path_factory: pytest.TempPathFactory, idp: IdP) -> dict[str, Any]:
    """A server used the way operators do, then stopped: its data directory and what it saw."""
    work = tmp_path_factory.mktemp("copy")
    data = work / "data"
    config = {"storage": {"type": "sqlite", "path": str(data / "authmount.db")}}
    seen: list[str] = []
    with start_server(config=config, workdir=work, env={"AUTHMOUNT_STORAGE_KEY": ""}) as srv:
        assert srv.root_token
        seen.append(srv.root_token)
        ok(call(srv, "POST", "sys/auth/ci", {"type": "jwt"}))
        ok(call(srv, "POST", "auth/ci/config", {"jwt_validation_hmac_secrets": [HMAC_SECRET]}))
        ok(call(srv, "POST", "auth/ci/role/ci", {"role_type": "jwt", "user_claim": "sub", "bound_subject": "ci",
                                                 "token_policies": ["ci"]}))
        ok(call(srv, "POST", "auth/ci/role/batch", {"role_type": "jwt", "user_claim": "sub", "bound_subject": "ci",
                                                    "token_type": "batch", "token_policies": ["ci"]}))
        ok(call(srv, "POST", "sys/auth/web", {"type": "oidc"}))
        ok(call(srv, "POST", "auth/web/config", {"oidc_discovery_url": idp.issuer, "oidc_client_id": "web",
                                                 "oidc_client_secret": CLIENT_SECRET}))
        for role in ("ci", "batch"):
            login = ok(requests.post(f"{srv.url}/v1/auth/ci/login", json={"role": role, "jwt": hmac_jwt()},
                                     timeout=TIMEOUT))
            seen.append(login["auth"]["client_token"])
        status = ok(call(srv, "GET", "sys/key-status"))["data"]
        assert status["term"] == 1
        ok(call(srv, "POST", "sys/rotate"))
        assert ok(call(srv, "GET", "sys/key-status"))["data"]["term"] == 2
        # Everything still works after the rotation: old tokens, logins, the old batch key.
        for token in seen:
            ok(call(srv, "GET", "auth/token/lookup-self", token=token))
        login = ok(requests.post(f"{srv.url}/v1/auth/ci/login", json={"role": "batch", "jwt": hmac_jwt()},
                                 timeout=TIMEOUT))
        seen.append(login["auth"]["client_token"])
        seen.append(ok(call(srv, "POST", "auth/token/create", {"policies": ["ci"]}))["auth"]["client_token"])
        root = srv.root_token
    return {"work": work, "data": data, "config": config, "tokens": seen, "root": root}


def _secrets_of(data: Path) -> dict[str, bytes]:
    """The salt and every batch key, opened with the key file (what the copy must not yield)."""
    key, _ = load_storage_key(key_file=str(data / "authmount.key"), env={}, create=False)

    async def read() -> dict[str, bytes]:
        storage = await open_storage({"type": "sqlite", "path": str(data / "authmount.db")})
        try:
            ring = await Keyring.open(storage, key)
            salt = await load_salt(storage, ring)
            batch = await load_batch_keys(storage, ring, time.time())
            return {"salt": salt, **{f"batch{i}": k for i, k in enumerate(batch.verifying)},
                    **{f"term{n}": t.key for n, t in ring._terms.items()}, "storage key": key}
        finally:
            await storage.close()

    return asyncio.run(read())


def _encodings(raw: bytes) -> list[bytes]:
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"=")]


def test_no_secret_is_recoverable_from_the_storage_files(used: dict[str, Any]) -> None:
    data: Path = used["data"]
    files = [p for p in data.iterdir() if p.is_file() and p.suffix != ".key"]
    assert {p.name for p in files} >= {"authmount.db"}, files
    blob = b"".join(p.read_bytes() for p in files)
    needles = {"hmac secret": HMAC_SECRET.encode(), "client secret": CLIENT_SECRET.encode()}
    for name, raw in _secrets_of(data).items():
        for i, form in enumerate(_encodings(raw)):
            needles[f"{name} ({i})"] = form
    for i, token in enumerate(used["tokens"]):
        needles[f"token {i}"] = token.encode()
    found = [name for name, needle in needles.items() if needle in blob]
    assert found == [], f"recoverable from the storage files: {found}"
    key_file = data / "authmount.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_a_copy_without_the_key_does_not_start(used: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "data"
    shutil.copytree(used["data"], copy, ignore=shutil.ignore_patterns("*.key"))
    config = {"storage": {"type": "sqlite", "path": str(copy / "authmount.db")}}
    with pytest.raises(ServerStartError) as info:
        with start_server(config=config, workdir=tmp_path, env={"AUTHMOUNT_STORAGE_KEY": ""}, timeout=15):
            pass
    assert "does not exist, but the storage holds secrets sealed with a storage key" in info.value.stderr + \
        info.value.stdout
    assert not (copy / "authmount.key").exists()  # it did not make itself a new one


@pytest.mark.parametrize(("claims", "why"), [
    ({"p": ["root"]}, "root policy"),
    ({"p": ["ci", " Root "]}, "root policy, spelled otherwise"),
    ({"e": 0.0}, "no expiry"),
    ({"e": time.time() + 10 * 365 * 86400}, "expiry beyond max_lease_ttl"),
    ({"a": "auth_jwt_doesnotexist"}, "a mount that does not exist"),
])
def test_even_the_real_batch_key_mints_nothing_more(used: dict[str, Any], claims: dict[str, Any], why: str) -> None:
    """Decoding re-checks what minting guarantees (a stolen signing key, or a bug)."""
    batch_key = _secrets_of(used["data"])["batch0"]
    with start_server(config=used["config"], workdir=used["work"], root_token=used["root"],
                      env={"AUTHMOUNT_STORAGE_KEY": ""}) as srv:
        real = ok(requests.post(f"{srv.url}/v1/auth/ci/login", json={"role": "batch", "jwt": hmac_jwt()},
                                timeout=TIMEOUT))["auth"]["client_token"]
        payload = json.loads(base64.urlsafe_b64decode(real[4:].split(".")[0] + "=="))
        payload.update(claims)
        entry = TokenEntry(id_hash="", accessor="", policies=payload["p"], meta=payload["m"],
                           creation_time=payload["c"], ttl=payload["t"], expire_time=payload["e"],
                           display_name=payload["d"], mount_accessor=payload["a"], path=payload["path"],
                           type="batch")
        forged = encode_batch(entry, batch_key)
        assert call(srv, "GET", "auth/token/lookup-self", token=real).status_code == 200  # the control
        resp = call(srv, "GET", "auth/token/lookup-self", token=forged)
        assert resp.status_code == 403, (why, resp.text)
        assert "batch_token_refused" in srv.log_text()


def test_operator_rekey_replaces_the_storage_key(used: dict[str, Any], tmp_path: Path) -> None:
    """``authmount operator rekey`` seals the keyring under a new key; the data keys stay, so
    tokens and secrets keep working; the old key no longer opens the storage."""
    copy = tmp_path / "data"
    shutil.copytree(used["data"], copy)
    config = {"storage": {"type": "sqlite", "path": str(copy / "authmount.db")}}
    cfg = tmp_path / "authmount.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "AUTHMOUNT_STORAGE_KEY"}
    new_key = tmp_path / "keys" / "new.key"
    run = subprocess.run([sys.executable, "-m", "server.cli", "operator", "rekey", "--config", str(cfg),
                          "--new-key-file", str(new_key)], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Storage key rotated" in run.stdout and new_key.stat().st_mode & 0o777 == 0o600
    again = subprocess.run([sys.executable, "-m", "server.cli", "operator", "rekey", "--config", str(cfg),
                            "--new-key-file", str(new_key)], capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 1 and "exists" in again.stderr
    with pytest.raises(ServerStartError) as info:  # the old key file is still the default
        with start_server(config=config, workdir=tmp_path, env={"AUTHMOUNT_STORAGE_KEY": ""}, timeout=15):
            pass
    assert "the keyring in storage was sealed with storage key" in info.value.stderr
    config["storage"]["key_file"] = str(new_key)
    with start_server(config=config, workdir=tmp_path, root_token=used["root"],
                      env={"AUTHMOUNT_STORAGE_KEY": ""}) as srv:
        for token in used["tokens"][:2]:
            assert call(srv, "GET", "auth/token/lookup-self", token=token).status_code == 200
        login = requests.post(f"{srv.url}/v1/auth/ci/login", json={"role": "ci", "jwt": hmac_jwt()}, timeout=TIMEOUT)
        assert login.status_code == 200, login.text  # the HMAC secret still opens
