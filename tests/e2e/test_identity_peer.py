"""Identity groups, policies from claims and CEL roles against real processes: hvac drives the
identity API of an authmount server, and one scenario runs against authmount and an OpenBao
dev server (the peer, tests/e2e/baoproc.py) to compare the response shapes. Where they
differ on purpose, the difference is listed in ``DELIBERATE`` with its row of
docs/vault-differences.md."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests

from tests.e2e.baoproc import BaoProc, start_bao
from tests.e2e.serverproc import ServerProc, as_json
from tests.plugin.keyfactory import make_token, rsa_key

pytestmark = pytest.mark.e2e

KEY = rsa_key(kid="peer")
ISSUER = "https://idp.example.com"


def jwt(**claims: Any) -> str:
    now = int(time.time())
    return make_token({"iss": ISSUER, "aud": "authmount", "iat": now, "exp": now + 300, **claims}, key=KEY)


class Peer:
    """Raw HTTP to one server, recording each step's status and the keys of its answer."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.steps: dict[str, tuple[int, Any]] = {}

    def call(self, step: str, method: str, path: str, body: Any = None, token: str | None = "") -> dict[str, Any]:
        headers = {"X-Vault-Token": self.token if token == "" else token} if token is not None else {}
        resp = requests.request(method, f"{self.url}/v1/{path}", json=body, headers=headers, timeout=30)
        out: dict[str, Any] = resp.json() if resp.content else {}
        self.steps[step] = (resp.status_code, _shape(out))
        return out


def _shape(body: dict[str, Any]) -> Any:
    """What is compared: the keys of ``data`` and ``auth`` (and of nested objects one level
    down), or that the answer is an error."""
    if "errors" in body:
        return "errors"
    shape: dict[str, Any] = {}
    for part in ("data", "auth"):
        value = body.get(part)
        if isinstance(value, dict):
            shape[part] = sorted(
                k if not isinstance(v, dict) or not v or k in ("key_info", "metadata") else f"{k}:{sorted(v)}"
                for k, v in value.items()
            )
    return shape


CEL_OK = {
    "expression": "claims.ref.matches('^v[0-9]+[.][0-9]+[.][0-9]+$') ? pb.Auth{policies: ['rel-' + claims.project]}"
                  " : false",
}


def scenario(p: Peer) -> None:
    """The same requests against either server."""
    p.call("enable", "POST", "sys/auth/jwt", {"type": "jwt"})
    accessor = p.call("mounts", "GET", "sys/auth")["data"]["jwt/"]["accessor"]
    p.call("config", "POST", "auth/jwt/config", {"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISSUER})
    p.call("role", "POST", "auth/jwt/role/dev", {
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount", "groups_claim": "groups",
        "token_policies": "dev", "claim_mappings": {"email": "email"},
    })
    p.call("policy", "POST", "sys/policies/acl/ops", {"policy": 'path "auth/jwt/role/*" { capabilities = ["read"] }'})
    gid = p.call("group create", "POST", "identity/group",
                 {"name": "ops", "type": "external", "policies": "ops", "metadata": {"team": "x"}})["data"]["id"]
    p.call("group read id", "GET", f"identity/group/id/{gid}")
    p.call("group read name", "GET", "identity/group/name/OPS")
    p.call("group list id", "LIST", "identity/group/id")
    p.call("group list name", "LIST", "identity/group/name")
    alias_id = p.call("alias create", "POST", "identity/group-alias",
                      {"name": "ops-idp", "mount_accessor": accessor, "canonical_id": gid})["data"]["id"]
    p.call("alias read", "GET", f"identity/group-alias/id/{alias_id}")
    p.call("alias list", "LIST", "identity/group-alias/id")
    p.call("group read with alias", "GET", f"identity/group/id/{gid}")
    p.call("alias unknown accessor", "POST", "identity/group-alias",
           {"name": "x", "mount_accessor": "auth_jwt_nope", "canonical_id": gid})
    p.call("alias name taken", "POST", "identity/group-alias",
           {"name": "OPS-IDP", "mount_accessor": accessor, "canonical_id": gid})
    p.call("group root policy", "POST", "identity/group", {"name": "r", "policies": ["root"]})
    p.call("group empty id", "POST", "identity/group", {"id": "", "name": "fresh"})
    p.call("group unknown id", "POST", "identity/group", {"id": "nope", "name": "ops"})
    p.call("group external members", "POST", "identity/group",
           {"name": "e", "type": "external", "member_entity_ids": ["x"]})
    internal = p.call("group internal", "POST", "identity/group", {"name": "int"})["data"]["id"]
    p.call("alias internal group", "POST", "identity/group-alias",
           {"name": "y", "mount_accessor": accessor, "canonical_id": internal})

    auth = p.call("login", "POST", "auth/jwt/login",
                  {"role": "dev", "jwt": jwt(sub="alice", groups=["ops-idp", "x"], email="a@x")}, token=None)["auth"]
    assert auth["identity_policies"] == ["ops"] and "ops" in auth["policies"] and "ops" not in auth["token_policies"]
    token = auth["client_token"]
    me = p.call("lookup-self", "GET", "auth/token/lookup-self", token=token)["data"]
    assert me["identity_policies"] == ["ops"] and "ops" not in me["policies"]
    assert p.call("use", "GET", "auth/jwt/role/dev", token=token)["data"]["role_type"] == "jwt"
    entity = auth["entity_id"]
    name = p.call("entity read", "GET", f"identity/entity/id/{entity}")["data"]["name"]
    p.call("entity read name", "GET", f"identity/entity/name/{name}")
    p.call("entity list id", "LIST", "identity/entity/id")
    p.call("entity list name", "LIST", "identity/entity/name")
    p.call("lookup entity", "POST", "identity/lookup/entity", {"alias_name": "alice", "alias_mount_accessor": accessor})
    p.call("lookup group", "POST", "identity/lookup/group", {"alias_name": "ops-idp", "alias_mount_accessor": accessor})
    p.call("group update", "POST", f"identity/group/id/{gid}", {"policies": ["elsewhere"]})
    assert p.call("lookup-self after", "GET", "auth/token/lookup-self", token=token)["data"]["identity_policies"] == [
        "elsewhere"
    ]
    p.call("use after", "GET", "auth/jwt/role/dev", token=token)
    bob = p.call("login no group", "POST", "auth/jwt/login", {"role": "dev", "jwt": jwt(sub="bob", groups=["none"])},
                 token=None)["auth"]
    p.call("lookup-self no group", "GET", "auth/token/lookup-self", token=bob["client_token"])

    # policies from claims
    p.call("template role", "POST", "auth/jwt/role/tmpl", {
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount",
        "token_policies": ["proj-{{ .project }}"], "token_policies_template_claims": True,
    })
    login = p.call("template login", "POST", "auth/jwt/login", {"role": "tmpl", "jwt": jwt(sub="ci", project="app")},
                   token=None)
    assert "proj-app" in login["auth"]["policies"]
    p.call("template missing claim", "POST", "auth/jwt/login", {"role": "tmpl", "jwt": jwt(sub="ci")}, token=None)
    p.call("template glob value", "POST", "auth/jwt/login", {"role": "tmpl", "jwt": jwt(sub="ci", project="*")},
           token=None)
    p.call("template root value", "POST", "auth/jwt/role/tmpl2", {
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount",
        "token_policies": ["{{ .project }}"], "token_policies_template_claims": True,
    })
    p.call("template root login", "POST", "auth/jwt/login", {"role": "tmpl2", "jwt": jwt(sub="ci", project="root")},
           token=None)

    # CEL roles
    p.call("cel write", "POST", "auth/jwt/cel/role/rel", {"cel_program": CEL_OK, "bound_audiences": "authmount"})
    p.call("cel read", "GET", "auth/jwt/cel/role/rel")
    p.call("cel list", "LIST", "auth/jwt/cel/role")
    cel = p.call("cel login", "POST", "auth/jwt/cel/login",
                 {"role": "rel", "jwt": jwt(sub="ci", ref="v1.2.0", project="app")}, token=None)
    assert "rel-app" in cel["auth"]["policies"]
    p.call("cel refused", "POST", "auth/jwt/cel/login", {"role": "rel", "jwt": jwt(sub="ci", ref="v1.2.0-rc.2",
                                                                                    project="app")}, token=None)
    p.call("cel compile error", "POST", "auth/jwt/cel/role/bad", {"cel_program": {"expression": "nope +"}})
    p.call("cel undeclared", "POST", "auth/jwt/cel/role/bad", {"cel_program": {"expression": "nope == 1"}})

    # last: these change OpenBao's groups (it replaces the group's alias, or makes a group)
    p.call("alias second on group", "POST", "identity/group-alias",
           {"name": "other", "mount_accessor": accessor, "canonical_id": gid})
    p.call("alias without group", "POST", "identity/group-alias", {"name": "z", "mount_accessor": accessor})


#: Steps whose answers differ on purpose: step → (authmount, OpenBao) status, and the row.
DELIBERATE: dict[str, tuple[int, int, str]] = {
    "alias second on group": (400, 200, "30: a group keeps one alias; OpenBao silently drops the first"),
    "alias without group": (400, 200, "30: canonical_id is required; OpenBao creates a group"),
    "template missing claim": (400, 500, "31: a missing claim is a 400 naming it"),
    "template glob value": (400, 200, "31: a value outside [A-Za-z0-9_.-] refuses the login"),
    "cel compile error": (400, 500, "32: a program that does not compile is a 400"),
    "cel undeclared": (400, 500, "32: an undeclared reference is a 400"),
}
#: Steps whose answer bodies differ on purpose (statuses agree).
SHAPES_DIFFER: dict[str, str] = {
    "mounts": "sys/auth is not this scenario's subject",
    "use": "a role read: its fields are not this scenario's subject (OpenBao 2.7 has more)",
    "use after": "the same read",
}


@pytest.fixture
def bao() -> Iterator[BaoProc]:
    with start_bao() as proc:
        yield proc


def test_same_shapes_as_openbao(dev_server: ServerProc, bao: BaoProc) -> None:
    assert dev_server.root_token is not None
    ours, theirs = Peer(dev_server.url, dev_server.root_token), Peer(bao.url, bao.root_token)
    scenario(ours)
    try:
        scenario(theirs)
    except (AssertionError, KeyError, TypeError) as exc:  # the peer's answer to a step we depend on
        pytest.fail(f"OpenBao did not follow the scenario: {exc!r}; steps: {theirs.steps}")
    assert list(ours.steps) == list(theirs.steps)
    mismatches: list[tuple[Any, ...]] = []
    for step, (status, shape) in ours.steps.items():
        peer_status, peer_shape = theirs.steps[step]
        if step in DELIBERATE:
            if (status, peer_status) != DELIBERATE[step][:2]:
                mismatches.append((step, status, peer_status))
        elif status != peer_status or (step not in SHAPES_DIFFER and shape != peer_shape):
            mismatches.append((step, status, shape, peer_status, peer_shape))
    assert mismatches == [], "\n".join(map(repr, mismatches))


def test_hvac_identity_api(dev_server: ServerProc) -> None:
    """The identity API through hvac's own methods (what scripts and tools call)."""
    client = dev_server.client()
    client.sys.enable_auth_method("jwt", path="jwt")
    accessor = as_json(client.sys.list_auth_methods())["data"]["jwt/"]["accessor"]
    client.write_data("auth/jwt/config", data={"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISSUER})
    client.write_data("auth/jwt/role/dev", data={
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount", "groups_claim": "groups",
        "token_policies": "dev",
    })
    client.sys.create_or_update_acl_policy("ops", 'path "auth/jwt/role/*" { capabilities = ["read"] }')
    identity = client.secrets.identity
    created = as_json(identity.create_or_update_group(name="ops", group_type="external", policies=["ops"]))
    gid = created["data"]["id"]
    alias = as_json(identity.create_or_update_group_alias(name="ops-idp", mount_accessor=accessor, canonical_id=gid))
    assert alias["data"]["canonical_id"] == gid
    group = as_json(identity.read_group(group_id=gid))["data"]
    assert group["alias"]["name"] == "ops-idp" and group["policies"] == ["ops"] and group["type"] == "external"
    assert as_json(identity.read_group_by_name(name="ops"))["data"]["id"] == gid
    assert as_json(identity.list_groups())["data"]["keys"] == [gid]
    assert as_json(identity.list_groups_by_name())["data"]["keys"] == ["ops"]
    assert list(as_json(identity.list_group_aliases())["data"]["keys"]) == [alias["data"]["id"]]
    assert as_json(identity.read_group_alias(alias_id=alias["data"]["id"]))["data"]["mount_accessor"] == accessor

    login = as_json(client.auth.jwt.jwt_login(role="dev", jwt=jwt(sub="alice", groups=["ops-idp"]), use_token=False))
    user = hvac.Client(url=dev_server.url, token=login["auth"]["client_token"])
    assert as_json(user.auth.token.lookup_self())["data"]["identity_policies"] == ["ops"]
    assert as_json(user.read("auth/jwt/role/dev"))["data"]["role_type"] == "jwt"

    entity_id = login["auth"]["entity_id"]
    entity = as_json(identity.read_entity(entity_id=entity_id))["data"]
    assert entity["group_ids"] == [gid] and entity["aliases"][0]["name"] == "alice"
    assert as_json(identity.read_entity_by_name(name=entity["name"]))["data"]["id"] == entity_id
    assert as_json(identity.list_entities())["data"]["keys"] == [entity_id]
    found = as_json(identity.lookup_entity(alias_name="alice", alias_mount_accessor=accessor))
    assert found["data"]["id"] == entity_id
    assert as_json(identity.lookup_group(alias_name="ops-idp", alias_mount_accessor=accessor))["data"]["id"] == gid

    identity.update_group(group_id=gid, name="ops", group_type="external", policies=["nothing"])
    with pytest.raises(hvac.exceptions.Forbidden):
        user.read("auth/jwt/role/dev")  # the group's change applies at the token's next use
    identity.delete_group_alias(entity_id=alias["data"]["id"])  # hvac names the alias id entity_id here
    identity.delete_group(group_id=gid)
    with pytest.raises(hvac.exceptions.InvalidPath):
        identity.read_group(group_id=gid)
