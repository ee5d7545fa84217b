"""hvac's own JWT/OIDC integration tests, ported to run against a real authmount process.

Mirrors ``hvac/tests/integration_tests/api/auth_methods/test_jwt.py`` (docs/reference/clients.md
1.2 and 1.5): configure/read_config, role CRUD with LIST (verb and ``strict_http``), a
JWKS-backed ``jwt_login`` whose token carries ``meta.role``, the token helpers, policies,
mount tuning, hvac's exception mapping (``e.errors``) and ACL enforcement with a login
token. The "IdP" is a loopback Python HTTP server serving a discovery document and JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import hvac
import hvac.exceptions
import pytest
import requests

from tests.e2e.jsonserver import JSONServer
from tests.e2e.serverproc import ServerProc, as_json, start_server
from tests.plugin.keyfactory import KeyPair, jwks, make_token, rsa_key

pytestmark = pytest.mark.e2e

ROOT = "hvac-acceptance-root"
CLIENT_ID = "hvac-client-id"
LOGIN_ROLE = "hvac"
URL_CLAIM = "https://vault/user"


class LocalIdP:
    """A loopback discovery document + JWKS server (what hvac's mock OAuth provider serves)."""

    def __init__(self, key: KeyPair) -> None:
        self.key = key
        self._server = JSONServer(self._route)
        self.hits = self._server.paths
        self.port = self._server.port

    def _route(self, path: str) -> Any | None:
        if path == "/oauth/.well-known/openid-configuration":
            return {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "jwks_uri": self.jwks_url,
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        if path == "/oauth/jwks":
            return jwks(self.key)
        return None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth"

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/jwks"

    def token(self, **claims: Any) -> str:
        """A signed JWT from this issuer for audience ``CLIENT_ID``."""
        now = int(time.time())
        body = {"iss": self.issuer, "sub": "hvac-user", "aud": CLIENT_ID, "iat": now, "nbf": now, "exp": now + 300}
        body.update(claims)
        return make_token(body, key=self.key)

    def close(self) -> None:
        self._server.close()


@pytest.fixture(autouse=True)
def _no_vault_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)


@pytest.fixture(scope="module")
def idp() -> Iterator[LocalIdP]:
    server = LocalIdP(rsa_key(kid="hvac-k1", slot=7))
    yield server
    server.close()


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with start_server(dev=True, root_token_id=ROOT, workdir=tmp_path_factory.mktemp("hvac")) as srv:
        yield srv
    assert srv.returncode == 0


_mounts = iter(range(1, 10_000))


@pytest.fixture
def mount(vault: ServerProc) -> Iterator[str]:
    """hvac's ``setUp``/``tearDown``: a fresh jwt mount per test, disabled afterwards."""
    path = f"jwt-test-{next(_mounts)}"
    vault.client().sys.enable_auth_method(method_type="jwt", path=path)
    yield path
    vault.client().sys.disable_auth_method(path=path)


def configure_jwks(client: hvac.Client, idp: LocalIdP, path: str) -> None:
    resp = client.auth.jwt.configure(jwks_url=idp.jwks_url, bound_issuer=idp.issuer, path=path)
    assert resp.status_code == 204


def create_login_role(client: hvac.Client, path: str, name: str = LOGIN_ROLE, **extra: Any) -> Any:
    args: dict[str, Any] = {
        "user_claim": "sub",
        "allowed_redirect_uris": ["https://localhost:8250/oidc/callback"],
        "role_type": "jwt",
        "bound_audiences": [CLIENT_ID],
    }
    args.update(extra)
    return client.auth.jwt.create_role(name=name, path=path, **args)


# -- hvac test_jwt.py ------------------------------------------------------------------
def test_enable_and_list_auth_methods(vault: ServerProc, mount: str) -> None:
    methods = vault.client().sys.list_auth_methods()
    assert f"{mount}/" in methods  # top level, as hvac's tests check it
    assert methods[f"{mount}/"]["type"] == "jwt"
    assert methods["data"][f"{mount}/"]["type"] == "jwt"


def test_configure_and_read_config(vault: ServerProc, idp: LocalIdP, mount: str) -> None:
    client = vault.client()
    resp = client.auth.jwt.configure(
        oidc_discovery_url=idp.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret="hvac-secret",
        default_role=LOGIN_ROLE,
        path=mount,
    )
    assert resp.status_code == 204
    data = client.auth.jwt.read_config(path=mount)["data"]
    assert data["oidc_discovery_url"] == idp.issuer
    assert data["oidc_client_id"] == CLIENT_ID
    assert data["default_role"] == LOGIN_ROLE
    assert "oidc_client_secret" not in data  # sensitive: never returned
    assert "/oauth/.well-known/openid-configuration" in idp.hits  # validated at write time


@pytest.mark.parametrize("user_claim", ["sub", URL_CLAIM], ids=["plain", "url-like"])
def test_create_read_role(vault: ServerProc, mount: str, user_claim: str) -> None:
    client = vault.client()
    resp = create_login_role(client, mount, name="role-1", user_claim=user_claim)
    assert resp.status_code == 204
    data = client.auth.jwt.read_role(name="role-1", path=mount)["data"]
    assert data["user_claim"] == user_claim
    assert data["role_type"] == "jwt"
    assert data["bound_claims_type"] == "string"
    assert data["verbose_oidc_logging"] is False
    assert data["bound_audiences"] == [CLIENT_ID]


def test_create_role_body_as_hvac_sends_it(vault: ServerProc, mount: str) -> None:
    """hvac always sends ``name``, ``bound_claims_type`` and ``verbose_oidc_logging``."""
    body: dict[str, Any] = {
        "name": "raw",
        "role_type": "jwt",
        "user_claim": "sub",
        "bound_claims_type": "string",
        "verbose_oidc_logging": False,
        "bound_audiences": ["x"],
    }
    resp = requests.post(
        f"{vault.url}/v1/auth/{mount}/role/raw", json=body, headers={"X-Vault-Token": ROOT}, timeout=10
    )
    assert resp.status_code == 204, resp.text
    assert as_json(vault.client().auth.jwt.read_role("raw", path=mount))["data"]["bound_audiences"] == ["x"]


def test_list_roles_list_verb_and_strict_http(vault: ServerProc, mount: str) -> None:
    client = vault.client()
    with pytest.raises(hvac.exceptions.InvalidPath):  # empty list: 404
        client.auth.jwt.list_roles(path=mount)
    for name in ("b-role", "a-role"):
        create_login_role(client, mount, name=name)
    assert client.auth.jwt.list_roles(path=mount)["data"]["keys"] == ["a-role", "b-role"]
    strict = hvac.Client(url=vault.url, token=ROOT, strict_http=True)
    assert strict.auth.jwt.list_roles(path=mount)["data"]["keys"] == ["a-role", "b-role"]
    assert as_json(client.list(f"auth/{mount}/role"))["data"]["keys"] == ["a-role", "b-role"]  # ?list=True


def test_delete_role(vault: ServerProc, mount: str) -> None:
    client = vault.client()
    create_login_role(client, mount, name="gone")
    assert client.auth.jwt.delete_role(name="gone", path=mount).status_code == 204
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.auth.jwt.read_role(name="gone", path=mount)


def test_jwt_login_lookup_token_meta_role(vault: ServerProc, idp: LocalIdP, mount: str) -> None:
    root = vault.client()
    configure_jwks(root, idp, mount)
    create_login_role(root, mount, token_policies=["hvac-p"])
    client = vault.client(token="")
    resp = client.auth.jwt.jwt_login(role=LOGIN_ROLE, jwt=idp.token(), path=mount)
    assert "client_token" in resp["auth"]
    assert resp["auth"]["policies"] == ["default", "hvac-p"]
    assert client.token == resp["auth"]["client_token"]  # hvac stored it
    assert as_json(client.lookup_token())["data"]["meta"]["role"] == LOGIN_ROLE



def test_leases_of_a_mounts_logins(vault: ServerProc, idp: LocalIdP, mount: str) -> None:
    """hvac's lease calls over login tokens: ``list_leases``, ``read_lease``, ``revoke_lease``,
    ``revoke_prefix`` and ``revoke_force``."""
    root = vault.client()
    configure_jwks(root, idp, mount)
    create_login_role(root, mount)

    def login() -> str:
        return str(vault.client(token="").auth.jwt.jwt_login(role=LOGIN_ROLE, jwt=idp.token(), path=mount)["auth"]["client_token"])

    def alive(token: str) -> bool:
        return bool(vault.client(token=token).is_authenticated())

    tokens = [login(), login()]
    assert as_json(root.sys.list_leases(f"auth/{mount}"))["data"]["keys"] == ["login/"]
    ids = as_json(root.sys.list_leases(f"auth/{mount}/login"))["data"]["keys"]
    assert len(ids) == 2
    lease = as_json(root.sys.read_lease(f"auth/{mount}/login/{ids[0]}"))["data"]
    assert lease["path"] == f"auth/{mount}/login" and lease["renewable"] is True
    assert root.sys.revoke_lease(f"auth/{mount}/login/{ids[0]}").status_code == 204
    assert sorted(alive(t) for t in tokens) == [False, True]
    assert root.sys.revoke_prefix(f"auth/{mount}").status_code == 204
    assert not any(alive(t) for t in tokens)
    last = login()
    assert root.sys.revoke_force(f"auth/{mount}/login").status_code == 204
    assert not alive(last) and alive(ROOT)
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.sys.list_leases(f"auth/{mount}")  # nothing left

def test_move_backend(vault: ServerProc, idp: LocalIdP) -> None:
    """hvac's ``sys.move_backend`` (``sys/remount``), then its status read as hvac reads any
    path: the mount answers at the new path with its config and roles; its old token is dead."""
    root = vault.client()
    root.sys.enable_auth_method("jwt", path="hvac-move-a")
    configure_jwks(root, idp, "hvac-move-a")
    create_login_role(root, "hvac-move-a")
    old = vault.client(token="").auth.jwt.jwt_login(role=LOGIN_ROLE, jwt=idp.token(), path="hvac-move-a")["auth"]
    try:
        moved = as_json(root.sys.move_backend("auth/hvac-move-a", "auth/hvac-move-b"))
        status = as_json(root.read(f"sys/remount/status/{moved['data']['migration_id']}"))["data"]["migration_info"]
        assert status == {"source_mount": "auth/hvac-move-a/", "target_mount": "auth/hvac-move-b/", "status": "success"}
        assert root.auth.jwt.read_config(path="hvac-move-b")["data"]["jwks_url"] == idp.jwks_url
        client = vault.client(token="")
        client.auth.jwt.jwt_login(role=LOGIN_ROLE, jwt=idp.token(), path="hvac-move-b")
        assert as_json(client.lookup_token())["data"]["path"] == "auth/hvac-move-b/login"
        assert not vault.client(token=old["client_token"]).is_authenticated()
        with pytest.raises(hvac.exceptions.InvalidRequest, match='no matching mount at "auth/hvac-move-a/"'):
            root.sys.move_backend("auth/hvac-move-a", "auth/hvac-move-c")
    finally:
        root.sys.disable_auth_method("hvac-move-b")


def test_jwt_login_url_like_user_claim(vault: ServerProc, idp: LocalIdP, mount: str) -> None:
    root = vault.client()
    configure_jwks(root, idp, mount)
    create_login_role(root, mount, user_claim=URL_CLAIM)
    client = vault.client(token="")
    client.auth.jwt.jwt_login(role=LOGIN_ROLE, jwt=idp.token(**{URL_CLAIM: "carol"}), path=mount)
    me = as_json(client.lookup_token())["data"]
    assert me["display_name"].endswith("carol")
    assert me["meta"] == {"role": LOGIN_ROLE}


def test_login_ignores_stale_token_header(vault: ServerProc, idp: LocalIdP, mount: str) -> None:
    """hvac sends X-Vault-Token on login too; an unknown one must not get in the way."""
    root = vault.client()
    configure_jwks(root, idp, mount)
    create_login_role(root, mount)
    client = vault.client(token="hvs.not-a-real-token")
    assert client.auth.jwt.jwt_login(role=LOGIN_ROLE, jwt=idp.token(), path=mount)["auth"]["client_token"]


def test_mount_with_slashes(vault: ServerProc, idp: LocalIdP) -> None:
    root = vault.client()
    path = "team-a/jwt"
    root.sys.enable_auth_method("jwt", path=path, description="team a")
    try:
        assert f"{path}/" in root.sys.list_auth_methods()
        configure_jwks(root, idp, path)
        assert root.auth.jwt.read_config(path=path)["data"]["jwks_url"] == idp.jwks_url
        create_login_role(root, path)
        assert root.auth.jwt.list_roles(path=path)["data"]["keys"] == [LOGIN_ROLE]
        client = vault.client(token="")
        client.auth.jwt.jwt_login(role=LOGIN_ROLE, jwt=idp.token(), path=path)
        me = as_json(client.lookup_token())["data"]
        assert me["path"] == f"auth/{path}/login"
        root.sys.tune_auth_method(path, default_lease_ttl="30m")
        assert root.sys.read_auth_method_tuning(path)["data"]["default_lease_ttl"] == 1800
    finally:
        root.sys.disable_auth_method(path)


# -- token helpers ---------------------------------------------------------------------
def test_token_lifecycle(vault: ServerProc) -> None:
    root = vault.client()
    created = root.auth.token.create(policies=["p1"], ttl="1h")["auth"]
    token, accessor = created["client_token"], created["accessor"]
    assert created["policies"] == ["default", "p1"]
    child = vault.client(token=token)
    me = child.auth.token.lookup_self()["data"]
    assert me["accessor"] == accessor and me["policies"] == ["default", "p1"]
    renewed = child.auth.token.renew_self(increment="30m")["auth"]
    assert renewed["client_token"] == token
    assert 0 < renewed["lease_duration"] <= 3600
    by_accessor = root.auth.token.lookup_accessor(accessor)["data"]
    assert by_accessor["accessor"] == accessor and by_accessor["id"] == ""  # no token id via accessor
    assert child.auth.token.revoke_self().status_code == 204
    assert vault.client(token=token).is_authenticated() is False

    other = root.auth.token.create(policies=["p1"], ttl="1h")["auth"]
    assert root.auth.token.revoke_accessor(other["accessor"]).status_code == 204
    assert vault.client(token=other["client_token"]).is_authenticated() is False
    with pytest.raises(hvac.exceptions.InvalidRequest):
        root.auth.token.lookup_accessor(other["accessor"])


def test_token_roles(vault: ServerProc) -> None:
    """hvac's token role calls: a role lets a token without those policies create tokens with
    them; the new token's lookup names its role."""
    root = vault.client()
    root.sys.create_or_update_policy(name="deployer", policy='path "auth/token/create/ci" { capabilities = ["update"] }')
    root.auth.token.create_or_update_role("ci", allowed_policies=["p1", "p2"], orphan=True, token_period="1h")
    role = root.auth.token.read_role("ci")["data"]
    assert role["allowed_policies"] == ["p1", "p2"] and role["orphan"] is True and role["token_period"] == 3600
    assert root.auth.token.list_roles()["data"]["keys"] == ["ci"]
    deployer = vault.client(token=root.auth.token.create(policies=["deployer"], ttl="1h")["auth"]["client_token"])
    made = deployer.auth.token.create(role_name="ci", policies=["p2"])["auth"]
    assert made["policies"] == ["default", "p2"] and made["orphan"] is True and made["lease_duration"] == 3600
    looked = root.auth.token.lookup(made["client_token"])["data"]
    assert looked["role"] == "ci" and looked["path"] == "auth/token/create/ci"
    with pytest.raises(hvac.exceptions.InvalidRequest, match="must be subset of the role's allowed policies"):
        deployer.auth.token.create(role_name="ci", policies=["p3"])
    with pytest.raises(hvac.exceptions.Forbidden):  # the ACL names the role: another is not allowed
        root.auth.token.create_or_update_role("other")
        deployer.auth.token.create(role_name="other")
    root.auth.token.delete_role("ci")
    root.auth.token.delete_role("other")
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.auth.token.read_role("ci")


def test_the_rest_of_hvacs_token_calls(vault: ServerProc) -> None:
    """hvac's token calls no other test makes: an orphan, a renewal by accessor, a revocation
    that orphans the children, the tidy."""
    root = vault.client()
    root.sys.create_or_update_policy(name="maker", policy='path "auth/token/create" { capabilities = ["update"] }')
    assert as_json(root.auth.token.create_orphan(policies=["maker"], ttl="1h"))["auth"]["orphan"] is True
    parent = root.auth.token.create(policies=["maker"], ttl="1h")["auth"]
    renewed = root.auth.token.renew_accessor(parent["accessor"], increment="30m")["auth"]
    assert renewed["lease_duration"] == 1800
    kid = vault.client(token=parent["client_token"]).auth.token.create(policies=["maker"], ttl="1h")["auth"]
    assert root.auth.token.revoke_and_orphan_children(parent["client_token"]).status_code == 204
    assert vault.client(token=parent["client_token"]).is_authenticated() is False
    assert root.auth.token.lookup(kid["client_token"])["data"]["orphan"] is True
    tidy = root.auth.token.tidy()
    assert tidy.status_code == 202 and tidy.json()["warnings"][0].startswith("Tidy operation successfully started")


def test_the_rest_of_hvacs_sys_calls(vault: ServerProc, mount: str, tmp_path: Any) -> None:
    """hvac's sys calls no other test makes, each as hvac sends it: ``renew_lease`` sends
    ``increment: null`` when given none (refused with a field error until it was read as not
    given), ``get_encryption_key_status()["term"]`` reads the copy at the top (hvac's own
    example), the mount tuning of an auth method through ``sys/mounts/auth/<path>``."""
    root = vault.client()
    root.auth.token.create(policies=["default"], ttl="1h")
    lease = root.sys.list_leases("auth/token/create")["data"]["keys"][0]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="tokens cannot be renewed through this endpoint"):
        root.sys.renew_lease(f"auth/token/create/{lease}")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="lease not found"):
        root.sys.renew_lease("auth/token/create/nope")
    assert root.sys.read_init_status() == {"initialized": True}
    term = root.sys.get_encryption_key_status()["term"]
    assert root.sys.rotate_encryption_key().status_code == 204
    assert root.sys.get_encryption_key_status()["term"] == term + 1
    assert root.sys.step_down().status_code == 204
    assert root.sys.tune_mount_configuration(f"auth/{mount}", default_lease_ttl="1h").status_code == 204
    assert root.sys.read_mount_configuration(f"auth/{mount}")["data"]["default_lease_ttl"] == 3600
    assert sorted(root.sys.list_mounted_secrets_engines()["data"]) == ["identity/", "sys/"]
    wrapped = root.sys.wrap(payload={"a": "b"}, ttl=60)["wrap_info"]
    assert wrapped["ttl"] == 60 and root.sys.unwrap(wrapped["token"])["data"] == {"a": "b"}
    assert root.sys.create_or_update_quota(name="hvac-q", rate=100.0, path=f"auth/{mount}").status_code == 204
    assert root.sys.read_quota("hvac-q")["data"]["path"] == f"auth/{mount}/"
    assert root.sys.list_quotas()["data"]["keys"] == ["hvac-q"]
    assert root.sys.delete_quota("hvac-q").status_code == 204
    log = tmp_path / "audit.log"
    assert root.sys.enable_audit_device("file", path="hvac-file", options={"file_path": str(log)}).status_code == 204
    assert "hvac-file/" in root.sys.list_enabled_audit_devices()["data"]
    assert root.sys.disable_audit_device("hvac-file").status_code == 204
    assert "hvac-file/" not in root.sys.list_enabled_audit_devices()["data"]
    assert log.read_text().count('"type":"response"') >= 1
    with pytest.raises(hvac.exceptions.InvalidRequest, match="authmount operator generate-root"):
        root.sys.start_root_token_generation()


def test_is_authenticated(vault: ServerProc) -> None:
    assert vault.client().is_authenticated() is True
    assert vault.client(token="hvs.bogus").is_authenticated() is False
    assert hvac.Client(url=vault.url).is_authenticated() is False  # no token at all


# -- backups --------------------------------------------------------------------------------
def test_raft_snapshot_with_hvac(vault: ServerProc) -> None:
    """``client.sys.take_raft_snapshot()`` gets the snapshot (a gzipped tar ending with the
    ``SHA256SUMS.sealed`` the Vault CLI checks); ``restore_raft_snapshot`` is refused with the
    offline way (docs/operations.md#backup)."""
    client = vault.client()
    resp = client.sys.take_raft_snapshot()
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        assert tar.getnames() == ["meta.json", "state.jsonl", "SHA256SUMS", "SHA256SUMS.sealed"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="authmount operator restore"):
        client.sys.restore_raft_snapshot(resp.content)


# -- policies and tuning ---------------------------------------------------------------
def test_policy_crud(vault: ServerProc) -> None:
    client = vault.client()
    rules = 'path "auth/jwt/role/*" {\n  capabilities = ["read", "list"]\n}\n'
    client.sys.create_or_update_policy(name="hvac-policy", policy=rules)
    assert client.sys.read_policy("hvac-policy")["data"]["rules"] == rules
    assert "hvac-policy" in client.sys.list_policies()["data"]["policies"]
    as_json = {"path": {"auth/token/lookup-self": {"capabilities": ["read"]}}}
    client.sys.create_or_update_policy(name="hvac-json", policy=as_json)
    assert "hvac-json" in client.sys.list_policies()["data"]["policies"]
    for name in ("hvac-policy", "hvac-json"):
        client.sys.delete_policy(name)
    policies = client.sys.list_policies()["data"]["policies"]
    assert "hvac-policy" not in policies and "hvac-json" not in policies



def test_delegated_role_writes_with_hvac(vault: ServerProc, mount: str) -> None:
    """A team's token writes its own roles with hvac's ``create_role`` under a policy with
    parameter constraints (hvac sends ``name``, ``bound_claims_type`` and ``verbose_oidc_logging``
    in the body too, so the policy allows them); a role granting a policy the
    team may not grant is ``Forbidden``, as a list (hvac's form) and as a comma-separated string,
    and the role stays as it was (row 61)."""
    root = vault.client()
    root.sys.create_or_update_policy(name="hvac-team", policy=f'''
path "auth/{mount}/role/team-*" {{
  capabilities = ["create", "update", "read"]
  allowed_parameters = {{
    "name" = []
    "role_type" = ["jwt"]
    "user_claim" = []
    "bound_audiences" = []
    "allowed_redirect_uris" = []
    "bound_claims_type" = ["string"]
    "verbose_oidc_logging" = [false]
    "token_policies" = ["team-*"]
  }}
}}''')
    team = vault.client(token=as_json(root.auth.token.create(policies=["hvac-team"]))["auth"]["client_token"])
    create_login_role(team, mount, name="team-app", token_policies=["team-deploy"])
    for policies in (["team-deploy", "admin"], "team-deploy,admin"):
        with pytest.raises(hvac.exceptions.Forbidden):
            create_login_role(team, mount, name="team-app", token_policies=policies)
    with pytest.raises(hvac.exceptions.Forbidden):
        create_login_role(team, mount, name="team-app", token_policies=["team-deploy"], bound_subject="x")
    assert root.auth.jwt.read_role(name="team-app", path=mount)["data"]["token_policies"] == ["team-deploy"]
    assert as_json(team.auth.jwt.read_role(name="team-app", path=mount))["data"]["role_type"] == "jwt"

def test_tune_auth_method(vault: ServerProc, mount: str) -> None:
    client = vault.client()
    client.sys.tune_auth_method(mount, default_lease_ttl="1h", max_lease_ttl="2h", description="tuned")
    data = client.sys.read_auth_method_tuning(mount)["data"]
    assert (data["default_lease_ttl"], data["max_lease_ttl"]) == (3600, 7200)
    assert client.sys.list_auth_methods()[f"{mount}/"]["description"] == "tuned"


# -- errors as hvac sees them ------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "exc", "needle"),
    [
        (lambda c, m: c.auth.jwt.read_role("missing", path=m), hvac.exceptions.InvalidPath, None),
        (lambda c, m: c.auth.jwt.jwt_login(role="missing", jwt="a.b.c", path=m),
         hvac.exceptions.InvalidRequest, "could not load configuration"),  # unconfigured mount
        (lambda c, m: c.auth.jwt.create_role("r", user_claim="sub", allowed_redirect_uris=[], token_ttl="soon", path=m),
         hvac.exceptions.InvalidRequest, "token_ttl"),
        (lambda c, m: c.sys.enable_auth_method("nosuch", path=f"{m}-x"), hvac.exceptions.InvalidRequest, "nosuch"),
        (lambda c, m: hvac.Client(url=c.url, token="hvs.bogus").auth.jwt.read_config(path=m),
         hvac.exceptions.Forbidden, "permission denied"),
    ],
    ids=["404 read", "400 login", "400 role field", "400 mount type", "403 bad token"],
)
def test_errors_carry_errors_list(
    vault: ServerProc, mount: str, call: Callable[[hvac.Client, str], object],
    exc: type[hvac.exceptions.VaultError], needle: str | None
) -> None:
    with pytest.raises(exc) as info:
        call(vault.client(), mount)
    errors = info.value.errors
    assert isinstance(errors, list)  # only set when Content-Type is exactly application/json
    if needle is not None:
        assert any(needle in e for e in errors), errors


# -- ACL enforcement with a login token --------------------------------------------------
def test_login_token_acl(vault: ServerProc, idp: LocalIdP) -> None:
    root = vault.client()
    root.sys.enable_auth_method("jwt", path="jwt")
    try:
        root.sys.create_or_update_policy(
            name="role-reader", policy='path "auth/jwt/role/*" {\n  capabilities = ["read"]\n}\n'
        )
        configure_jwks(root, idp, "jwt")
        create_login_role(root, "jwt", token_policies=["role-reader"])
        client = vault.client(token="")
        client.auth.jwt.jwt_login(role=LOGIN_ROLE, jwt=idp.token())
        assert client.auth.jwt.read_role(LOGIN_ROLE)["data"]["token_policies"] == ["role-reader"]
        forbidden: list[Callable[[], object]] = [
            lambda: client.auth.jwt.configure(jwks_url=idp.jwks_url),
            lambda: client.auth.jwt.create_role("evil", user_claim="sub", allowed_redirect_uris=[]),
            lambda: client.sys.enable_auth_method("jwt", path="evil"),
            lambda: client.sys.create_or_update_policy(name="evil", policy='path "*" { capabilities = ["sudo"] }'),
            lambda: client.auth.jwt.read_config(),
        ]
        for attempt in forbidden:
            with pytest.raises(hvac.exceptions.Forbidden) as info:
                attempt()
            assert info.value.errors == ["permission denied"]
        assert "jwt/" in root.sys.list_auth_methods() and "evil/" not in root.sys.list_auth_methods()
        assert "evil" not in root.sys.list_policies()["data"]["policies"]
        assert root.auth.jwt.read_config()["data"]["jwks_url"] == idp.jwks_url
    finally:
        root.sys.disable_auth_method("jwt")
        root.sys.delete_policy("role-reader")


# -- hvac test_oidc.py: form_post configured, the callback still works as a GET ------------
def form_post_login(auth_url: str, login: str = "alice") -> dict[str, str]:
    """Drive node-oidc-provider's dev login with requests; return the form_post page's fields."""
    http = requests.Session()
    resp = http.get(auth_url, allow_redirects=False, timeout=30)
    for _ in range(10):
        if resp.status_code == 200 and "<form" in resp.text:
            return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', resp.text))
        loc = urljoin(auth_url, resp.headers["Location"])
        page = http.get(loc, allow_redirects=False, timeout=30)
        if page.status_code == 200 and "/interaction/" in loc:
            prompt = re.search(r'name="prompt" value="(\w+)"', page.text)
            assert prompt, page.text[:300]
            data = {"prompt": prompt.group(1)}
            if data["prompt"] == "login":
                data |= {"login": login, "password": "x"}
            resp = http.post(loc, data=data, allow_redirects=False, timeout=30)
        else:
            resp = page
    raise AssertionError(f"no form_post page: {resp.status_code} {resp.text[:300]}")


def test_oidc_callback_with_form_post_config(vault: ServerProc, tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.e2e.idp import CLIENT_ID as IDP_CLIENT
    from tests.e2e.idp import CLIENT_SECRET as IDP_SECRET
    from tests.e2e.idp import idp_available, start_idp

    reason = idp_available()
    if reason:
        pytest.skip(reason)
    path = "oidc-test"
    callback = f"{vault.url}/v1/auth/{path}/oidc/callback"  # the server's own callback, as in hvac
    node_idp = start_idp(tmp_path_factory.mktemp("hvac-idp"), redirect_uris=[callback])
    root = vault.client()
    root.sys.enable_auth_method("oidc", path=path)
    try:
        resp = root.auth.oidc.configure(
            oidc_discovery_url=node_idp.discovery_url, oidc_client_id=IDP_CLIENT, oidc_client_secret=IDP_SECRET,
            oidc_response_mode="form_post", oidc_response_types=["code"], default_role="hvac", path=path,
        )
        assert resp.status_code == 204
        assert root.auth.oidc.create_role(name="hvac", user_claim="sub", allowed_redirect_uris=[callback],
                                          path=path) is None  # hvac's quirk: auth.oidc.create_role returns None
        assert root.auth.oidc.read_role("hvac", path=path)["data"]["role_type"] == "oidc"
        client = vault.client(token="")
        auth_url = client.auth.oidc.oidc_authorization_url_request(role="hvac", redirect_uri=callback,
                                                                   path=path)["data"]["auth_url"]
        assert f"?client_id={IDP_CLIENT}&" in auth_url
        query = parse_qs(urlsplit(auth_url).query)
        assert query["response_mode"] == ["form_post"]
        fields = form_post_login(auth_url)
        assert fields["state"] == query["state"][0]
        resp = client.auth.oidc.oidc_callback(state=fields["state"], nonce="", code=fields["code"], path=path)
        token = resp["auth"]["client_token"]
        assert as_json(vault.client(token=token).lookup_token())["data"]["meta"]["role"] == "hvac"
    finally:
        node_idp.stop()
        root.sys.disable_auth_method(path)


# -- response wrapping ----------------------------------------------------------------------
def test_response_wrapping_with_hvac(vault: ServerProc, idp: LocalIdP, mount: str) -> None:
    """hvac's ``wrap_ttl`` on token creation and on a login, ``sys.unwrap`` with the token as
    an argument or as the client's own token; a wrapping token works once."""
    root = vault.client()
    wrapped = as_json(root.auth.token.create(policies=["hvac-w"], ttl="1h", wrap_ttl="2m"))
    info = wrapped["wrap_info"]
    assert wrapped["auth"] is None and info["ttl"] == 120 and info["creation_path"] == "auth/token/create"
    unwrapped = as_json(root.sys.unwrap(info["token"]))
    assert unwrapped["auth"]["policies"] == ["default", "hvac-w"]
    assert unwrapped["auth"]["accessor"] == info["wrapped_accessor"]
    assert as_json(vault.client(token=unwrapped["auth"]["client_token"]).lookup_token())["data"]["ttl"] > 3500
    with pytest.raises(hvac.exceptions.InvalidRequest, match="wrapping token is not valid or does not exist"):
        root.sys.unwrap(info["token"])

    configure_jwks(root, idp, mount)
    create_login_role(root, mount, token_policies=["hvac-w"])
    anon = vault.client(token="")
    resp = as_json(anon.adapter.post(f"/v1/auth/{mount}/login", json={"role": LOGIN_ROLE, "jwt": idp.token()},
                                     wrap_ttl="1m"))
    assert resp["auth"] is None and resp["wrap_info"]["creation_path"] == f"auth/{mount}/login"
    holder = vault.client(token=resp["wrap_info"]["token"])
    login = as_json(holder.sys.unwrap())  # the wrapping token as the client's own token
    assert login["auth"]["metadata"] == {"role": LOGIN_ROLE}
    with pytest.raises(hvac.exceptions.Forbidden):
        holder.sys.unwrap()  # its one use is spent

    with pytest.raises(hvac.exceptions.InvalidRequest, match="this response cannot be wrapped"):
        root.adapter.get(f"/v1/auth/{mount}/role/{LOGIN_ROLE}", wrap_ttl="1m")


# -- sys/tools ---------------------------------------------------------------------------------
def test_hash_and_random_bytes(vault: ServerProc) -> None:
    """``sys/tools/hash`` with a token of the default policy (which grants it) and
    ``sys/tools/random/<bytes>`` through hvac's generic writes (hvac has no method for them)."""
    client = vault.client()
    token = client.auth.token.create(policies=["default"])["auth"]["client_token"]
    user = vault.client(token=token)
    out = as_json(user.write_data("sys/tools/hash/sha2-384", data={"input": base64.b64encode(b"authmount").decode()}))
    assert out["data"]["sum"] == hashlib.sha384(b"authmount").hexdigest()
    random_bytes = as_json(client.write_data("sys/tools/random/24", data={"format": "hex"}))["data"]["random_bytes"]
    assert len(bytes.fromhex(random_bytes)) == 24
    with pytest.raises(hvac.exceptions.Forbidden):
        user.write_data("sys/tools/random", data={})


# -- inline authentication (OpenBao 2.4): hvac with the headers on its session ----------------
def _inline_session(mount: str, jwt: str, role: str = LOGIN_ROLE) -> requests.Session:
    """A requests session whose every request logs in inline at ``auth/<mount>/login``."""
    def param(key: str, value: str) -> str:
        return base64.urlsafe_b64encode(f'{{"key": "{key}", "value": "{value}"}}'.encode()).decode().rstrip("=")

    session = requests.Session()
    session.headers.update({"X-Vault-Inline-Auth-Path": f"auth/{mount}/login",
                            "X-Vault-Inline-Auth-Parameter-jwt": param("jwt", jwt),
                            "X-Vault-Inline-Auth-Parameter-role": param("role", role)})
    return session


def test_inline_authentication_with_hvac(vault: ServerProc, idp: LocalIdP, mount: str) -> None:
    """A CI job with a JWT and no token: each hvac call carries its login, and no token is
    stored for any of them."""
    root = vault.client()
    configure_jwks(root, idp, mount)
    root.sys.create_or_update_policy(name="inline-ci", policy=(
        'path "sys/auth" { capabilities = ["read"] }\npath "identity/oidc/token/*" { capabilities = ["read"] }'))
    create_login_role(root, mount, token_policies=["inline-ci"])
    root.secrets.identity.create_named_key("inline-ci", allowed_client_ids=["*"])
    root.secrets.identity.create_or_update_role("inline-ci", key="inline-ci")
    stored = root.auth.token.list_accessors()["data"]["keys"]

    client = vault.client(token="", session=_inline_session(mount, idp.token()))
    assert f"{mount}/" in client.sys.list_auth_methods()["data"]
    me = client.auth.token.lookup_self()["data"]
    assert (me["id"], me["accessor"], me["policies"], me["display_name"]) == (
        "", "", ["default", "inline-ci"], f"{mount}-hvac-user")
    signed = client.secrets.identity.generate_signed_id_token("inline-ci")["data"]["token"]
    assert signed.count(".") == 2
    with pytest.raises(hvac.exceptions.Forbidden) as denied:  # not a path its policy grants
        client.sys.list_policies()
    assert denied.value.errors == ["permission denied"]
    assert root.auth.token.list_accessors()["data"]["keys"] == stored

    refused = vault.client(token="", session=_inline_session(mount, idp.token(aud="someone-else")))
    with pytest.raises(hvac.exceptions.InvalidRequest) as failed:
        refused.sys.list_auth_methods()
    assert "audience claim does not match" in list(failed.value.errors or ())[0]
