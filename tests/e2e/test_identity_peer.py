"""Identity groups, policies from claims and CEL roles against real processes: hvac drives the
identity API of an authmount server, and one scenario runs against authmount and an OpenBao
dev server (the peer, tests/e2e/baoproc.py) to compare the response shapes. Where they
differ on purpose, the difference is listed in ``DELIBERATE`` with its row of
docs/vault-differences.md."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
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
    p.call("group type in capitals", "POST", "identity/group", {"name": "caps", "type": "INTERNAL"})
    p.call("group type empty on update", "POST", f"identity/group/id/{gid}", {"type": ""})
    p.call("group type in capitals on update", "POST", f"identity/group/id/{gid}", {"type": "EXTERNAL"})
    p.call("group type unchanged on update", "POST", f"identity/group/id/{gid}", {"type": "external"})
    p.call("group type empty on create", "POST", "identity/group", {"name": "untyped", "type": ""})
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


#: Ids and mount accessors inside error texts (Vault's merge refusals name them).
_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|auth_jwt_[0-9a-f]{8}")


class Observer:
    """Raw HTTP to one server, recording each step's status and what it shows, with every
    id the server made replaced by a label (``E1``, ``A1``, ...) in the order first seen, so
    two servers' answers compare."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.labels: dict[str, str] = {}
        self.seen: list[tuple[str, int, Any]] = []

    def label(self, value: Any) -> Any:
        """``value`` with ids and mount accessors as labels, times left out, and the names
        entities get from their ids as ``entity_*`` (authmount's have 16 hex digits: row 30)."""
        if isinstance(value, dict):
            return {k: self.label(v) for k, v in value.items() if not k.endswith("_time")}
        if isinstance(value, list):
            return [self.label(v) for v in value]
        if isinstance(value, str) and (len(value) == 36 and value.count("-") == 4 or value.startswith("auth_jwt_")):
            return self.labels.setdefault(value, f"ID{len(self.labels) + 1}")
        if isinstance(value, str) and value.startswith("entity_"):
            return "entity_*"
        return value

    def call(self, step: str, method: str, path: str, body: Any = None, *, show: tuple[str, ...] = (),
             unordered: tuple[str, ...] = (), token: str | None = "") -> dict[str, Any]:
        headers = {"X-Vault-Token": self.token if token == "" else token} if token is not None else {}
        resp = requests.request(method, f"{self.url}/v1/{path}", json=body, headers=headers, timeout=30)
        out: dict[str, Any] = resp.json() if resp.content else {}
        data = out.get("data") or out.get("auth") or {}
        shown: Any = ([_IDS.sub(lambda m: self.label(m.group()), e) for e in out["errors"]] if "errors" in out
                      else {k: self.label(data.get(k)) for k in show})
        for k in unordered if isinstance(shown, dict) else ():  # lists whose order a server does not fix
            shown[k] = sorted(shown[k] or [])
        self.seen.append((step, resp.status_code, shown))
        return out


def run_both(dev_server: ServerProc, bao: BaoProc, scenario: Callable[[Observer], None],
             deliberate: dict[str, tuple[int, int]]) -> Observer:
    """Run ``scenario`` against authmount and OpenBao; every step must agree (ids as labels)
    but the ``deliberate`` ones, whose (authmount, OpenBao) statuses are given. Returns
    authmount's observer."""
    assert dev_server.root_token is not None
    ours, theirs = Observer(dev_server.url, dev_server.root_token), Observer(bao.url, bao.root_token)
    scenario(ours)
    scenario(theirs)
    mismatches = [(a, b) for a, b in zip(ours.seen, theirs.seen, strict=True)
                  if a != b and deliberate.get(a[0]) != (a[1], b[1])]
    assert mismatches == [], "\n".join(f"ours:   {a}\ntheirs: {b}" for a, b in mismatches)
    return ours


def jwt_mounts(o: Observer, *mounts: str, **role: Any) -> dict[str, str]:
    """Enable jwt ``mounts`` with this module's key and a role ``dev`` (``role``: more fields);
    their accessors by mount."""
    accessors = {}
    for mount in mounts:
        o.call(f"enable {mount}", "POST", f"sys/auth/{mount}", {"type": "jwt"})
        accessors[mount] = o.call("mounts", "GET", "sys/auth")["data"][f"{mount}/"]["accessor"]
        o.call("config", "POST", f"auth/{mount}/config", {"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISSUER})
        o.call("role", "POST", f"auth/{mount}/role/dev", {
            "role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount", "token_policies": "dev", **role})
    return accessors


def entity_scenario(o: Observer) -> None:
    """Entities made ahead of logins and entity aliases (Terraform's ``vault_identity_entity``
    and ``vault_identity_entity_alias``), against either server."""
    accessors = jwt_mounts(o, "jwt", "jwt2", claim_mappings={"email": "email"})
    acc, acc2 = accessors["jwt"], accessors["jwt2"]
    entity_view = ("name", "policies", "metadata", "disabled", "aliases", "group_ids")

    def login(step: str, mount: str, sub: str) -> dict[str, Any]:
        return o.call(step, "POST", f"auth/{mount}/login", {"role": "dev", "jwt": jwt(sub=sub, email=f"{sub}@x")},
                      show=("entity_id", "identity_policies", "token_policies"), token=None)

    alice = o.call("entity create", "POST", "identity/entity", {"name": "alice", "policies": ["ops"],
                                                                "metadata": {"team": "a"}},
                   show=("id", "name", "aliases"))["data"]["id"]
    o.call("entity read name", "GET", "identity/entity/name/alice", show=entity_view)
    o.call("entity update by name", "POST", "identity/entity", {"name": "alice", "policies": ["ops", "ops2"]})
    o.call("entity read", "GET", f"identity/entity/id/{alice}", show=entity_view)
    o.call("entity create same name other case", "POST", "identity/entity", {"name": "ALICE"}, show=("id", "name"))
    o.call("alias create", "POST", "identity/entity-alias",
           {"name": "alice-sub", "mount_accessor": acc, "canonical_id": alice}, show=("id", "canonical_id"))
    login("login through the alias", "jwt", "alice-sub")
    o.call("entity with alias", "GET", f"identity/entity/id/{alice}", show=entity_view)
    o.call("second alias same mount", "POST", "identity/entity-alias",
           {"name": "alice-other", "mount_accessor": acc, "canonical_id": alice})
    o.call("alias second mount", "POST", "identity/entity-alias",
           {"name": "alice-sub", "mount_accessor": acc2, "canonical_id": alice}, show=("id", "canonical_id"))
    login("login through the second mount", "jwt2", "alice-sub")
    bob_entity = login("login without alias", "jwt", "bob")["auth"]["entity_id"]
    o.call("move a login's alias to an entity with one on that mount", "POST", "identity/entity-alias",
           {"name": "bob", "mount_accessor": acc, "canonical_id": alice})
    frank = o.call("entity create 2", "POST", "identity/entity", {"name": "frank"}, show=("id", "name"))["data"]["id"]
    bob_alias = o.call("move a login's alias", "POST", "identity/entity-alias",
                       {"name": "bob", "mount_accessor": acc, "canonical_id": frank},
                       show=("id", "canonical_id"))["data"]["id"]
    login("login after the move", "jwt", "bob")
    o.call("the login's entity after the move", "GET", f"identity/entity/id/{bob_entity}", show=entity_view)
    o.call("alias read", "GET", f"identity/entity-alias/id/{bob_alias}",
           show=("name", "canonical_id", "mount_accessor", "metadata", "custom_metadata", "mount_path", "mount_type"))
    o.call("alias name taken on the mount", "POST", f"identity/entity-alias/id/{bob_alias}", {"name": "alice-sub"})
    o.call("alias rename", "POST", f"identity/entity-alias/id/{bob_alias}", {"name": "carl"},
           show=("id", "canonical_id"))
    o.call("alias update nothing", "POST", f"identity/entity-alias/id/{bob_alias}", {"name": "carl"})
    o.call("alias custom metadata", "POST", f"identity/entity-alias/id/{bob_alias}",
           {"custom_metadata": {"k": "v"}}, show=("id", "canonical_id"))
    o.call("alias to an unknown entity", "POST", f"identity/entity-alias/id/{bob_alias}", {"canonical_id": "nope"})
    o.call("alias to another mount the entity has", "POST", f"identity/entity-alias/id/{bob_alias}",
           {"mount_accessor": acc2, "canonical_id": alice})
    login("login by the renamed alias", "jwt", "carl")
    o.call("custom metadata after a login", "GET", f"identity/entity-alias/id/{bob_alias}",
           show=("custom_metadata", "metadata"))
    listed = o.call("alias list", "LIST", "identity/entity-alias/id")["data"]["keys"]
    o.seen.append(("alias list keys", 200, sorted(o.label(listed))))
    o.call("alias unknown id", "POST", "identity/entity-alias/id/nope", {"name": "x"})
    o.call("alias register unknown id", "POST", "identity/entity-alias", {"id": "nope", "name": "x"})
    o.call("alias no name", "POST", "identity/entity-alias", {"mount_accessor": acc})
    o.call("alias unknown accessor", "POST", "identity/entity-alias", {"name": "x", "mount_accessor": "auth_jwt_nope"})
    o.call("alias unknown entity", "POST", "identity/entity-alias",
           {"name": "x", "mount_accessor": acc, "canonical_id": "nope"})
    dan = o.call("alias makes its entity", "POST", "identity/entity-alias", {"name": "dan", "mount_accessor": acc},
                 show=("id",))["data"]["canonical_id"]
    o.call("the entity made with it", "GET", f"identity/entity/id/{dan}", show=("aliases", "policies"))
    o.call("entity rename", "POST", f"identity/entity/id/{frank}", {"name": "franz"})
    o.call("entity read renamed", "GET", "identity/entity/name/franz", show=("name",))
    o.call("entity rename to a taken name", "POST", f"identity/entity/id/{frank}", {"name": "alice"})
    o.call("entity id and name of two", "POST", "identity/entity", {"id": frank, "name": "alice"})
    o.call("entity by name with an unknown id", "POST", "identity/entity/name/zed", {"id": "nope"})
    o.call("entity by name with the id of another", "POST", "identity/entity/name/alice", {"id": frank})
    o.call("entity renamed through a name path", "POST", "identity/entity/name/fritz", {"id": frank, "name": "x"})
    o.call("entity read renamed by path", "GET", "identity/entity/name/fritz", show=("name", "policies"))
    o.call("entity by name with its own id", "POST", "identity/entity/name/fritz", {"id": frank, "policies": ["p"]})
    o.call("entity metadata key not allowed", "POST", f"identity/entity/id/{frank}", {"metadata": {"a.b": "v"}})
    o.call("entity metadata key reserved", "POST", "identity/entity", {"metadata": {"vault-x": "v"}})
    o.call("entity metadata too many pairs", "POST", "identity/entity", {"metadata": {f"k{i}": "v" for i in range(65)}})
    o.call("entity metadata at its limits", "POST", f"identity/entity/id/{frank}",
           {"metadata": {**{f"k{i}": "v" * 512 for i in range(63)}, "azAZ09=/+_-" + "k" * 117: ""}})
    o.call("entity metadata after the refusals", "GET", f"identity/entity/id/{frank}", show=("name", "policies"))
    o.call("group metadata blank key", "POST", "identity/group", {"name": "gm", "metadata": {"": "v"}})
    o.call("group metadata value too long", "POST", "identity/group", {"name": "gm", "metadata": {"k": "v" * 513}})
    o.call("group refused is not made", "GET", "identity/group/name/gm")
    o.call("group named with a final sigma", "POST", "identity/group", {"name": "\u0130\u03a3"}, show=("name",))
    o.call("group name folded as Go folds it", "POST", "identity/group", {"name": "i\u03c3"})
    o.call("group read by the folded name", "GET", "identity/group/name/i\u03c3", show=("name",))
    o.call("group read by its name in capitals", "GET", "identity/group/name/\u0130\u03a3", show=("name",))
    o.call("alias custom metadata blank key", "POST", "identity/entity-alias",
           {"name": "cm", "mount_accessor": acc2, "canonical_id": frank, "custom_metadata": {"": "v"}})
    o.call("alias custom metadata empty value", "POST", "identity/entity-alias",
           {"name": "cm", "mount_accessor": acc2, "canonical_id": frank, "custom_metadata": {"k": ""}})
    o.call("alias custom metadata unprintable", "POST", "identity/entity-alias",
           {"name": "cm", "mount_accessor": acc2, "canonical_id": frank, "custom_metadata": {"k": "a\u0001"}})
    o.call("entity disable", "POST", f"identity/entity/id/{frank}", {"disabled": True})
    login("login to a disabled entity", "jwt", "carl")
    o.call("alias delete", "DELETE", f"identity/entity-alias/id/{bob_alias}")
    o.call("alias read deleted", "GET", f"identity/entity-alias/id/{bob_alias}")
    alias_ids = [a["id"] for a in o.call("entity before delete", "GET", f"identity/entity/id/{alice}")["data"]["aliases"]]
    o.call("entity delete", "DELETE", f"identity/entity/id/{alice}")
    for n, alias_id in enumerate(alias_ids):
        o.call(f"its alias {n} is gone", "GET", f"identity/entity-alias/id/{alias_id}")
    o.call("entity read deleted", "GET", "identity/entity/name/alice")
    o.call("name free again", "POST", "identity/entity", {"name": "alice"}, show=("name",))


#: Steps whose answers differ on purpose: step → (authmount, OpenBao) status.
ENTITY_DELIBERATE: dict[str, tuple[int, int]] = {
    # Row 57: a login's alias, moved to another entity and then deleted, goes back to the entity
    # the login made (its id is derived from the mount and the name); OpenBao's is gone.
    "alias read deleted": (200, 404),
    # Row 57: a path's name is lower-cased, and metadata OpenBao refuses with a 500 (its message
    # wrapped as one of several errors) is a 400 naming the pair.
    **{step: (400, 500) for step in ("entity metadata key not allowed", "entity metadata key reserved",
                                     "entity metadata too many pairs", "group metadata blank key",
                                     "group metadata value too long", "alias custom metadata blank key",
                                     "alias custom metadata empty value", "alias custom metadata unprintable")},
}


def test_entities_and_entity_aliases_as_openbao(dev_server: ServerProc, bao: BaoProc) -> None:
    """Each step's status, error texts and shown fields (ids as labels) agree with OpenBao
    2.7.2, where logins through a name no operator's alias names get the same answers too."""
    run_both(dev_server, bao, entity_scenario, ENTITY_DELIBERATE)


def merge_scenario(o: Observer) -> None:
    """Entity merges (``identity/entity/merge``) and batch deletes, against either server: one
    person's entities of two mounts merged, what tokens and logins get afterwards, each
    refusal, clashing aliases resolved, then the merges authmount refuses on purpose."""
    acc = jwt_mounts(o, "jwt", "jwt2")["jwt"]
    view = ("name", "policies", "aliases", "group_ids", "merged_entity_ids", "disabled")

    def login(step: str, mount: str, sub: str) -> dict[str, Any]:
        out = o.call(step, "POST", f"auth/{mount}/login", {"role": "dev", "jwt": jwt(sub=sub)},
                     show=("entity_id", "identity_policies"), token=None)
        return dict(out["auth"])

    def merge(step: str, body: dict[str, Any]) -> None:
        o.call(step, "POST", "identity/entity/merge", body)

    first = login("alice through jwt", "jwt", "alice")
    second = login("alice through jwt2", "jwt2", "alice")
    e1, e2 = first["entity_id"], second["entity_id"]
    o.call("policies of the first", "POST", f"identity/entity/id/{e1}", {"policies": ["ops"]})
    gid = o.call("a group of the second", "POST", "identity/group",
                 {"name": "g", "member_entity_ids": [e2], "policies": ["grp"]}, show=("id",))["data"]["id"]
    merge("no entity to merge to", {"from_entity_ids": [e2]})
    merge("no entity to merge from", {"to_entity_id": e1})
    merge("unknown entity to merge to", {"to_entity_id": "nope", "from_entity_ids": [e2]})
    merge("unknown entity to merge from", {"to_entity_id": e1, "from_entity_ids": [e2, "nope"]})
    merge("merged into itself", {"to_entity_id": e1, "from_entity_ids": [e2, e1]})
    merge("aliases to keep with two entities", {"to_entity_id": e1, "from_entity_ids": [e2, "nope"],
                                                "conflicting_alias_ids_to_keep": ["a", "b"]})
    merge("merge", {"to_entity_id": e1, "from_entity_ids": f"{e2},{e2}"})
    o.call("the entity merged into", "GET", f"identity/entity/id/{e1}", show=view)
    o.call("the entity merged from", "GET", f"identity/entity/id/{e2}")
    token = o.call("a token of the entity merged from", "GET", "auth/token/lookup-self",
                   token=second["client_token"], show=("entity_id", "policies"))
    o.seen.append(("its identity policies", 200, sorted(token["data"]["identity_policies"])))
    login("alice through jwt2 after the merge", "jwt2", "alice")
    o.call("the group's members", "GET", f"identity/group/id/{gid}", show=("member_entity_ids",))
    o.call("the entity merged into, disabled", "POST", f"identity/entity/id/{e1}", {"disabled": True})
    o.call("a token of the entity merged from, disabled", "GET", "auth/token/lookup-self",
           token=second["client_token"])
    o.call("enabled again", "POST", f"identity/entity/id/{e1}", {"disabled": False})

    bob = login("bob through jwt", "jwt", "bob")["entity_id"]
    carl = o.call("carl", "POST", "identity/entity", {"name": "carl"}, show=("id",))["data"]["id"]
    carl_alias = o.call("carl's alias", "POST", "identity/entity-alias",
                        {"name": "carl", "mount_accessor": acc, "canonical_id": carl})["data"]["id"]
    merge("aliases on one mount", {"to_entity_id": carl, "from_entity_ids": [bob]})
    merge("aliases on one mount, keeping neither", {"to_entity_id": carl, "from_entity_ids": [bob],
                                                    "conflicting_alias_ids_to_keep": ["nope"]})
    merge("aliases on one mount, keeping the one merged into's", {
        "to_entity_id": carl, "from_entity_ids": [bob], "conflicting_alias_ids_to_keep": [carl_alias]})
    after = o.call("carl after the merge", "GET", f"identity/entity/id/{carl}",
                   show=("name", "policies", "group_ids", "merged_entity_ids"))
    o.seen.append(("carl's aliases after the merge", 200, sorted(a["name"] for a in after["data"]["aliases"])))
    o.call("carl's alias after the merge", "GET", f"identity/entity-alias/id/{carl_alias}",
           show=("name", "canonical_id", "merged_from_canonical_ids"))
    dan = o.call("dan", "POST", "identity/entity", {"name": "dan"}, show=("id",))["data"]["id"]
    dan_alias = o.call("dan's alias", "POST", "identity/entity-alias",
                       {"name": "dan", "mount_accessor": acc, "canonical_id": dan})["data"]["id"]
    erin = o.call("erin", "POST", "identity/entity", {"name": "erin"}, show=("id",))["data"]["id"]
    erin_alias = o.call("erin's alias", "POST", "identity/entity-alias",
                        {"name": "erin", "mount_accessor": acc, "canonical_id": erin})["data"]["id"]
    merge("keeping the alias of the one merged from", {
        "to_entity_id": erin, "from_entity_ids": [dan], "conflicting_alias_ids_to_keep": [dan_alias]})
    after = o.call("erin after the merge", "GET", f"identity/entity/id/{erin}", show=("merged_entity_ids",))
    o.seen.append(("erin's aliases after the merge", 200, sorted(a["name"] for a in after["data"]["aliases"])))
    o.call("erin's alias after the merge", "GET", f"identity/entity-alias/id/{erin_alias}")
    login("dan's login after the merge", "jwt", "dan")

    o.call("batch delete of nothing", "POST", "identity/entity/batch-delete", {"entity_ids": []})
    o.call("batch delete", "POST", "identity/entity/batch-delete", {"entity_ids": [carl, "nope"]})
    o.call("deleted by the batch", "GET", f"identity/entity/id/{carl}")

    # Last, the merges authmount refuses on purpose (OpenBao's state differs after them).
    henry = o.call("henry", "POST", "identity/entity", {"name": "henry"}, show=("id",))["data"]["id"]
    ivan = login("ivan through jwt", "jwt", "ivan")["entity_id"]
    jack = o.call("jack", "POST", "identity/entity", {"name": "jack"}, show=("id",))["data"]["id"]
    o.call("jack's alias", "POST", "identity/entity-alias", {"name": "jack", "mount_accessor": acc, "canonical_id": jack})
    merge("two entities with aliases on one mount", {"to_entity_id": henry, "from_entity_ids": [ivan, jack]})
    frank = login("frank through jwt", "jwt", "frank")["entity_id"]
    gina = o.call("gina", "POST", "identity/entity", {"name": "gina"}, show=("id",))["data"]["id"]
    gina_alias = o.call("gina's alias", "POST", "identity/entity-alias",
                        {"name": "gina", "mount_accessor": acc, "canonical_id": gina})["data"]["id"]
    merge("dropping the alias a login made the entity with", {
        "to_entity_id": frank, "from_entity_ids": [gina], "conflicting_alias_ids_to_keep": [gina_alias]})


#: Merge steps whose answers differ on purpose: step -> (authmount, OpenBao) status.
MERGE_DELIBERATE: dict[str, tuple[int, int]] = {
    # Row 57: an alias a login made goes only with its entity (its id is derived from the mount
    # and the name): authmount refuses to drop it, OpenBao drops it.
    "dropping the alias a login made the entity with": (400, 204),
    # Row 58: OpenBao merges two entities with aliases on one mount into one without an alias
    # there, which is left with two aliases on that mount (CVE-2021-41802's kind of state).
    "two entities with aliases on one mount": (400, 204),
    # Row 58: of two clashing aliases, OpenBao deletes the one not kept but still lists it on
    # the entity merged into (kept: the one merged from), or adds it again (kept: the other).
    "carl's aliases after the merge": (200, 200),
    "erin's aliases after the merge": (200, 200),
}
#: What authmount shows at those steps of ``MERGE_DELIBERATE`` whose status is OpenBao's.
MERGE_OURS = {"carl's aliases after the merge": ["carl"], "erin's aliases after the merge": ["dan"]}


def test_entity_merges_as_openbao(dev_server: ServerProc, bao: BaoProc) -> None:
    """Each merge and batch-delete step's status, error texts and shown fields (ids as
    labels) agree with OpenBao 2.7.2, but for the two merges authmount refuses on purpose."""
    ours = run_both(dev_server, bao, merge_scenario, MERGE_DELIBERATE)
    assert {step: shown for step, _, shown in ours.seen if step in MERGE_OURS} == MERGE_OURS


def test_hvac_entities_and_entity_aliases(dev_server: ServerProc) -> None:
    """hvac's entity and entity-alias methods (what scripts call; Terraform's provider sends
    the same requests): an entity made first, its alias, a login that reaches it, the alias
    updated and deleted."""
    client = dev_server.client()
    client.sys.enable_auth_method("jwt", path="jwt-made")
    accessor = as_json(client.sys.list_auth_methods())["data"]["jwt-made/"]["accessor"]
    client.write_data("auth/jwt-made/config", data={"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISSUER})
    client.write_data("auth/jwt-made/role/dev", data={"role_type": "jwt", "user_claim": "sub",
                                                      "bound_audiences": "authmount", "token_policies": "dev"})
    identity = client.secrets.identity
    made = as_json(identity.create_or_update_entity(name="svc-deploy", policies=["deploy"], metadata={"team": "p"}))
    eid = made["data"]["id"]
    assert made["data"]["name"] == "svc-deploy"
    alias = as_json(identity.create_or_update_entity_alias(name="deployer", canonical_id=eid, mount_accessor=accessor))
    assert alias["data"]["canonical_id"] == eid
    login = as_json(client.auth.jwt.jwt_login(role="dev", jwt=jwt(sub="deployer"), path="jwt-made", use_token=False))
    assert login["auth"]["entity_id"] == eid and login["auth"]["identity_policies"] == ["deploy"]
    assert as_json(identity.read_entity_by_name(name="svc-deploy"))["data"]["aliases"][0]["name"] == "deployer"
    identity.create_or_update_entity_by_name(name="svc-deploy", policies=["deploy", "audit"])
    user = hvac.Client(url=dev_server.url, token=login["auth"]["client_token"])
    assert as_json(user.auth.token.lookup_self())["data"]["identity_policies"] == ["audit", "deploy"]
    identity.update_entity_alias(alias_id=alias["data"]["id"], name="deployer2", canonical_id=eid,
                                 mount_accessor=accessor)
    assert as_json(identity.read_entity_alias(alias_id=alias["data"]["id"]))["data"]["name"] == "deployer2"
    assert alias["data"]["id"] in as_json(identity.list_entity_aliases())["data"]["keys"]
    identity.delete_entity_alias(alias_id=alias["data"]["id"])
    again = as_json(client.auth.jwt.jwt_login(role="dev", jwt=jwt(sub="deployer2"), path="jwt-made", use_token=False))
    assert again["auth"]["entity_id"] != eid
    identity.delete_entity(entity_id=eid)
    with pytest.raises(hvac.exceptions.InvalidPath):
        identity.read_entity(entity_id=eid)


def test_hvac_merge_entities_and_batch_delete(dev_server: ServerProc) -> None:
    """hvac's ``merge_entities`` joins one person's entities of two mounts; the older token
    then gets the merged entity's policies. (hvac has no method for batch-delete: a write.)"""
    client = dev_server.client()
    for mount in ("jwt-a", "jwt-b"):
        client.sys.enable_auth_method("jwt", path=mount)
        client.write_data(f"auth/{mount}/config", data={"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISSUER})
        client.write_data(f"auth/{mount}/role/dev", data={"role_type": "jwt", "user_claim": "sub",
                                                          "bound_audiences": "authmount", "token_policies": "dev"})
    first = as_json(client.auth.jwt.jwt_login(role="dev", jwt=jwt(sub="kim"), path="jwt-a", use_token=False))["auth"]
    second = as_json(client.auth.jwt.jwt_login(role="dev", jwt=jwt(sub="kim"), path="jwt-b", use_token=False))["auth"]
    identity = client.secrets.identity
    identity.update_entity(entity_id=first["entity_id"], policies=["ops"])
    with pytest.raises(hvac.exceptions.InvalidRequest, match="entity id to merge from is invalid"):
        identity.merge_entities(from_entity_ids=["nope"], to_entity_id=first["entity_id"])
    identity.merge_entities(from_entity_ids=[second["entity_id"]], to_entity_id=first["entity_id"])
    user = hvac.Client(url=dev_server.url, token=second["client_token"])
    assert as_json(user.auth.token.lookup_self())["data"]["identity_policies"] == ["ops"]
    merged = as_json(identity.read_entity(entity_id=first["entity_id"]))["data"]
    assert merged["merged_entity_ids"] == [second["entity_id"]] and len(merged["aliases"]) == 2
    client.write_data("identity/entity/batch-delete", data={"entity_ids": [first["entity_id"]]})
    with pytest.raises(hvac.exceptions.InvalidPath):
        identity.read_entity(entity_id=first["entity_id"])


TEMPLATED = """
path "auth/jwt/role/{{identity.entity.aliases.ACC.metadata.project}}" { capabilities = ["read"] }
path "auth/jwt/role/{{identity.entity.name}}-own" { capabilities = ["read", "update"] }
path "auth/jwt/role/team-{{identity.entity.metadata.team}}/*" { capabilities = ["list"] }
path "identity/group/name/{{identity.groups.names.devs.name}}" { capabilities = ["read"] }
path "identity/group/id/{{identity.groups.names.devs.id}}" { capabilities = ["update"] }
path "auth/jwt/role/x-{{identity.groups.ids.GID.metadata.tier}}" { capabilities = ["read"] }
path "auth/jwt/role/c-{{identity.entity.aliases.ACC.custom_metadata.c}}" { capabilities = ["read"] }
path "auth/jwt/role/id-{{identity.entity.aliases.ACC.id}}" { capabilities = ["read"] }
path "auth/jwt/role/no-{{identity.entity.aliases.nope.name}}" { capabilities = ["read"] }
"""


def templated_scenario(o: Observer) -> None:
    """Identity templates in policy paths: what each token may do, asked of
    ``sys/capabilities-self`` on the paths its templates fill and on some they must not."""
    acc = jwt_mounts(o, "jwt", token_policies="tmpl", claim_mappings={"project": "project"})["jwt"]
    carol = o.call("carol", "POST", "identity/entity", {"name": "carol", "metadata": {"team": "red"}},
                   show=("id",))["data"]["id"]
    alias = o.call("carol's alias", "POST", "identity/entity-alias", {
        "name": "carol", "mount_accessor": acc, "canonical_id": carol, "custom_metadata": {"c": "cm"}})["data"]["id"]
    gid = o.call("devs", "POST", "identity/group", {"name": "devs", "member_entity_ids": [carol],
                                                   "metadata": {"tier": "gold"}}, show=("id",))["data"]["id"]
    text = TEMPLATED.replace("ACC", acc).replace("GID", gid)
    o.call("the policy", "POST", "sys/policies/acl/tmpl", {"policy": text})
    o.call("a policy of unbalanced braces", "POST", "sys/policies/acl/bad", {"policy": 'path "a/{{x" {capabilities=["read"]}'})
    o.call("the policy read", "GET", "sys/policies/acl/tmpl",
           show=("allow_slashes_in_identity_templates", "allow_wildcards_in_identity_templates"))

    def login(step: str, sub: str, project: str) -> str:
        out = o.call(step, "POST", "auth/jwt/login", {"role": "dev", "jwt": jwt(sub=sub, project=project)}, token=None,
                     show=("policies",))
        return str(out["auth"]["client_token"])

    asked = ["auth/jwt/role/web", "auth/jwt/role/a/b", "auth/jwt/role/carol-own", "auth/jwt/role/team-red/x",
             "auth/jwt/role/team-blue/x", "identity/group/name/devs", f"identity/group/id/{gid}",
             "auth/jwt/role/x-gold", "auth/jwt/role/c-cm", f"auth/jwt/role/id-{alias}", "auth/jwt/role/no-carol",
             f"identity/entity/id/{carol}", "identity/entity/name/carol", "identity/entity/id/other",
             "auth/jwt/role/wild*"]

    def capabilities(step: str, token: str) -> None:
        out = o.call(step, "POST", "sys/capabilities-self", {"paths": asked}, token=token)
        if "data" in out:  # the paths with their ids as labels
            o.seen[-1] = (step, 200, {_IDS.sub(lambda m: o.label(m.group()), p): out["data"].get(p) for p in asked})

    capabilities("carol, project web", login("carol logs in", "carol", "web"))
    capabilities("carol, a project with a slash", login("carol logs in again", "carol", "a/b"))
    capabilities("carol, a project with a glob", login("carol logs in with a glob", "carol", "wild*"))
    capabilities("dave, no entity of his own", login("dave logs in", "dave", "web"))
    token = o.call("a token without an entity", "POST", "auth/token/create", {"policies": ["tmpl"]})["auth"]
    capabilities("no entity", token["client_token"])
    o.call("slashes allowed", "POST", "sys/policies/acl/tmpl", {"policy": text, "allow_slashes_in_identity_templates": True})
    capabilities("carol, a project with a slash, slashes allowed", login("carol logs in once more", "carol", "a/b"))
    o.call("wildcards allowed", "POST", "sys/policies/acl/tmpl",
           {"policy": text, "allow_wildcards_in_identity_templates": True})
    capabilities("carol, a project with a glob, wildcards allowed", login("carol logs in at last", "carol", "wild*"))
    o.call("the policy read again", "GET", "sys/policies/acl/tmpl",
           show=("allow_slashes_in_identity_templates", "allow_wildcards_in_identity_templates"))


def test_templated_policies_as_openbao(dev_server: ServerProc, bao: BaoProc) -> None:
    """What tokens may do under a policy with identity templates (entity, aliases, metadata,
    custom metadata, groups by name and id; the default policy's own entity paths), with
    OpenBao's flags for slashes and wildcards in filled values, agrees with OpenBao 2.7.2."""
    ours = run_both(dev_server, bao, templated_scenario, TEMPLATED_DELIBERATE)
    for step, expected in TEMPLATED_OURS.items():
        shown = next(s for name, _, s in ours.seen if name == step)
        assert {p: caps for p, caps in shown.items() if caps != ["deny"]} == expected, step


#: Row 59: a value filled into a template that holds a character the policy does not allow
#: leaves that path out here (the token keeps the rest); OpenBao 2.7.2 refuses every request
#: of the token, its own lookup-self included, with ``400 Forbidden``.
TEMPLATED_DELIBERATE = {"carol, a project with a slash": (200, 400), "carol, a project with a glob": (200, 400)}
#: What those tokens may do here (every path not listed: deny).
_CAROL = {"auth/jwt/role/carol-own": ["read", "update"], "auth/jwt/role/team-red/x": ["list"],
          "identity/group/name/devs": ["read"], "identity/group/id/ID2": ["update"], "auth/jwt/role/x-gold": ["read"],
          "auth/jwt/role/c-cm": ["read"], "auth/jwt/role/id-ID3": ["read"], "identity/entity/id/ID1": ["read"],
          "identity/entity/name/carol": ["read"]}
TEMPLATED_OURS = {"carol, a project with a slash": _CAROL, "carol, a project with a glob": _CAROL}


def nested_scenario(o: Observer) -> None:
    """Nested groups (``member_group_ids``), against either server: an external group of IdP
    logins nested in an internal group that carries the policies, a third level, what the
    groups and the entity show, what a login's token gets, and each refusal."""
    acc = jwt_mounts(o, "jwt", groups_claim="groups")["jwt"]
    view = ("name", "member_group_ids", "parent_group_ids", "policies", "type")
    idp = o.call("external group", "POST", "identity/group", {"name": "idp-devs", "type": "external",
                                                              "policies": ["ext"]}, show=("id",))["data"]["id"]
    o.call("its alias", "POST", "identity/group-alias", {"name": "devs", "mount_accessor": acc, "canonical_id": idp})
    team = o.call("internal group", "POST", "identity/group", {"name": "team", "policies": ["team"],
                                                               "member_group_ids": [idp]}, show=("id",))["data"]["id"]
    org = o.call("top group", "POST", "identity/group", {"name": "org", "policies": ["org"],
                                                         "member_group_ids": f"{team}"}, show=("id",))["data"]["id"]
    for name, gid in (("external", idp), ("internal", team), ("top", org)):
        o.call(f"{name} group read", "GET", f"identity/group/id/{gid}", show=view)
    login = o.call("login in the IdP group", "POST", "auth/jwt/login",
                   {"role": "dev", "jwt": jwt(sub="nia", groups=["devs"])}, token=None,
                   show=("identity_policies", "token_policies"))["auth"]
    # OpenBao lists inherited groups in the order of a Go map's walk, which changes run to run.
    o.call("its entity", "GET", f"identity/entity/id/{login['entity_id']}",
           show=("direct_group_ids", "inherited_group_ids", "group_ids"), unordered=("inherited_group_ids", "group_ids"))
    o.call("its token", "GET", "auth/token/lookup-self", token=login["client_token"], show=("identity_policies",))
    o.call("member groups on an external group", "POST", f"identity/group/id/{idp}", {"member_group_ids": [team]})
    o.call("a cycle", "POST", f"identity/group/id/{idp}", {"member_group_ids": [org]})
    o.call("a cycle of internal groups", "POST", f"identity/group/id/{team}", {"member_group_ids": [idp, org]})
    o.call("a member group that does not exist", "POST", f"identity/group/id/{team}", {"member_group_ids": ["nope"]})
    o.call("the group itself", "POST", f"identity/group/id/{team}", {"member_group_ids": [team]})
    o.call("the nesting taken apart", "POST", f"identity/group/id/{org}", {"member_group_ids": []})
    o.call("the top group after", "GET", f"identity/group/id/{org}", show=view)
    o.call("the internal group after", "GET", f"identity/group/id/{team}", show=view)
    o.call("the token after", "GET", "auth/token/lookup-self", token=login["client_token"], show=("identity_policies",))


#: Row 60: OpenBao answers these with 500 (its message wrapped as one of several errors), and
#: shows a group whose parents were all taken away with ``parent_group_ids: []`` (null here).
NESTED_DELIBERATE = {"a member group that does not exist": (400, 500), "the group itself": (400, 500),
                     "the internal group after": (200, 200)}


def test_nested_groups_as_openbao(dev_server: ServerProc, bao: BaoProc) -> None:
    """Each nested-group step's status, texts and shown fields (ids as labels) agree with
    OpenBao 2.7.2, but the two refusals it answers with a 500; an entity's inherited groups
    are compared sorted (OpenBao lists them in a Go map's order, which changes run to run)."""
    ours = run_both(dev_server, bao, nested_scenario, NESTED_DELIBERATE)
    refusals = {step: shown for step, _, shown in ours.seen if step in NESTED_DELIBERATE}
    assert refusals == {"a member group that does not exist": ['invalid member group ID "nope"'],
                        "the group itself": ['member group ID "ID2" is same as the ID of the group'],
                        "the internal group after": {"name": "team", "member_group_ids": ["ID1"],
                                                     "parent_group_ids": None, "policies": ["team"],
                                                     "type": "internal"}}


def test_hvac_nested_groups(dev_server: ServerProc) -> None:
    """hvac's ``create_or_update_group`` with ``member_group_ids`` (what Terraform's
    ``vault_identity_group`` sends): a login in the inner group gets the outer group's policy."""
    client = dev_server.client()
    client.sys.enable_auth_method("jwt", path="jwt-nest")
    accessor = as_json(client.sys.list_auth_methods())["data"]["jwt-nest/"]["accessor"]
    client.write_data("auth/jwt-nest/config", data={"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISSUER})
    client.write_data("auth/jwt-nest/role/dev", data={"role_type": "jwt", "user_claim": "sub", "groups_claim": "groups",
                                                      "bound_audiences": "authmount", "token_policies": "dev"})
    identity = client.secrets.identity
    inner = as_json(identity.create_or_update_group(name="idp-ops", group_type="external"))["data"]["id"]
    identity.create_or_update_group_alias(name="ops", mount_accessor=accessor, canonical_id=inner)
    outer = as_json(identity.create_or_update_group(name="ops-policies", policies=["ops"],
                                                    member_group_ids=[inner]))["data"]["id"]
    assert as_json(identity.read_group(group_id=inner))["data"]["parent_group_ids"] == [outer]
    login = as_json(client.auth.jwt.jwt_login(role="dev", jwt=jwt(sub="pat", groups=["ops"]), path="jwt-nest",
                                              use_token=False))
    assert login["auth"]["identity_policies"] == ["ops"]
