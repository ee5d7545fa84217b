"""Identity over HTTP: external groups grant policies to the logins whose IdP groups their
aliases name, judged at each use of the token; the identity/ API's shapes and refusals."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from plugin.errors import InvalidRequest, NotFound
from plugin.storage import InMemoryStorage
from server.app import create_app
from server.appkeys import IDENTITY, TOKENS
from server.http.listverb import make_test_server
from server.identity.names import CLAIM_GRACE, name_key
from server.identity.store import (
    ENTITY_ATTRS_PREFIX,
    GROUP_NAME_PREFIX,
    EntityAttrs,
    Group,
    GroupAlias,
    IdentityStore,
    MountRef,
    new_id,
)
from server.settings import Settings, StorageSettings
from tests.plugin.keyfactory import make_token, rsa_key
from tests.server.httpkit import Client, app_of
from tests.server.tokenkit import count_reads

ROOT = "root-token-for-identity-tests"
H = {"X-Vault-Token": ROOT}
KEY = rsa_key(kid="id")
OPS_POLICY = 'path "auth/jwt/role/*" { capabilities = ["read"] }'


class Api:
    """A root client of one server with a ``jwt`` mount (role ``dev``: groups from ``groups``)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.accessor = ""

    async def call(self, method: str, path: str, body: Any = None, token: str | None = ROOT) -> tuple[int, Any]:
        headers = {"X-Vault-Token": token} if token else {}
        resp = await self.client.request(method, "/v1/" + path, json=body, headers=headers)
        text = await resp.text()
        return resp.status, (await resp.json() if text else None)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, out = await self.call(method, path, body)
        assert status in (200, 204), (path, status, out)
        return out

    async def login(self, sub: str, groups: list[str], *, mount: str = "jwt", role: str = "dev") -> dict[str, Any]:
        now = int(time.time())
        jwt = make_token({"sub": sub, "groups": groups, "aud": "authmount", "iat": now, "exp": now + 300}, key=KEY)
        status, out = await self.call("POST", f"auth/{mount}/login", {"role": role, "jwt": jwt}, token=None)
        assert status == 200, out
        auth: dict[str, Any] = out["auth"]
        return auth

    async def group(self, name: str, policies: list[str], alias: str, accessor: str = "") -> str:
        out = await self.ok("POST", "identity/group", {"name": name, "type": "external", "policies": policies})
        gid: str = out["data"]["id"]
        await self.ok("POST", "identity/group-alias",
                      {"name": alias, "mount_accessor": accessor or self.accessor, "canonical_id": gid})
        return gid


async def _mount(api: Api, path: str) -> str:
    await api.ok("POST", f"sys/auth/{path}", {"type": "jwt"})
    await api.ok("POST", f"auth/{path}/config", {"jwt_validation_pubkeys": [KEY.pem]})
    for role, extra in (("dev", {}), ("batch", {"token_type": "batch"})):
        await api.ok("POST", f"auth/{path}/role/{role}", {
            "role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount", "groups_claim": "groups",
            "token_policies": "dev", **extra,
        })
    out = await api.ok("GET", "sys/auth")
    accessor: str = out["data"][f"{path}/"]["accessor"]
    return accessor


@pytest.fixture
async def api(aiohttp_client: AiohttpClient) -> Api:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    a = Api(client)
    a.accessor = await _mount(a, "jwt")
    await a.ok("POST", "sys/policies/acl/ops", {"policy": OPS_POLICY})
    return a


async def _can_read_role(api: Api, token: str) -> int:
    status, _ = await api.call("GET", "auth/jwt/role/dev", token=token)
    return status


async def test_external_group_grants_its_policy_through_the_idp_group(api: Api) -> None:
    await api.group("ops", ["ops"], "ops-idp")
    auth = await api.login("alice", ["ops-idp", "other"])
    assert auth["policies"] == ["default", "dev", "ops"]
    assert auth["token_policies"] == ["default", "dev"]
    assert auth["identity_policies"] == ["ops"]
    assert await _can_read_role(api, auth["client_token"]) == 200
    status, me = await api.call("GET", "auth/token/lookup-self", token=auth["client_token"])
    assert status == 200
    assert me["data"]["policies"] == ["default", "dev"]
    assert me["data"]["identity_policies"] == ["ops"]
    assert me["data"]["entity_id"] == auth["entity_id"]


async def test_no_group_no_identity_policies(api: Api) -> None:
    await api.group("ops", ["ops"], "ops-idp")
    auth = await api.login("bob", ["elsewhere"])
    assert auth["policies"] == auth["token_policies"] == ["default", "dev"]
    assert "identity_policies" not in auth
    assert await _can_read_role(api, auth["client_token"]) == 403
    status, me = await api.call("GET", "auth/token/lookup-self", token=auth["client_token"])
    assert "identity_policies" not in me["data"]


async def test_group_policy_change_applies_at_the_next_use(api: Api) -> None:
    gid = await api.group("ops", ["elsewhere"], "ops-idp")
    token = (await api.login("alice", ["ops-idp"]))["client_token"]
    assert await _can_read_role(api, token) == 403
    await api.ok("POST", f"identity/group/id/{gid}", {"policies": ["ops"]})
    assert await _can_read_role(api, token) == 200
    status, caps = await api.call("POST", "sys/capabilities-self", {"paths": ["auth/jwt/role/x"]}, token=token)
    assert caps["data"]["auth/jwt/role/x"] == ["read"]
    await api.ok("POST", "identity/group/name/ops", {"policies": []})
    assert await _can_read_role(api, token) == 403
    await api.ok("POST", "identity/group/name/ops", {"policies": ["ops"]})
    await api.ok("DELETE", f"identity/group/id/{gid}")
    assert await _can_read_role(api, token) == 403


async def test_batch_tokens_get_identity_policies_at_use(api: Api) -> None:
    gid = await api.group("ops", ["ops"], "ops-idp")
    auth = await api.login("alice", ["ops-idp"], role="batch")
    assert auth["token_type"] == "batch" and auth["identity_policies"] == ["ops"]
    assert await _can_read_role(api, auth["client_token"]) == 200
    await api.ok("DELETE", f"identity/group/id/{gid}")
    assert await _can_read_role(api, auth["client_token"]) == 403


async def test_a_later_login_refreshes_the_entitys_memberships(api: Api) -> None:
    """As in Vault: memberships belong to the entity, so a later login through the same mount
    with other IdP groups changes what the earlier token gets."""
    await api.group("ops", ["ops"], "ops-idp")
    first = (await api.login("alice", ["ops-idp"]))["client_token"]
    assert await _can_read_role(api, first) == 200
    second = await api.login("alice", ["dev-idp"])
    assert "identity_policies" not in second
    assert await _can_read_role(api, first) == 403


@pytest.mark.parametrize(
    "idp_groups",
    [["OPS-IDP"], ["ops-idp "], ["ops-idp/x"], ["*"], ["ops-*"], ["ops"]],
    ids=["case", "trailing-space", "suffix", "star", "glob", "group-name-not-alias"],
)
async def test_idp_group_names_match_aliases_exactly(api: Api, idp_groups: list[str]) -> None:
    await api.group("ops", ["ops"], "ops-idp")
    auth = await api.login("mallory", idp_groups)
    assert "identity_policies" not in auth


async def test_group_alias_of_another_mount_does_not_match(api: Api) -> None:
    other = await _mount(api, "other")
    await api.group("ops", ["ops"], "ops-idp", accessor=other)
    auth = await api.login("alice", ["ops-idp"])
    assert "identity_policies" not in auth
    assert await _can_read_role(api, auth["client_token"]) == 403
    assert (await api.login("alice", ["ops-idp"], mount="other"))["identity_policies"] == ["ops"]
    # one entity per alias name and mount
    assert (await api.login("alice", [], mount="other"))["entity_id"] != auth["entity_id"]


async def test_memberships_through_other_mounts_are_kept(api: Api) -> None:
    """A login refreshes only the memberships of groups whose alias is on its own mount."""
    identity = app_of(api.client)[IDENTITY]
    gid = await api.group("ops", ["ops"], "ops-idp")
    auth = await api.login("alice", ["ops-idp"])
    entity = await identity.entity(auth["entity_id"])
    assert entity is not None and entity.group_ids == [gid]
    status, group = await api.call("GET", f"identity/group/id/{gid}")
    assert group["data"]["member_entity_ids"] == [auth["entity_id"]]


async def test_an_internal_group_may_name_an_entity_before_its_first_login(api: Api) -> None:
    """Entity IDs follow from the mount and the alias name, so an operator may add one before
    the entity exists (OpenBao 2.7.2 answers an unknown member ID with 500)."""
    future = app_of(api.client)[TOKENS].entity_id(api.accessor, "dave")
    await api.ok("POST", "identity/group", {"name": "early", "policies": "ops", "member_entity_ids": [future]})
    auth = await api.login("dave", [])
    assert auth["entity_id"] == future and auth["identity_policies"] == ["ops"]
    assert await _can_read_role(api, auth["client_token"]) == 200


async def test_internal_group_members_get_its_policies(api: Api) -> None:
    auth = await api.login("carol", [])
    out = await api.ok("POST", "identity/group", {"name": "admins", "policies": "ops",
                                                  "member_entity_ids": [auth["entity_id"]]})
    assert await _can_read_role(api, auth["client_token"]) == 200
    status, group = await api.call("GET", f"identity/group/id/{out['data']['id']}")
    assert group["data"]["type"] == "internal"
    assert group["data"]["member_entity_ids"] == [auth["entity_id"]]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("identity/group", {"name": "g", "type": "external", "policies": ["a", " Root "]},
         "policies cannot contain root"),
        ("identity/group", {"name": "g", "type": "weird"}, 'invalid group type "weird"'),
        ("identity/group", {"name": "g", "type": "external", "member_entity_ids": ["x"]},
         "member entities can't be set manually for external groups"),
        ("identity/group", {"name": "g", "member_group_ids": ["x"]}, 'invalid member group ID "x"'),
        ("identity/group", {"name": "a/b"}, 'invalid group name "a/b"'),
        ("identity/group", {"name": ""}, "empty group name"),  # OpenBao's answer; left out, a name is made up
        ("identity/group", {"id": ""}, "empty group ID"),  # OpenBao's answer: a given id names a group
        ("identity/group", {"id": "", "name": "x"}, "empty group ID"),
        ("identity/group", {"id": "nope", "name": "ext"}, "invalid group ID"),
        ("identity/group-alias", {"name": "x", "mount_accessor": "auth_jwt_nope", "canonical_id": "{ext}"},
         'invalid mount accessor "auth_jwt_nope"'),
        ("identity/group-alias", {"name": "x", "mount_accessor": "{acc}"},
         "missing canonical_id: the ID of the external group the alias stands for"),
        ("identity/group-alias", {"name": "", "mount_accessor": "{acc}", "canonical_id": "{ext}"},
         "missing alias name"),
        ("identity/group-alias", {"name": "x", "canonical_id": "{ext}"}, "missing mount_accessor"),
        ("identity/group-alias", {"name": "x", "mount_accessor": "{acc}", "canonical_id": "{int}"},
         "alias can't be set on an internal group"),
        ("identity/group-alias", {"name": "x", "mount_accessor": "{acc}", "canonical_id": "nope"},
         "invalid group ID given in 'canonical_id'"),
        ("identity/group-alias", {"name": "EXT-IDP", "mount_accessor": "{acc}", "canonical_id": "{ext2}"},
         "combination of mount and group alias name is already in use"),
        ("identity/group-alias", {"name": "second", "mount_accessor": "{acc}", "canonical_id": "{ext}"},
         'group "ext" already has an alias: update or delete it first'),
        ("identity/group", {"name": "EXT", "type": "internal"}, "group type cannot be changed"),
        ("identity/lookup/entity", {"id": "a", "name": "b"},
         "exactly one of 'id', 'name', 'alias_id', or the pair 'alias_name' and 'alias_mount_accessor' must be given"),
        ("identity/lookup/group", {"alias_name": "a"}, "both 'alias_name' and 'alias_mount_accessor' need to be set"),
    ],
    ids=[
        "root-policy", "bad-type", "external-members", "nested-groups", "slash-name", "empty-name", "empty-id",
        "empty-id-with-name", "unknown-id", "unknown-accessor",
        "no-canonical-id", "no-alias-name", "no-accessor", "internal-group-alias", "unknown-group",
        "alias-name-taken-any-case", "second-alias", "type-change", "lookup-two-keys", "lookup-half-pair",
    ],
)
async def test_identity_writes_refused(api: Api, path: str, body: dict[str, Any], message: str) -> None:
    ext = await api.group("ext", ["ops"], "ext-idp")
    ext2 = (await api.ok("POST", "identity/group", {"name": "ext2", "type": "external"}))["data"]["id"]
    internal = (await api.ok("POST", "identity/group", {"name": "int"}))["data"]["id"]
    ids = {"{ext}": ext, "{ext2}": ext2, "{int}": internal, "{acc}": api.accessor}
    body = {k: ids.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    status, out = await api.call("POST", path, body)
    assert (status, out["errors"]) == (400, [message])


async def test_group_shapes(api: Api) -> None:
    out = await api.ok("POST", "identity/group", {"name": "Ops", "type": "external", "policies": ["Dev", " x "],
                                                  "metadata": {"team": "a"}})
    assert sorted(out["data"]) == ["id", "name"]
    gid = out["data"]["id"]
    assert await api.ok("POST", "identity/group", {"name": "ops", "metadata": {"team": "b"}}) is None  # update: 204
    alias = await api.ok("POST", "identity/group-alias", {"name": "ops-idp", "mount_accessor": api.accessor,
                                                          "canonical_id": gid})
    assert alias["data"] == {"canonical_id": gid, "id": alias["data"]["id"]}
    group = (await api.ok("GET", "identity/group/name/OPS"))["data"]
    assert group["name"] == "ops" and group["policies"] == ["dev", "x"] and group["metadata"] == {"team": "b"}
    assert sorted(group) == sorted([
        "alias", "creation_time", "id", "last_update_time", "member_entity_ids", "member_group_ids", "metadata",
        "modify_index", "name", "namespace_id", "parent_group_ids", "policies", "type",
    ])
    assert group["alias"]["mount_path"] == "auth/jwt/" and group["alias"]["mount_type"] == "jwt"
    listed = (await api.ok("LIST", "identity/group/id"))["data"]
    assert listed["keys"] == [gid] and listed["key_info"][gid]["name"] == "ops"
    assert (await api.ok("LIST", "identity/group/name"))["data"]["keys"] == ["ops"]
    aliases = (await api.ok("LIST", "identity/group-alias/id"))["data"]
    assert aliases["key_info"][alias["data"]["id"]]["name"] == "ops-idp"
    read = (await api.ok("GET", f"identity/group-alias/id/{alias['data']['id']}"))["data"]
    assert read["canonical_id"] == gid and read["mount_accessor"] == api.accessor
    # the alias moved to another name; deleted; the group stays
    await api.ok("POST", f"identity/group-alias/id/{alias['data']['id']}", {"name": "renamed"})
    assert (await api.ok("GET", f"identity/group/id/{gid}"))["data"]["alias"]["name"] == "renamed"
    await api.ok("DELETE", f"identity/group-alias/id/{alias['data']['id']}")
    assert (await api.ok("GET", f"identity/group/id/{gid}"))["data"]["alias"] == {}
    await api.ok("DELETE", "identity/group/name/ops")
    assert (await api.call("GET", f"identity/group/id/{gid}")) == (404, {"errors": []})
    assert (await api.call("LIST", "identity/group/id")) == (404, {"errors": []})


@pytest.mark.parametrize("path", ["identity/group", "identity/group/name/Race"])
async def test_registers_of_one_name_at_once_make_one_group_and_update_it(
    aiohttp_client: AiohttpClient, tmp_path: Any, path: str,
) -> None:
    """Six registers of one name at the same moment on a SQLite server (each write waits for
    its commit, so all six look the name up before the first group is stored): the first
    creates the group (200), the others find it and update it (204), as with Vault's one
    lock; none is refused."""
    import asyncio

    storage = StorageSettings(type="sqlite", path=str(tmp_path / "id.db"))
    client: Client = await aiohttp_client(make_test_server(create_app(Settings(storage=storage, dev=True, dev_root_token_id=ROOT))))
    api = Api(client)
    bodies = [{"name": "Race", "type": "external", "metadata": {"n": str(i)}} for i in range(6)]
    results = await asyncio.gather(*(api.call("POST", path, body) for body in bodies))
    assert sorted(status for status, _ in results) == [200, 204, 204, 204, 204, 204], results
    assert [n.lower() for n in (await api.ok("LIST", "identity/group/name"))["data"]["keys"]] == ["race"]


async def test_entities_made_at_login(api: Api) -> None:
    gid = await api.group("ops", ["ops"], "ops-idp")
    auth = await api.login("alice", ["ops-idp"])
    eid = auth["entity_id"]
    entity = (await api.ok("GET", f"identity/entity/id/{eid}"))["data"]
    assert entity["group_ids"] == entity["direct_group_ids"] == [gid]
    assert entity["name"].startswith("entity_") and entity["policies"] == []
    [alias] = entity["aliases"]
    assert (alias["name"], alias["mount_accessor"], alias["canonical_id"]) == ("alice", api.accessor, eid)
    assert alias["metadata"] == {"role": "dev"}
    assert (await api.ok("GET", f"identity/entity/name/{entity['name']}"))["data"]["id"] == eid
    assert (await api.ok("GET", f"identity/entity-alias/id/{alias['id']}"))["data"]["canonical_id"] == eid
    assert (await api.ok("LIST", "identity/entity/id"))["data"]["keys"] == [eid]
    assert (await api.ok("LIST", "identity/entity/name"))["data"]["keys"] == [entity["name"]]
    assert list((await api.ok("LIST", "identity/entity-alias/id"))["data"]["key_info"]) == [alias["id"]]
    found = await api.ok("POST", "identity/lookup/entity", {"alias_name": "alice", "alias_mount_accessor": api.accessor})
    assert found["data"]["id"] == eid
    group = await api.ok("POST", "identity/lookup/group", {"alias_name": "ops-idp", "alias_mount_accessor": api.accessor})
    assert group["data"]["id"] == gid
    assert await api.ok("POST", "identity/lookup/entity", {"name": "entity_0000000000000000"}) is None  # 204
    # the same identity again: the same entity (ids are stable), no second one
    assert (await api.login("alice", []))["entity_id"] == eid
    await api.ok("DELETE", f"identity/entity/id/{eid}")
    assert (await api.call("GET", f"identity/entity/id/{eid}"))[0] == 404
    assert (await api.login("alice", ["ops-idp"]))["identity_policies"] == ["ops"]


@pytest.mark.parametrize("path", ["identity/group/name/../../sys", "identity/entity/id/a%00b",
                                  "identity/entity/name/entity_../x"])
async def test_odd_names_are_not_found(api: Api, path: str) -> None:
    status, _ = await api.call("GET", path)
    assert status in (404, 405)


async def test_identity_paths_need_a_token_and_the_acl(api: Api) -> None:
    assert (await api.call("LIST", "identity/group/id", token=None))[0] == 403
    token = (await api.login("alice", []))["client_token"]
    assert (await api.call("POST", "identity/group", {"name": "x", "policies": "ops"}, token=token))[0] == 403
    await api.ok("POST", "sys/policies/acl/groups", {"policy": 'path "identity/group/name/*" { capabilities = ["read"] }'})
    await api.ok("POST", "identity/group", {"name": "readers", "policies": "groups",
                                           "member_entity_ids": [(await api.login("alice", []))["entity_id"]]})
    assert (await api.call("GET", "identity/group/name/readers", token=token))[0] == 200
    assert (await api.call("GET", "identity/group/id/x", token=token))[0] == 403


async def test_acl_judges_the_canonical_group_name(api: Api) -> None:
    """A deny on one group's name path also covers other spellings of that name (row 19)."""
    await api.ok("POST", "identity/group", {"name": "Admins", "policies": "ops"})
    await api.ok("POST", "sys/policies/acl/groups", {"policy": (
        'path "identity/group/name/*" { capabilities = ["read", "update"] }\n'
        'path "identity/group/name/admins" { capabilities = ["deny"] }')})
    auth = await api.login("eve", [])
    await api.ok("POST", "identity/group", {"name": "readers", "policies": "groups",
                                           "member_entity_ids": [auth["entity_id"]]})
    for spelling in ("admins", "ADMINS", "Admins"):
        status, _ = await api.call("GET", f"identity/group/name/{spelling}", token=auth["client_token"])
        assert status == 403, spelling
        status, _ = await api.call("POST", f"identity/group/name/{spelling}", {"policies": "root-ish"},
                                   token=auth["client_token"])
        assert status == 403, spelling
    assert (await api.call("GET", "identity/group/name/READERS", token=auth["client_token"]))[0] == 200


async def test_openapi_lists_identity_and_cel_paths(api: Api) -> None:
    resp = await api.client.get("/v1/sys/internal/specs/openapi", headers=H)
    paths = (await resp.json())["paths"]
    assert {"/identity/group", "/identity/group/id/{id}", "/identity/group-alias",
            "/identity/lookup/entity", "/auth/jwt/cel/role/{name}"} <= set(paths)
    assert paths["/auth/jwt/cel/login"]["x-vault-unauthenticated"] is True
    role = paths["/auth/jwt/role/{name}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert role["properties"]["token_policies_template_claims"]["type"] == "boolean"
    group = paths["/identity/group"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(group["properties"]) >= {"name", "type", "policies", "metadata", "member_entity_ids"}


async def test_token_use_reads_no_entity_when_no_group_grants(aiohttp_client: AiohttpClient) -> None:
    """A token of an identity is judged without any storage read for its entity while no
    group grants a policy, and with at most one (a cache miss) when one does."""
    storage = InMemoryStorage()
    reads = count_reads(storage)
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    client: Client = await aiohttp_client(make_test_server(create_app(settings, storage=storage)))
    api = Api(client)
    api.accessor = await _mount(api, "jwt")
    token = (await api.login("alice", ["x"]))["client_token"]
    reads.clear()
    for _ in range(3):
        await api.call("GET", "auth/token/lookup-self", token=token)
    assert not [k for k in reads if k.startswith("identity/")]
    await api.ok("POST", "sys/policies/acl/ops", {"policy": OPS_POLICY})
    await api.group("ops", ["ops"], "x")
    app_of(client)[IDENTITY]._entities.clear()  # a cold cache: the first use reads the entity once
    reads.clear()
    for _ in range(3):
        assert await _can_read_role(api, token) == 403  # member only after its next login
    assert len([k for k in reads if k.startswith("identity/entity/")]) == 1


class SharedStorage(InMemoryStorage):
    """Storage written by several nodes whose change notifications never arrive."""

    shared = True


@pytest.mark.parametrize("shared", [True, False], ids=["shared storage", "single node"])
async def test_a_group_made_on_another_node_is_found_on_a_miss(shared: bool) -> None:
    """Worker B must not answer 404 (or delete nothing, or refuse an alias of it) for a group
    worker A has just made while A's announcement is still on the way: a client's next
    request after a create, on a new connection, may reach B. With one node a miss is a miss."""
    storage = SharedStorage() if shared else InMemoryStorage()
    a, b, c = (IdentityStore(storage, mounts=lambda accessor: MountRef(accessor, "auth/jwt/", "jwt")) for _ in range(3))
    for store in (a, b, c):
        await store.load()
    group = Group(id=new_id(), name="Fresh", type="external")
    await a.write_group(group)
    alias = GroupAlias(id=new_id(), name="idp-fresh", mount_accessor="auth_jwt_00000001", canonical_id=group.id)
    assert b.groups.get(group.id) is None and c.groups.get(group.id) is None  # no announcement arrived
    with nullcontext() if shared else pytest.raises(InvalidRequest, match="invalid group ID given in 'canonical_id'"):
        await b.write_alias(alias, created=True)  # b re-reads on the miss and finds a's group
    assert ((await c.find_group(gid=group.id)) is not None) is shared
    assert ((await c.find_group(name="fresh")) is not None) is shared
    assert ((await c.find_alias(alias.id)) is not None) is shared
    assert await c.find_group(gid="nope") is None and await c.find_alias("nope") is None


async def test_a_group_update_keeps_another_nodes_change_it_has_not_heard_of() -> None:
    """Node B updates a group by running the write's changes on the stored group, not on its
    own copy: node A's change of a moment ago (its announcement on the way) is kept."""
    storage = SharedStorage()
    a, b = (IdentityStore(storage, mounts=lambda accessor: MountRef(accessor, "auth/jwt/", "jwt")) for _ in range(2))
    await a.load()
    group = Group(id=new_id(), name="ops", type="internal")
    await a.write_group(group)
    await b.load()

    def with_policies(g: Group) -> Group:
        g = Group.from_storage(g.to_storage())
        g.policies = ["p1"]
        return g

    def with_metadata(g: Group) -> Group:
        g = Group.from_storage(g.to_storage())
        g.metadata = {"team": "ops"}
        return g

    await a.write_group(with_policies(group), change=with_policies)
    stale = b.groups[group.id]
    assert stale.policies == []  # b has not heard
    await b.write_group(with_metadata(stale), change=with_metadata)
    raw = await storage.get("identity/group/" + group.id)
    assert isinstance(raw, dict)
    stored = Group.from_storage(raw)
    assert (stored.policies, stored.metadata, stored.modify_index) == (["p1"], {"team": "ops"}, 3)
    assert b.groups[group.id].policies == ["p1"]  # b's copy is the stored group now
    await a.delete_group(group)
    with pytest.raises(NotFound):  # deleted meanwhile: not written back
        await b.write_group(with_metadata(stale), change=with_metadata)
    assert await storage.get("identity/group/" + group.id) is None


def _nodes(storage: InMemoryStorage, count: int = 2) -> list[IdentityStore]:
    return [IdentityStore(storage, mounts=lambda accessor: MountRef(accessor, "auth/jwt/", "jwt")) for _ in range(count)]


def _with_policies(g: Group) -> Group:
    g = Group.from_storage(g.to_storage())
    g.policies = ["p1"]
    return g


def _renamed(name: str) -> Any:
    def change(g: Group) -> Group:
        g = Group.from_storage(g.to_storage())
        g.name = name
        return g

    return change


async def _stored_groups(storage: InMemoryStorage) -> list[str]:
    names = []
    for key in await storage.list("identity/group/"):
        raw = await storage.get("identity/group/" + key)
        assert isinstance(raw, dict)
        names.append(raw["name"])
    return sorted(names)


async def test_two_nodes_creating_one_group_name_at_once_make_one_group() -> None:
    """Neither node has heard of the other's group (announcements on the way): the name's
    claim in storage decides, case-insensitively, for creates and renames alike. Renaming or
    deleting a group frees its name for the other node."""
    storage = SharedStorage()
    a, b, c = _nodes(storage, 3)
    for store in (a, b, c):
        await store.load()
    ops = Group(id=new_id(), name="ops", type="internal")
    await a.write_group(ops)
    with pytest.raises(InvalidRequest, match="^group name is already in use$"):
        await b.write_group(Group(id=new_id(), name="OPS", type="internal"))
    other = Group(id=new_id(), name="dev", type="internal")
    await b.write_group(other)
    with pytest.raises(InvalidRequest, match="^group name is already in use$"):  # a rename to a taken name
        await b.write_group(_renamed("Ops")(other), change=_renamed("Ops"))
    assert await _stored_groups(storage) == ["dev", "ops"]
    await a.write_group(_renamed("ops2")(ops), change=_renamed("ops2"))  # frees "ops"
    await c.write_group(Group(id=new_id(), name="Ops", type="internal"))  # c never held the old name
    with pytest.raises(InvalidRequest, match="^group name is already in use$"):
        await b.write_group(Group(id=new_id(), name="ops2", type="internal"))
    await a.delete_group(a.groups[ops.id])  # frees "ops2"
    await b.write_group(Group(id=new_id(), name="ops2", type="internal"))
    assert await _stored_groups(storage) == ["Ops", "dev", "ops2"]


async def test_a_group_name_claim_left_by_a_dead_write_is_taken_over_after_the_grace() -> None:
    """A node that died between claiming a name and writing its group leaves a claim whose
    holder holds nothing: refused while the write may still be on its way, replaced after
    ``CLAIM_GRACE``. A failed write releases its claim itself."""
    storage = SharedStorage()
    (a,) = _nodes(storage, 1)
    await a.load()
    key = name_key(GROUP_NAME_PREFIX, "ops")
    await storage.put(key, {"id": new_id(), "at": time.time()})
    with pytest.raises(InvalidRequest, match="^group name is already in use$"):
        await a.write_group(Group(id=new_id(), name="ops", type="internal"))
    await storage.put(key, {"id": new_id(), "at": time.time() - CLAIM_GRACE - 1})
    group = Group(id=new_id(), name="ops", type="internal")
    await a.write_group(group)
    assert await storage.get(key) == {"id": group.id, "at": pytest.approx(time.time(), abs=5)}

    class Failing(SharedStorage):
        async def put(self, key: str, value: object) -> None:
            if key.startswith("identity/group/"):
                raise OSError("disk full")
            await super().put(key, value)

    failing = Failing()
    (f,) = _nodes(failing, 1)
    await f.load()
    with pytest.raises(OSError, match="disk full"):
        await f.write_group(Group(id=new_id(), name="dev", type="internal"))
    assert await failing.list("identity/") == []  # no group, and no claim left behind


async def test_two_nodes_aliasing_at_once_give_one_group_one_alias_and_a_name_one_alias() -> None:
    """Group alias names are unique per mount, and a group has one alias, across nodes that
    have not heard of each other's alias: the second is refused with Vault's message."""
    storage = SharedStorage()
    a, b = _nodes(storage)
    g1, g2 = Group(id=new_id(), name="g1", type="external"), Group(id=new_id(), name="g2", type="external")
    await a.load()
    await a.write_group(g1)
    await a.write_group(g2)
    await b.load()
    accessor = "auth_jwt_00000001"
    await a.write_alias(GroupAlias(id=new_id(), name="idp-ops", mount_accessor=accessor, canonical_id=g1.id), created=True)
    with pytest.raises(InvalidRequest, match="^combination of mount and group alias name is already in use$"):
        await b.write_alias(GroupAlias(id=new_id(), name="IDP-OPS", mount_accessor=accessor, canonical_id=g2.id), created=True)
    with pytest.raises(InvalidRequest, match='^group "g1" already has an alias: update or delete it first$'):
        await b.write_alias(GroupAlias(id=new_id(), name="idp-other", mount_accessor=accessor, canonical_id=g1.id), created=True)
    assert len(await storage.list("identity/group-alias/")) == 1
    assert len(await storage.list("identity/group-alias-name/")) == 1  # the refused ones left no claim
    # The same name on another mount is another alias.
    await b.write_alias(GroupAlias(id=new_id(), name="idp-ops", mount_accessor="auth_jwt_00000002", canonical_id=g2.id), created=True)
    # Deleting the alias frees its name and its group.
    await b.load()
    first = next(al for al in b.aliases.values() if al.canonical_id == g1.id)
    await b.delete_alias(first)
    await a.write_alias(GroupAlias(id=new_id(), name="idp-ops", mount_accessor=accessor, canonical_id=g1.id), created=True)
    raw = await storage.get("identity/group/" + g1.id)
    assert isinstance(raw, dict) and raw["alias_id"] in a.aliases


async def test_a_stale_node_writing_back_the_old_name_claims_it_again() -> None:
    """Node A renames x to y; node B, which has not heard, writes the group with the name x it
    knows (an update that sends its name): x is claimed again before it is written, and y
    is freed, so both names stay right for every node."""
    storage = SharedStorage()
    a, b, c = _nodes(storage, 3)
    await a.load()
    group = Group(id=new_id(), name="x", type="internal")
    await a.write_group(group)
    await b.load()
    await a.write_group(_renamed("y")(group), change=_renamed("y"))
    stale = b.groups[group.id]
    await b.write_group(_renamed("x")(stale), change=_renamed("x"))
    assert await _stored_groups(storage) == ["x"]
    claims = {name: await storage.get(name_key(GROUP_NAME_PREFIX, name)) for name in "xy"}
    assert claims["x"] is not None and claims["x"]["id"] == group.id and claims["y"] is None
    await c.load()
    await c.write_group(Group(id=new_id(), name="y", type="internal"))


async def test_a_login_keeps_the_groups_another_nodes_login_gave_the_entity_a_moment_ago() -> None:
    """Node A's login through mount 2 puts the entity in group g2; node B, not yet told,
    refreshes the entity at a login through mount 1 (new metadata): B's change runs on the
    stored entity, so g2 stays (B's copy would have dropped it, and its policies with it).
    An entity deleted on another node meanwhile is made again by the login."""
    from plugin.framework import Alias

    storage = SharedStorage()
    a, b = _nodes(storage)
    await a.load()
    m1, m2 = "auth_jwt_00000001", "auth_jwt_00000002"
    groups = {}
    for name, accessor in (("g1", m1), ("g2", m2)):
        group = Group(id=new_id(), name=name, type="external", policies=[name])
        await a.write_group(group)
        await a.write_alias(GroupAlias(id=new_id(), name=f"idp-{name}", mount_accessor=accessor, canonical_id=group.id), created=True)
        groups[name] = group.id
    await b.load()
    eid, alias_id = new_id(), new_id()
    assert await b.login(eid, alias_id, m1, Alias("alice", {"v": "1"}), ["idp-g1"]) == ["g1"]
    assert await a.login(eid, alias_id, m2, Alias("alice", {"v": "1"}), ["idp-g2"]) == ["g1", "g2"]
    assert await b.login(eid, alias_id, m1, Alias("alice", {"v": "2"}), ["idp-g1"]) == ["g1", "g2"]
    raw = await storage.get("identity/entity/" + eid)
    assert isinstance(raw, dict) and raw["group_ids"] == sorted(groups.values()) and raw["alias_metadata"] == {"v": "2"}
    assert await storage.list(f"identity/member/{groups['g2']}/") == [eid]
    # Leaving g1 (a login through mount 1 without it) drops its membership row too.
    assert await b.login(eid, alias_id, m1, Alias("alice", {"v": "2"}), []) == ["g2"]
    assert await storage.list(f"identity/member/{groups['g1']}/") == []
    entity = await a.entity(eid)
    assert entity is not None
    await a.delete_entity(entity)
    assert await b.login(eid, alias_id, m1, Alias("alice", {"v": "3"}), ["idp-g1"]) == ["g1"]
    raw = await storage.get("identity/entity/" + eid)
    assert isinstance(raw, dict) and raw["group_ids"] == [groups["g1"]] and raw["alias_metadata"] == {"v": "3"}


async def test_another_nodes_entity_is_found_and_deleted_whole() -> None:
    """Node B remembered that an entity did not exist; node A's login then made it: B reads
    it again instead of answering from its memory (shared storage only). B's delete, from
    its copy that lacks the group A's next login added, removes every membership row."""
    from plugin.framework import Alias

    storage = SharedStorage()
    a, b = _nodes(storage)
    await a.load()
    m1, m2 = "auth_jwt_00000001", "auth_jwt_00000002"
    gids = []
    for name, accessor in (("g1", m1), ("g2", m2)):
        group = Group(id=new_id(), name=name, type="external")
        await a.write_group(group)
        await a.write_alias(GroupAlias(id=new_id(), name=f"idp-{name}", mount_accessor=accessor, canonical_id=group.id), created=True)
        gids.append(group.id)
    await b.load()
    eid, alias_id = new_id(), new_id()
    assert await b.entity(eid) is None
    await a.login(eid, alias_id, m1, Alias("alice"), ["idp-g1"])
    seen = await b.entity(eid)
    assert seen is not None and seen.group_ids == [gids[0]]
    await a.login(eid, alias_id, m2, Alias("alice"), ["idp-g2"])
    await b.delete_entity(seen)
    assert [await storage.list(f"identity/member/{g}/") for g in gids] == [[], []]
    assert await storage.get("identity/entity/" + eid) is None
    single = InMemoryStorage()
    (c,) = _nodes(single, 1)
    await c.load()
    assert await c.entity(eid) is None
    reads = count_reads(single)
    assert await c.entity(eid) is None and reads == []  # one node: the remembered absence stands


async def test_deleting_a_group_deletes_the_alias_another_node_gave_it() -> None:
    """Node B deletes a group from its copy, which has no alias: node A aliased it a moment
    ago. The stored group's alias goes too, and its name is free again (a left-behind alias
    row would have held the name for good)."""
    storage = SharedStorage()
    a, b = _nodes(storage)
    await a.load()
    group = Group(id=new_id(), name="g", type="external")
    await a.write_group(group)
    await b.load()
    accessor = "auth_jwt_00000001"
    await a.write_alias(GroupAlias(id=new_id(), name="idp-g", mount_accessor=accessor, canonical_id=group.id), created=True)
    stale = b.groups[group.id]
    assert stale.alias_id == ""  # b has not heard
    await b.delete_group(stale)
    assert await storage.list("identity/") == []  # group, alias, claims: nothing left
    other = Group(id=new_id(), name="h", type="external")
    await b.write_group(other)
    await b.write_alias(GroupAlias(id=new_id(), name="idp-g", mount_accessor=accessor, canonical_id=other.id), created=True)


async def test_deleting_an_alias_another_node_renamed_frees_its_new_name() -> None:
    """Node A renames an alias; node B deletes it from its copy with the old name: the new
    name's claim goes too, so the name can be used at once."""
    storage = SharedStorage()
    a, b = _nodes(storage)
    await a.load()
    group = Group(id=new_id(), name="g", type="external")
    await a.write_group(group)
    accessor = "auth_jwt_00000001"
    alias = GroupAlias(id=new_id(), name="old", mount_accessor=accessor, canonical_id=group.id)
    await a.write_alias(alias, created=True)
    await b.load()
    renamed = GroupAlias.from_storage(alias.to_storage())
    renamed.name = "new"
    await a.write_alias(renamed, created=False)
    await b.delete_alias(b.aliases[alias.id])
    assert await storage.list("identity/group-alias-name/") == []
    raw = await storage.get("identity/group/" + group.id)
    assert isinstance(raw, dict) and raw["alias_id"] == ""


async def test_group_names_held_twice_are_logged_once() -> None:
    """Groups that share a name (made by two nodes before names were claimed in storage) are
    named in one warning at load, with the fix; a load that finds the same set says nothing
    again, and one that finds them fixed says nothing."""
    import structlog

    storage = InMemoryStorage()
    a, b = new_id(), new_id()
    for gid, name in ((a, "ops"), (b, "OPS"), (new_id(), "dev")):
        await storage.put("identity/group/" + gid, Group(id=gid, name=name).to_storage())
    (store,) = _nodes(storage, 1)
    with structlog.testing.capture_logs() as logs:
        await store.load()
        await store.load()
    warnings = [entry for entry in logs if entry["event"] == "identity_duplicate_group_names"]
    assert len(warnings) == 1 and warnings[0]["groups"] == {"ops": sorted([a, b])}
    assert "rename or delete" in warnings[0]["fix"]
    found = store.group_by_name("ops")
    assert found is not None
    other = store.groups[b if found.id == a else a]  # what the name does not find
    with pytest.raises(InvalidRequest, match="^group name is already in use$"):
        await store.write_group(_with_policies(other), change=_with_policies)
    await store.write_group(_renamed("ops-2")(other), change=_renamed("ops-2"))  # the fix the warning names
    assert sorted(g.name for g in store.groups.values()) == sorted(["dev", found.name, "ops-2"])
    await storage.delete("identity/group/" + b)
    with structlog.testing.capture_logs() as logs:
        await store.load()
    assert [entry for entry in logs if entry["event"] == "identity_duplicate_group_names"] == []


# -- what an operator sets on an entity: policies, metadata, disabled ---------------------------------
async def test_an_entitys_own_policies_apply_to_its_tokens_at_the_next_use(api: Api) -> None:
    """Vault's entity ``policies``: granted to every token of the entity (its login's and its
    children's), beside its groups', changed for live tokens at their next use."""
    await api.group("grp", ["grp-policy"], "grp-idp")
    auth = await api.login("alice", ["grp-idp"])
    token, eid = auth["client_token"], auth["entity_id"]
    child = (await api.ok("POST", "auth/token/create", {"policies": ["dev"]}))["auth"]["client_token"]
    assert await _can_read_role(api, token) == 403
    name = (await api.ok("GET", f"identity/entity/id/{eid}"))["data"]["name"]
    assert await api.ok("POST", f"identity/entity/id/{eid}", {"policies": ["OPS", "ops"], "metadata": {"team": "a"}}) is None
    assert await _can_read_role(api, token) == 200
    _, me = await api.call("GET", "auth/token/lookup-self", token=token)
    assert me["data"]["identity_policies"] == ["grp-policy", "ops"] and me["data"]["policies"] == ["default", "dev"]
    data = (await api.ok("GET", f"identity/entity/name/{name}"))["data"]
    assert (data["policies"], data["metadata"], data["disabled"]) == (["ops"], {"team": "a"}, False)
    assert data["last_update_time"] >= data["creation_time"]
    # by name, and through identity/entity (id first, else name); the fields not sent are kept
    await api.ok("POST", f"identity/entity/name/{name.upper()}", {"policies": "ops,extra"})
    await api.ok("POST", "identity/entity", {"name": name, "metadata": "k=v"})
    data = (await api.ok("POST", "identity/lookup/entity", {"id": eid}))["data"]
    assert (data["policies"], data["metadata"]) == (["extra", "ops"], {"k": "v"})
    await api.ok("POST", "identity/entity", {"id": eid, "policies": []})
    assert await _can_read_role(api, token) == 403
    assert (await api.login("alice", ["grp-idp"]))["identity_policies"] == ["grp-policy"]
    _, me = await api.call("GET", "auth/token/lookup-self", token=child)  # the root's child: no entity
    assert "identity_policies" not in me["data"]


async def test_a_disabled_entitys_tokens_and_logins_are_refused_until_enabled(api: Api) -> None:
    """As Vault: every use of its tokens is refused (service and batch), and so are its logins;
    nothing is revoked, so they work again once the entity is enabled."""
    auth = await api.login("bob", [])
    token, eid = auth["client_token"], auth["entity_id"]
    batch = (await api.login("bob", [], role="batch"))["client_token"]
    other = (await api.login("carol", []))["client_token"]
    await api.ok("POST", f"identity/entity/id/{eid}", {"disabled": True})
    for t in (token, batch):
        assert await api.call("GET", "auth/token/lookup-self", token=t) == (403, {"errors": ["permission denied"]})
        assert (await api.call("POST", "auth/token/renew-self", {}, token=t))[0] == 403
        assert (await api.call("POST", "sys/capabilities-self", {"paths": ["x"]}, token=t))[0] == 403
    assert await api.call("POST", "sys/capabilities", {"token": token, "paths": ["x"]}) == (400, {"errors": ["invalid token"]})
    assert (await api.call("POST", "auth/token/lookup", {"token": token}))[0] == 200  # root may still look
    now = int(time.time())
    jwt = make_token({"sub": "bob", "groups": [], "aud": "authmount", "iat": now, "exp": now + 300}, key=KEY)
    refused = await api.call("POST", "auth/jwt/login", {"role": "dev", "jwt": jwt}, token=None)
    assert refused == (403, {"errors": ["permission denied"]})
    assert (await api.call("GET", "auth/token/lookup-self", token=other))[0] == 200  # another entity
    assert (await api.ok("GET", f"identity/entity/id/{eid}"))["data"]["disabled"] is True
    await api.ok("POST", f"identity/entity/id/{eid}", {"disabled": False})
    for t in (token, batch):
        assert (await api.call("GET", "auth/token/lookup-self", token=t))[0] == 200
    assert (await api.login("bob", []))["entity_id"] == eid


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("identity/entity/id/{eid}", {"policies": ["Root"]}, "policies cannot contain root"),
        ("identity/entity/id/nope", {"policies": ["ops"]}, "entity not found from id"),
        ("identity/entity", {"id": "nope", "policies": ["ops"]}, "entity not found from id"),
        ("identity/entity/id/{eid}", {"name": "alice"}, "the name of an entity a login made cannot be changed (it "
                                                        "is {name}, made from its id)"),
        ("identity/entity", {"id": "{eid}", "name": "{other}"}, "entity name is already in use"),
        ("identity/entity", {"name": "entity_0123456789abcdef"}, "entity name is already in use"),
        ("identity/entity/id/{eid}", {"disabled": "maybe"}, None),
    ],
    ids=["root-policy", "unknown-id", "unknown-id-given", "rename-login-made", "name-of-another", "derived-form-name",
         "bad-bool"],
)
async def test_entity_writes_refused(api: Api, path: str, body: dict[str, Any], message: str | None) -> None:
    """A refused write leaves the entity as it was."""
    auth = await api.login("dave", [])
    eid = auth["entity_id"]
    name = (await api.ok("GET", f"identity/entity/id/{eid}"))["data"]["name"]
    await api.ok("POST", f"identity/entity/id/{eid}", {"policies": ["ops"]})
    await api.ok("POST", "identity/entity", {"name": "carol"})
    body = {k: v.format(eid=eid, other="Carol") if isinstance(v, str) else v for k, v in body.items()}
    entities = (await api.ok("LIST", "identity/entity/id"))["data"]["keys"]
    status, out = await api.call("POST", path.format(eid=eid), body)
    assert status == 400
    if message is not None:
        assert out["errors"] == [message.format(name=name)]
    data = (await api.ok("GET", f"identity/entity/id/{eid}"))["data"]
    assert (data["policies"], data["disabled"], data["name"]) == (["ops"], False, name)
    assert await _can_read_role(api, auth["client_token"]) == 200
    assert (await api.ok("LIST", "identity/entity/id"))["data"]["keys"] == entities  # none made


async def test_a_deleted_entity_loses_what_was_set_on_it(api: Api) -> None:
    auth = await api.login("erin", [])
    eid = auth["entity_id"]
    await api.ok("POST", f"identity/entity/id/{eid}", {"policies": ["ops"], "disabled": True})
    await api.ok("DELETE", f"identity/entity/id/{eid}")
    again = await api.login("erin", [])  # no longer disabled: the next login makes it again
    assert again["entity_id"] == eid and "identity_policies" not in again
    assert await _can_read_role(api, again["client_token"]) == 403
    data = (await api.ok("GET", f"identity/entity/id/{eid}"))["data"]
    assert (data["policies"], data["metadata"], data["disabled"]) == ([], None, False)


async def test_another_nodes_entity_attributes_apply_once_announced() -> None:
    """What node A sets on an entity reaches node B when A's write is announced (B re-reads
    its tables, as for groups); a change of one attribute keeps another node's change of another."""
    storage = SharedStorage()
    a, b = (IdentityStore(storage, mounts=lambda accessor: MountRef(accessor, "auth/jwt/", "jwt")) for _ in range(2))
    for store in (a, b):
        await store.load()
    eid = new_id()

    def set_policies(attrs: EntityAttrs) -> None:
        attrs.policies = ["ops"]

    def disable(attrs: EntityAttrs) -> None:
        attrs.disabled = True

    await a.write_entity_attrs(eid, set_policies)
    assert await a.policies_for(eid) == ["ops"] and await b.policies_for(eid) == []  # not announced yet
    await b.write_entity_attrs(eid, disable)  # b's change runs on the stored row: a's policies stay
    assert b.disabled(eid) and await b.policies_for(eid) == ["ops"]
    b.invalidate(ENTITY_ATTRS_PREFIX + eid)
    a.invalidate(ENTITY_ATTRS_PREFIX + eid)
    await a.load()  # what the announcement's re-read does
    assert a.disabled(eid) and await a.policies_for(eid) == ["ops"]


async def test_a_token_role_cannot_hand_out_a_disabled_entitys_alias(api: Api) -> None:
    await api.ok("POST", "auth/token/roles/aliased", {"allowed_entity_aliases": ["ci-*"]})
    made = (await api.ok("POST", "auth/token/create/aliased", {"entity_alias": "ci-x"}))["auth"]
    await api.ok("POST", f"identity/entity/id/{made['entity_id']}", {"disabled": True})
    refused = await api.call("POST", "auth/token/create/aliased", {"entity_alias": "ci-x"})
    assert refused == (403, {"errors": ["entity from given entity alias is disabled"]})  # OpenBao's text
    assert (await api.call("POST", "auth/token/create/aliased", {"entity_alias": "ci-y"}))[0] == 200


# -- nested groups -----------------------------------------------------------------------------
async def _policies(api: Api, token: str) -> Any:
    status, out = await api.call("GET", "auth/token/lookup-self", token=token)
    assert status == 200, out
    return out["data"].get("identity_policies") or []


async def test_nested_groups_pass_their_policies_down(api: Api) -> None:
    """The pattern nesting is for: an external group of IdP logins, a member group of an
    internal group that carries the policies, itself in a third. The login's token gets all
    three groups' policies at each use; taking a group out of the nesting, or deleting it,
    applies at the next use; the entity shows the groups above its own."""
    ext = await api.group("idp-devs", ["ext"], "devs")
    team = (await api.ok("POST", "identity/group", {"name": "team", "policies": ["team"],
                                                    "member_group_ids": [ext]}))["data"]["id"]
    org = (await api.ok("POST", "identity/group", {"name": "org", "policies": ["org"],
                                                   "member_group_ids": [team]}))["data"]["id"]
    auth = await api.login("nia", ["devs"])
    assert auth["identity_policies"] == ["ext", "org", "team"]
    entity = (await api.ok("GET", f"identity/entity/id/{auth['entity_id']}"))["data"]
    assert (entity["direct_group_ids"], entity["inherited_group_ids"]) == ([ext], [team, org])
    assert entity["group_ids"] == [ext, team, org]
    read = (await api.ok("GET", f"identity/group/id/{team}"))["data"]
    assert (read["member_group_ids"], read["parent_group_ids"]) == ([ext], [org])
    await api.ok("POST", f"identity/group/id/{org}", {"member_group_ids": []})
    assert await _policies(api, auth["client_token"]) == ["ext", "team"]
    await api.ok("POST", f"identity/group/id/{org}", {"member_group_ids": [team]})
    assert await _policies(api, auth["client_token"]) == ["ext", "org", "team"]
    await api.ok("DELETE", f"identity/group/id/{team}")  # the middle one: org no longer reaches ext
    assert await _policies(api, auth["client_token"]) == ["ext"]
    assert (await api.ok("GET", f"identity/group/id/{org}"))["data"]["member_group_ids"] is None


async def test_an_internal_member_group_passes_its_parents_policies_to_its_entities(api: Api) -> None:
    entity = (await api.login("oli", []))["entity_id"]
    child = (await api.ok("POST", "identity/group", {"name": "child", "member_entity_ids": [entity]}))["data"]["id"]
    await api.ok("POST", "identity/group", {"name": "parent", "policies": ["ops"], "member_group_ids": [child]})
    token = (await api.login("oli", []))["client_token"]
    assert await _policies(api, token) == ["ops"]
    assert await _can_read_role(api, token) == 200


@pytest.mark.parametrize(("target", "members", "message"), [
    ("ext", ["team"], "member groups can't be set for external groups"),
    ("team", ["nope"], 'invalid member group ID "nope"'),
    ("team", ["team"], 'member group ID "{team}" is same as the ID of the group'),
    ("ext", ["org"], "member groups can't be set for external groups"),
    ("team", ["org"], 'cyclic relationship detected for member group ID "{org}"'),
    ("org", ["org", "team"], 'member group ID "{org}" is same as the ID of the group'),
])
async def test_nesting_refusals_change_nothing(api: Api, target: str, members: list[str], message: str) -> None:
    ids = {"ext": await api.group("ext", [], "e")}
    ids["team"] = (await api.ok("POST", "identity/group", {"name": "team", "member_group_ids": [ids["ext"]]}))["data"]["id"]
    ids["org"] = (await api.ok("POST", "identity/group", {"name": "org", "member_group_ids": [ids["team"]]}))["data"]["id"]
    before = {k: (await api.ok("GET", f"identity/group/id/{v}"))["data"] for k, v in ids.items()}
    status, out = await api.call("POST", f"identity/group/id/{ids[target]}",
                                 {"member_group_ids": [ids.get(m, m) for m in members]})
    assert (status, out["errors"]) == (400, [message.format(**ids)])
    after = {k: (await api.ok("GET", f"identity/group/id/{v}"))["data"] for k, v in ids.items()}
    assert after == before
