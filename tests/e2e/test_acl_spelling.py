"""The ACL judges the name that is stored: no other spelling of a denied object gets past a
deny (hardening issue, item 1), against a real authmount process on SQLite.

One token may manage roles, mounts and policies in general but is denied, by exact rules,
the ``admin`` role, the ``jwt`` mount (and its tune) and the policies ``polself`` and
``admin``. Every other spelling of those names (case, slashes, whitespace, tab, NBSP) must be
refused with 403 (the canonical name is judged and denied) or 400 (the name has no
canonical spelling), and at the end the protected objects are exactly as they were. The
same spellings of names the token may manage still work, stored under the canonical name.
OpenBao 2.7.2 lets the role and mount spellings through (docs/vault-differences.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.serverproc import ServerProc, start_server
from tests.plugin.keyfactory import DROP, default_claims, make_token, rsa_key

pytestmark = pytest.mark.e2e

TIMEOUT = 30
KEY = rsa_key(kid="k", slot=21)
ADMIN_ROLE = {"role_type": "jwt", "user_claim": "sub", "bound_subject": "ops", "token_policies": ["admin"]}
ADMIN_POLICY = 'path "*" { capabilities = ["read"] }'
POLSELF = 'path "auth/token/lookup-self" { capabilities = ["read"] }'
MANAGER = """
path "auth/jwt/role/*"              { capabilities = ["create", "read", "update", "delete", "list"] }
path "auth/jwt/role/admin"          { capabilities = ["deny"] }
path "auth/jwt/role/admin/explain"  { capabilities = ["deny"] }
path "sys/auth/*"                   { capabilities = ["create", "read", "update", "delete", "sudo"] }
path "sys/auth/jwt"                 { capabilities = ["deny"] }
path "sys/auth/jwt/tune"            { capabilities = ["deny"] }
path "sys/policies/acl/*"           { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }
path "sys/policies/acl/polself"     { capabilities = ["deny"] }
path "sys/policies/acl/admin"       { capabilities = ["deny"] }
path "sys/policy/*"                 { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }
path "sys/policy/polself"           { capabilities = ["deny"] }
path "sys/policy/admin"             { capabilities = ["deny"] }
"""
EVIL_POLICY = 'path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }'


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    work = tmp_path_factory.mktemp("acl-spelling")
    config = {"storage": {"type": "sqlite", "path": str(work / "authmount.db")}}
    with start_server(config=config, workdir=work) as proc:
        for path, body in [
            ("sys/auth/jwt", {"type": "jwt"}),
            ("auth/jwt/config", {"jwt_validation_pubkeys": [KEY.pem]}),
            ("auth/jwt/role/admin", ADMIN_ROLE),
            ("sys/policies/acl/admin", {"policy": ADMIN_POLICY}),
            ("sys/policies/acl/polself", {"policy": POLSELF}),
            ("sys/policies/acl/manager", {"policy": MANAGER}),
        ]:
            resp = call(proc, "POST", path, body)
            assert resp.status_code in (200, 204), (path, resp.text)
        yield proc
    assert proc.returncode == 0


def call(srv: ServerProc, method: str, path: str, body: Any = None, token: str | None = None) -> requests.Response:
    headers = {"X-Vault-Token": token or str(srv.root_token)}
    return requests.request(method, f"{srv.url}/v1/{path}", json=body, headers=headers, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def manager(srv: ServerProc) -> str:
    resp = call(srv, "POST", "auth/token/create", {"policies": ["manager", "polself"]})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["auth"]["client_token"])


def snapshot(srv: ServerProc) -> dict[str, Any]:
    """What the protected objects look like, read with the root token."""
    return {
        "role": call(srv, "GET", "auth/jwt/role/admin").json()["data"],
        "mount": call(srv, "GET", "sys/auth/jwt").json()["data"],
        "tune": call(srv, "GET", "sys/auth/jwt/tune").json()["data"],
        "admin": call(srv, "GET", "sys/policies/acl/admin").json()["data"],
        "polself": call(srv, "GET", "sys/policies/acl/polself").json()["data"],
        "mounts": sorted(call(srv, "GET", "sys/auth").json()["data"]),
    }


ROLE_SPELLINGS = ["ADMIN", "Admin", "aDmIn"]
#: Another spelling of mount ``jwt``: (spelling of ``sys/auth/<x>``, ``tune`` suffix or not).
MOUNT_SPELLINGS = ["jwt/", "/jwt", "/jwt/", "%20jwt", "jwt%20", "%09jwt", "jwt%09", "%C2%A0jwt", "jwt%C2%A0",
                   "%0Ajwt", "jwt//"]
TUNE_SPELLINGS = ["jwt//tune", "jwt/tune/", "/jwt/tune", "%20jwt/tune", "jwt%09/tune", "jwt%C2%A0/tune"]
POLICY_SPELLINGS = ["POLSELF", "PolSelf", "%20polself", "polself%20", "polself%09", "polself/", "/polself",
                    "%C2%A0polself", "%20admin", "ADMIN", "Admin%0A"]

ATTEMPTS: list[tuple[str, str, Any]] = [
    *[(m, f"auth/jwt/role/{n}", ADMIN_ROLE | {"token_policies": ["root-ish"], "bound_subject": "*"} if m == "POST" else None)
      for n in ROLE_SPELLINGS for m in ("GET", "POST", "DELETE")],
    *[("POST", f"auth/jwt/role/{n}/explain", {"jwt": "x.y.z"}) for n in ROLE_SPELLINGS],
    *[(m, f"sys/auth/{n}", {"type": "jwt"} if m == "POST" else None)
      for n in MOUNT_SPELLINGS for m in ("GET", "POST", "DELETE")],
    *[(m, f"sys/auth/{n}", {"token_type": "batch", "default_lease_ttl": "1s"} if m == "POST" else None)
      for n in TUNE_SPELLINGS for m in ("GET", "POST")],
    *[(m, f"{base}/{n}", {"policy": EVIL_POLICY} if m == "POST" else None)
      for base in ("sys/policies/acl", "sys/policy") for n in POLICY_SPELLINGS for m in ("GET", "POST", "DELETE")],
]


@pytest.mark.parametrize(("method", "path", "body"), ATTEMPTS, ids=[f"{m} {p}" for m, p, _ in ATTEMPTS])
def test_other_spelling_of_a_denied_name_is_refused(srv: ServerProc, manager: str, method: str, path: str,
                                                     body: Any) -> None:
    before = snapshot(srv)
    resp = call(srv, method, path, body, token=manager)
    assert resp.status_code in (400, 403), (resp.status_code, resp.text)
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json()["errors"]
    assert snapshot(srv) == before


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "auth/jwt/role/admin"), ("POST", "auth/jwt/role/admin/explain"), ("DELETE", "sys/auth/jwt"),
    ("POST", "sys/auth/jwt/tune"), ("POST", "sys/policies/acl/polself"), ("DELETE", "sys/policy/admin"),
])
def test_canonical_name_is_denied(srv: ServerProc, manager: str, method: str, path: str) -> None:
    """The control: the exact rules deny the canonical spelling."""
    resp = call(srv, method, path, {"jwt": "x.y.z", "policy": EVIL_POLICY}, token=manager)
    assert resp.status_code == 403, resp.text


def test_allowed_names_are_stored_canonically(srv: ServerProc, manager: str) -> None:
    """Case is canonicalised, as in Vault: the manager's own writes land on the lower-case name."""
    role = {"role_type": "jwt", "user_claim": "sub", "bound_subject": "ci"}
    assert call(srv, "POST", "auth/jwt/role/CI-Deploy", role, token=manager).status_code == 204
    assert call(srv, "GET", "auth/jwt/role/ci-deploy", token=manager).json()["data"]["bound_subject"] == "ci"
    keys = call(srv, "LIST", "auth/jwt/role", token=manager).json()["data"]["keys"]
    assert "ci-deploy" in keys and "CI-Deploy" not in keys
    assert call(srv, "POST", "sys/policies/acl/Team-A", {"policy": POLSELF}, token=manager).status_code == 204
    assert call(srv, "GET", "sys/policies/acl/team-a", token=manager).json()["data"]["name"] == "team-a"
    refused = call(srv, "POST", "sys/auth/other/", {"type": "jwt"}, token=manager)  # as Vault refuses it
    assert refused.status_code == 400 and refused.json()["errors"] == ["cannot write to a path ending in '/'"]
    assert call(srv, "POST", "sys/auth/other", {"type": "jwt"}, token=manager).status_code == 204
    assert "other/" in call(srv, "GET", "sys/auth").json()["data"]
    assert call(srv, "DELETE", "sys/auth/other", token=manager).status_code == 204


def test_protected_role_still_logs_in_as_before(srv: ServerProc) -> None:
    jwt = make_token(default_claims(sub="ops", aud=DROP), key=KEY)
    resp = requests.post(f"{srv.url}/v1/auth/jwt/login", json={"role": "ADMIN", "jwt": jwt}, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["auth"]["token_policies"] == ["admin", "default"]
