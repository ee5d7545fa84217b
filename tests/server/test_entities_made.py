"""Entities an operator makes ahead of any login, and entity aliases (``identity/entity``,
``identity/entity-alias``): what a login gets through them, what survives a restart, what
two nodes see, and the races on one name. The answers themselves are compared with OpenBao
2.7.2 in tests/e2e/test_identity_peer.py (``test_entities_and_entity_aliases_as_openbao``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from pytest_aiohttp import AiohttpClient

from plugin.errors import InvalidRequest
from plugin.framework import Alias
from server.app import create_app
from server.http.listverb import make_test_server
from server.identity.metadata import checked_custom_metadata, checked_metadata
from server.identity.store import EntityAlias, IdentityStore, MountRef, new_id
from server.settings import Settings, StorageSettings
from tests.plugin.keyfactory import make_token
from tests.server.httpkit import Client
from tests.server.test_identity import KEY, ROOT, SharedStorage
from tests.server.test_identity import Api as IdentityApi


class Api(IdentityApi):
    """``test_identity``'s root client, with jwt mounts of this module's key."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.accessors: dict[str, str] = {}

    async def mount(self, path: str) -> str:
        await self.ok("POST", f"sys/auth/{path}", {"type": "jwt"})
        await self.ok("POST", f"auth/{path}/config", {"jwt_validation_pubkeys": [KEY.pem]})
        await self.ok("POST", f"auth/{path}/role/dev", {"role_type": "jwt", "user_claim": "sub",
                                                        "bound_audiences": "authmount", "token_policies": "dev"})
        self.accessors[path] = (await self.ok("GET", "sys/auth"))["data"][f"{path}/"]["accessor"]
        return self.accessors[path]


def _settings(db: Path) -> Settings:
    return Settings(storage=StorageSettings(type="sqlite", path=str(db)), dev=True, dev_root_token_id=ROOT)


@pytest.fixture
async def api(aiohttp_client: AiohttpClient, tmp_path: Path) -> Api:
    a = Api(await aiohttp_client(make_test_server(create_app(_settings(tmp_path / "id.db")))))
    await a.mount("jwt")
    await a.mount("jwt2")
    return a


async def test_a_persons_logins_through_two_mounts_share_the_entity_made_for_them(api: Api) -> None:
    """The Terraform pattern: an entity with policies, an alias on each mount; its tokens get
    its policies at each use (a change applies to live tokens), and a disable refuses them."""
    eid = (await api.ok("POST", "identity/entity", {"name": "alice", "policies": ["ops"]}))["data"]["id"]
    for mount in ("jwt", "jwt2"):
        await api.ok("POST", "identity/entity-alias", {"name": "alice@corp", "mount_accessor": api.accessors[mount],
                                                       "canonical_id": eid})
    first, second = await api.login("alice@corp", []), await api.login("alice@corp", [], mount="jwt2")
    assert first["entity_id"] == second["entity_id"] == eid
    assert first["identity_policies"] == ["ops"]
    await api.ok("POST", f"identity/entity/id/{eid}", {"policies": ["ops", "audit"]})
    status, me = await api.call("GET", "auth/token/lookup-self", token=second["client_token"])
    assert me["data"]["identity_policies"] == ["audit", "ops"]
    other = await api.login("bob@corp", [])
    assert other["entity_id"] != eid and not other.get("identity_policies")
    await api.ok("POST", "identity/entity/name/ALICE", {"disabled": True})
    assert (await api.call("GET", "auth/token/lookup-self", token=first["client_token"]))[0] == 403
    now = int(time.time())
    jwt = make_token({"sub": "alice@corp", "aud": "authmount", "iat": now, "exp": now + 300}, key=KEY)
    assert (await api.call("POST", "auth/jwt/login", {"role": "dev", "jwt": jwt}, token=None))[0] == 403


async def test_an_alias_deleted_gives_its_logins_back_to_the_entity_a_login_makes(api: Api) -> None:
    made_by_login = (await api.login("carol", []))["entity_id"]
    eid = (await api.ok("POST", "identity/entity", {"name": "carol"}))["data"]["id"]
    moved = await api.ok("POST", "identity/entity-alias",
                         {"name": "carol", "mount_accessor": api.accessors["jwt"], "canonical_id": eid})
    assert (await api.login("carol", []))["entity_id"] == eid
    await api.ok("DELETE", f"identity/entity-alias/id/{moved['data']['id']}")
    assert (await api.login("carol", []))["entity_id"] == made_by_login


async def test_a_login_made_alias_cannot_be_deleted_alone(api: Api) -> None:
    auth = await api.login("dave", [])
    alias_id = (await api.ok("GET", f"identity/entity/id/{auth['entity_id']}"))["data"]["aliases"][0]["id"]
    status, out = await api.call("DELETE", f"identity/entity-alias/id/{alias_id}")
    assert status == 400 and out["errors"][0].startswith("the alias a login made goes with its entity")
    assert (await api.ok("GET", f"identity/entity-alias/id/{alias_id}"))["data"]["name"] == "dave"


async def test_deleting_an_entity_deletes_its_aliases_and_frees_its_name(api: Api) -> None:
    eid = (await api.ok("POST", "identity/entity", {"name": "erin"}))["data"]["id"]
    alias = await api.ok("POST", "identity/entity-alias",
                         {"name": "erin", "mount_accessor": api.accessors["jwt"], "canonical_id": eid})
    await api.ok("DELETE", "identity/entity/name/erin")
    assert (await api.call("GET", f"identity/entity-alias/id/{alias['data']['id']}"))[0] == 404
    assert (await api.login("erin", []))["entity_id"] != eid
    again = await api.ok("POST", "identity/entity", {"name": "Erin"})
    assert again["data"]["id"] != eid and again["data"]["name"] == "Erin"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"custom_metadata": {f"k{i}": "v" for i in range(65)}},
         "custom_metadata validation failed: payload must contain at most 64 keys, provided 65"),
        ({"custom_metadata": {"k": "v" * 513}},
         'custom_metadata validation failed: length of value for key "k" is 513 but must be 0 < len(value) <= 512'),
        ({"custom_metadata": {"k": "\u00e9" * 257}},  # 514 bytes in UTF-8, as Vault counts them
         'custom_metadata validation failed: length of value for key "k" is 514 but must be 0 < len(value) <= 512'),
        ({"custom_metadata": {"k" * 129: "v"}},
         'custom_metadata validation failed: length of key "' + "k" * 64 + '" is 129 but must be 0 < len(key) <= 128'),
        ({"custom_metadata": {"": "v"}},
         'custom_metadata validation failed: length of key "" is 0 but must be 0 < len(key) <= 128'),
        ({"custom_metadata": {"k": ""}},
         'custom_metadata validation failed: length of value for key "k" is 0 but must be 0 < len(value) <= 512'),
        ({"custom_metadata": {"k\tx": "v"}},
         'custom_metadata validation failed: key "k\\tx" contains unprintable characters'),
        ({"custom_metadata": {"k": "a\u200bb"}},
         'custom_metadata validation failed: value for key "k" contains unprintable characters'),
        ({"name": "bad\nname"}, "invalid alias name"),
        ({"name": "x" * 1025}, "invalid alias name"),
    ],
    ids=["too-many-keys", "long-value", "long-value-in-bytes", "long-key", "blank-key", "empty-value",
         "unprintable-key", "unprintable-value", "control-character", "long-name"],
)
async def test_alias_refusals_leave_nothing_behind(api: Api, body: dict[str, Any], message: str) -> None:
    """A refused create makes no entity (Vault's create without canonical_id makes one)."""
    before = await api.call("LIST", "identity/entity/id")
    status, out = await api.call("POST", "identity/entity-alias",
                                 {"name": "frank", "mount_accessor": api.accessors["jwt"], **body})
    assert (status, out) == (400, {"errors": [message]})
    assert await api.call("LIST", "identity/entity/id") == before


_AT_LIMITS = {**{f"k{i}": "v" * 512 for i in range(63)}, "azAZ09=/+_-" + "k" * 117: ""}  # 64 pairs, 128-byte key


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({f"k{i}": "v" for i in range(65)}, "metadata cannot contain more than 64 key/value pairs (given 65)"),
        ({"": "v"}, 'failed to load metadata pair ("", "v"): key cannot be blank'),
        ({"a.b": "v"}, 'failed to load metadata pair ("a.b", "v"): key contains invalid characters '
                       "(letters, digits and = / + _ - only)"),
        ({"k}}": "v"}, 'failed to load metadata pair ("k}}", "v"): key contains invalid characters '
                       "(letters, digits and = / + _ - only)"),
        ({"k" * 129: "v"}, f'failed to load metadata pair ("{"k" * 64}", "v"): key is too long (limit: 128 bytes)'),
        ({"vault-x": "v"}, 'failed to load metadata pair ("vault-x", "v"): key prefix "vault-" is reserved for '
                           "internal use"),
        ({"k": "\u00e9" * 257}, 'failed to load metadata pair ("k", "' + "\\xe9" * 64 + '"): value is too long '
                                "(limit: 512 bytes)"),
    ],
    ids=["too-many-pairs", "blank-key", "dot-in-key", "braces-in-key", "long-key", "reserved-prefix",
         "long-value-in-bytes"],
)
@pytest.mark.parametrize("kind", ["entity", "group"])
async def test_metadata_is_bounded_as_vault_bounds_it(api: Api, kind: str, metadata: dict[str, str],
                                                      problem: str) -> None:
    """Vault's limits on an entity's or group's metadata (OpenBao 2.7.2 answers each with a
    500), refused with a 400 that names the pair, on create and on update, changing nothing;
    the limits themselves are accepted."""
    made = await api.ok("POST", f"identity/{kind}", {"name": "m1", "metadata": {"team": "a"}})
    before = await api.ok("GET", f"identity/{kind}/name/m1")
    message = f"invalid {kind} metadata: {problem}"
    for path, body in ((f"identity/{kind}", {"name": "m2", "metadata": metadata}),
                       (f"identity/{kind}/name/m3", {"metadata": metadata}),
                       (f"identity/{kind}/id/{made['data']['id']}", {"metadata": metadata, "policies": ["p"]}),
                       (f"identity/{kind}/name/m1", {"metadata": metadata})):
        assert await api.call("POST", path, body) == (400, {"errors": [message]}), path
    assert (await api.call("GET", f"identity/{kind}/name/m2"))[0] == 404
    assert (await api.call("GET", f"identity/{kind}/name/m3"))[0] == 404
    assert await api.ok("GET", f"identity/{kind}/name/m1") == before | {"request_id": ANY}
    await api.ok("POST", f"identity/{kind}/id/{made['data']['id']}", {"metadata": _AT_LIMITS})
    assert (await api.ok("GET", f"identity/{kind}/name/m1"))["data"]["metadata"] == _AT_LIMITS


def test_the_limits_themselves_are_allowed() -> None:
    """Vault's limits are inclusive: 64 keys, a 128-byte key, a 512-byte value (in UTF-8, a
    lone surrogate a GitOps file may hold counting its three bytes, as Python writes it)."""
    at_limits = {**{f"k{i}": "v" for i in range(63)}, "k" * 128: "\u00e9" * 256}
    assert checked_custom_metadata(at_limits) == at_limits
    assert checked_metadata("group", {"k": "\ud800" * 170}) == {"k": "\ud800" * 170}  # 510 bytes
    with pytest.raises(InvalidRequest, match="value is too long"):
        checked_metadata("group", {"k": "\ud800" * 171})


async def test_an_entity_written_by_name_with_an_id_is_that_entity(api: Api) -> None:
    """``identity/entity/name/<name>`` with an ``id`` (Vault's order and texts): an unknown id
    is refused, a name another entity has is refused, else the entity of that id is renamed
    to the path's name; without an id the path's entity is updated or made."""
    frank = (await api.ok("POST", "identity/entity", {"name": "frank"}))["data"]["id"]
    await api.ok("POST", "identity/entity", {"name": "alice"})
    assert await api.call("POST", "identity/entity/name/zed", {"id": "nope"}) == (
        400, {"errors": ["entity not found from id"]})
    assert await api.call("POST", "identity/entity/name/alice", {"id": frank, "policies": ["p"]}) == (
        400, {"errors": ["entity name is already in use"]})
    assert (await api.call("GET", "identity/entity/name/zed"))[0] == 404
    assert (await api.ok("GET", "identity/entity/name/alice"))["data"]["policies"] == []
    assert await api.call("POST", "identity/entity/name/fritz", {"id": frank, "name": "x", "policies": ["p"]}) == (
        204, None)
    renamed = (await api.ok("GET", "identity/entity/name/fritz"))["data"]
    assert (renamed["id"], renamed["policies"]) == (frank, ["p"])
    assert (await api.call("GET", "identity/entity/name/frank"))[0] == 404
    assert await api.call("POST", "identity/entity/name/fritz", {"id": frank, "policies": ["q"]}) == (204, None)
    assert (await api.ok("GET", f"identity/entity/id/{frank}"))["data"]["policies"] == ["q"]


async def test_an_operator_alias_on_the_token_mount_gives_a_token_roles_entity_alias_its_entity(api: Api) -> None:
    token_accessor = (await api.ok("GET", "sys/auth"))["data"]["token/"]["accessor"]
    eid = (await api.ok("POST", "identity/entity", {"name": "svc", "policies": ["ops"]}))["data"]["id"]
    await api.ok("POST", "identity/entity-alias", {"name": "svc-alias", "mount_accessor": token_accessor,
                                                   "canonical_id": eid})
    await api.ok("POST", "auth/token/roles/r", {"allowed_entity_aliases": ["svc-alias"]})
    made = await api.ok("POST", "auth/token/create/r", {"entity_alias": "svc-alias"})
    assert made["auth"]["entity_id"] == eid
    status, me = await api.call("GET", "auth/token/lookup-self", token=made["auth"]["client_token"])
    assert me["data"]["identity_policies"] == ["ops"]


async def test_a_write_by_the_name_path_does_not_rename(api: Api) -> None:
    """The path's name is lower-cased before the ACL check (row 19): an update through it keeps
    the entity's own spelling; a create through it takes the lower-cased name."""
    eid = (await api.ok("POST", "identity/entity", {"name": "Iris"}))["data"]["id"]
    assert await api.call("POST", "identity/entity/name/IRIS", {"policies": ["ops"]}) == (204, None)
    data = (await api.ok("GET", f"identity/entity/id/{eid}"))["data"]
    assert (data["name"], data["policies"]) == ("Iris", ["ops"])
    made = await api.ok("POST", "identity/entity/name/Jack", {"policies": ["ops"]})
    assert made["data"]["name"] == "jack" and made["data"]["aliases"] is None


async def test_entities_and_aliases_survive_a_restart(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    db = tmp_path / "id.db"
    first = Api(await aiohttp_client(make_test_server(create_app(_settings(db)))))
    accessor = await first.mount("jwt")
    eid = (await first.ok("POST", "identity/entity", {"name": "gina", "policies": ["ops"]}))["data"]["id"]
    await first.ok("POST", "identity/entity-alias", {"name": "gina", "mount_accessor": accessor, "canonical_id": eid})
    await first.client.close()
    second = Api(await aiohttp_client(make_test_server(create_app(_settings(db)))))
    assert (await second.login("gina", []))["entity_id"] == eid
    assert (await second.ok("GET", "identity/entity/name/gina"))["data"]["id"] == eid
    status, _ = await second.call("POST", "identity/entity", {"name": "GINA", "metadata": {"a": "b"}})
    assert status == 204  # the name is still taken: an update


async def test_creates_of_one_name_at_once_make_one_entity_and_update_it(api: Api) -> None:
    """Six creates of one name at the same moment: one makes it (200), the others update it
    (204), as with Vault's one lock."""
    results = await asyncio.gather(*(api.call("POST", "identity/entity", {"name": "Race", "metadata": {"n": str(i)}})
                                     for i in range(6)))
    assert sorted(status for status, _ in results) == [200, 204, 204, 204, 204, 204], results
    assert [n for n in (await api.ok("LIST", "identity/entity/name"))["data"]["keys"] if n == "Race"] == ["Race"]


async def test_an_alias_written_on_another_node_is_used_once_announced() -> None:
    """Node B's logins follow an alias node A wrote once B has re-read the tables (what the
    storage's announcement makes it do); an alias name B does not know yet is still refused
    to B by its claim in storage."""
    storage = SharedStorage()
    a, b = (IdentityStore(storage, mounts=lambda accessor: MountRef(accessor, "auth/jwt/", "jwt")) for _ in range(2))
    for store in (a, b):
        await store.load()
    entity = await a.create_entity("hank", lambda attrs: None)
    alias = EntityAlias(id=new_id(), name="hank", mount_accessor="auth_jwt_00000001", canonical_id=entity.id)
    await a.write_entity_alias(alias, created=True)
    assert b.login_alias("auth_jwt_00000001", "hank") is None  # no announcement arrived yet
    # Asked for them, b reads the one row each (the name's claim, the alias), not every table.
    assert (await b.entity_by_name("HANK")) == entity and (await b.find_entity_alias(alias.id)) == alias
    assert b.entity_aliases == {} and await b.entity_by_name("nobody") is None
    twin = EntityAlias(id=new_id(), name="hank", mount_accessor="auth_jwt_00000001", canonical_id=entity.id)
    with pytest.raises(Exception, match="alias with combination of mount accessor and name already exists"):
        await b.write_entity_alias(twin, created=True)  # b re-reads on the clash and finds a's
    await b.load()
    assert b.login_alias("auth_jwt_00000001", "hank") == alias
    await b.login(entity.id, alias.id, "auth_jwt_00000001", Alias(name="hank", metadata={"k": "v"}), ())
    assert (await a.entity(entity.id)) is not None
    await a.load()
    assert a.entity_aliases[alias.id].metadata == {"k": "v"}


async def test_alias_names_match_logins_exactly(api: Api) -> None:
    """Decision (row 57): Vault folds case, so the alias ``kim`` would take a login whose
    ``sub`` is ``Kim`` (another person, for an IdP whose subjects are case-sensitive)."""
    eid = (await api.ok("POST", "identity/entity", {"name": "kim"}))["data"]["id"]
    await api.ok("POST", "identity/entity-alias", {"name": "kim", "mount_accessor": api.accessors["jwt"],
                                                   "canonical_id": eid})
    assert (await api.login("kim", []))["entity_id"] == eid
    assert (await api.login("Kim", []))["entity_id"] != eid
    other = (await api.ok("POST", "identity/entity", {"name": "kim2"}))["data"]["id"]
    second = await api.ok("POST", "identity/entity-alias", {"name": "KIM", "mount_accessor": api.accessors["jwt"],
                                                            "canonical_id": other})
    assert second["data"]["canonical_id"] == other  # a second alias, not kim's moved
    assert (await api.login("kim", []))["entity_id"] == eid and (await api.login("KIM", []))["entity_id"] == other


async def test_writing_an_alias_again_by_name_keeps_its_custom_metadata(api: Api) -> None:
    """Decision (row 57): Vault's write by name and mount without ``custom_metadata`` wipes it."""
    body = {"name": "lee", "mount_accessor": api.accessors["jwt"]}
    made = await api.ok("POST", "identity/entity-alias", {**body, "custom_metadata": {"team": "a"}})
    assert await api.call("POST", "identity/entity-alias", body) == (204, None)
    alias = (await api.ok("GET", f"identity/entity-alias/id/{made['data']['id']}"))["data"]
    assert alias["custom_metadata"] == {"team": "a"}
