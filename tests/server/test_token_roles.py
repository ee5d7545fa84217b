"""Token roles (``auth/token/roles/<name>``, ``auth/token/create/<name>``), through the token
backend's ``handle_request`` as the server calls it. What OpenBao answers to the same calls is
checked side by side in tests/e2e/test_openbao_differential.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from plugin.errors import InvalidRequest, NotFound
from plugin.framework import Operation
from server.tokens.batch import decode_batch, encode_batch
from server.tokens.entry import TokenEntry
from tests.server.httpkit import answer, dev_client
from tests.server.test_token_backend import Env, token_env

READ_X = 'path "x" { capabilities = ["read"] }'


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    policies = dict.fromkeys(("a", "b", "c-1", "c-2", "p"), READ_X)
    policies["creator"] = 'path "auth/token/*" { capabilities = ["create", "update", "read"] }'
    async with token_env(policies) as made:
        yield made


async def _role(env: Env, name: str, body: dict[str, Any]) -> list[str]:
    resp = await env.call(env.root, f"roles/{name}", body)
    return resp.warnings if resp is not None else []


async def _read(env: Env, name: str) -> dict[str, Any] | None:
    try:
        resp = await env.call(env.root, f"roles/{name}", op=Operation.READ)
    except NotFound:  # Vault's 404 with no errors
        return None
    assert resp is not None
    return resp.data


async def _create(env: Env, raw: str, role: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    resp = await env.call(raw, f"create/{role}", body)
    assert resp is not None and resp.auth_block is not None
    return resp.auth_block, resp.warnings


async def _child(env: Env) -> str:
    """A token without sudo, whose policies are ``creator`` and ``p``."""
    resp = await env.call(env.root, "create", {"policies": ["creator", "p"]})
    assert resp is not None and resp.auth_block is not None
    return str(resp.auth_block["client_token"])


async def test_a_role_is_written_read_listed_and_deleted(env: Env) -> None:
    with pytest.raises(NotFound):
        await env.call(env.root, "roles", op=Operation.LIST)
    assert await _role(env, "ci", {"allowed_policies": "A, b", "orphan": True, "path_suffix": "v1.2"}) == []
    data = await _read(env, "ci")
    assert data is not None
    assert data["allowed_policies"] == ["a", "b"] and data["orphan"] is True and data["path_suffix"] == "v1.2"
    assert data["renewable"] is True and data["token_type"] == "default-service" and data["name"] == "ci"
    assert data["allowed_entity_aliases"] is None and "token_num_uses" not in data
    # An update changes only what it names.
    await _role(env, "ci", {"renewable": False})
    data = await _read(env, "ci")
    assert data is not None and data["allowed_policies"] == ["a", "b"] and data["renewable"] is False
    listed = await env.call(env.root, "roles", op=Operation.LIST)
    assert listed is not None and listed.data == {"keys": ["ci"]}
    await env.call(env.root, "roles/ci", op=Operation.DELETE)
    assert await _read(env, "ci") is None
    with pytest.raises(InvalidRequest, match="unknown role ci"):
        await env.call(env.root, "create/ci", {})


_BATCH = "'token_type' cannot be 'batch' when role is set to generate "
_BATCH_FIELDS = "error parsing role fields: 'token_type' cannot be 'batch' or 'default_batch' when set to generate "


@pytest.mark.parametrize(("body", "message"), [
    ({"token_type": "batch"}, _BATCH + "non-orphan tokens"),
    ({"token_type": "batch", "orphan": True}, _BATCH + "renewable tokens"),
    ({"token_type": "batch", "orphan": True, "renewable": False, "token_period": "1h"}, _BATCH + "periodic tokens"),
    ({"token_type": "batch", "orphan": True, "renewable": False, "token_explicit_max_ttl": "1h"},
     _BATCH + "tokens with an explicit max TTL"),
    ({"token_type": "nope"}, "invalid 'token_type' value \"nope\""),
    # A type given in the same write is checked after the token fields; a stored one before them.
    ({"token_period": "1h"}, _BATCH_FIELDS + "periodic tokens"),
    ({"token_num_uses": 2}, _BATCH_FIELDS + "tokens with limited use count"),
    ({"token_num_uses": -1}, "error parsing role fields: 'token_num_uses' cannot be negative"),
    ({"path_suffix": "ab"}, r"given role path suffix contains invalid characters; must match \w[\w-.]+\w"),
    ({"path_suffix": "abc/../d"}, "error registering path suffix: path cannot contain parent references"),
    ({"token_bound_cidrs": ["nope"]}, 'error parsing role fields: error parsing address "nope": '
                                      "'nope' does not appear to be an IPv4 or IPv6 network"),
    ({"bound_cidrs": ["nope"]}, 'error parsing bound_cidrs: error parsing address "nope": '
                                "'nope' does not appear to be an IPv4 or IPv6 network"),
])
async def test_a_refused_write_keeps_the_stored_role(env: Env, body: dict[str, Any], message: str) -> None:
    await _role(env, "ci", {"allowed_policies": ["a"], "path_suffix": "v1x", "token_type": "default-batch"})
    before = await _read(env, "ci")
    with pytest.raises(InvalidRequest) as exc:
        await _role(env, "ci", body)
    assert exc.value.messages == [message]
    assert await _read(env, "ci") == before


@pytest.mark.parametrize(("body", "warning", "read"), [
    ({"period": "1h"}, None, {"period": 3600, "token_period": 3600}),
    ({"period": "1h", "token_period": "2h"},
     "Both 'token_period' and deprecated 'period' value supplied, ignoring the deprecated value",
     {"period": 0, "token_period": 7200}),
    ({"explicit_max_ttl": "10m"}, None, {"explicit_max_ttl": 600, "token_explicit_max_ttl": 600}),
    ({"explicit_max_ttl": "10m", "token_explicit_max_ttl": "5m"},
     "Both 'token_explicit_max_ttl' and deprecated 'explicit_max_ttl' value supplied, ignoring the deprecated value",
     {"explicit_max_ttl": 0, "token_explicit_max_ttl": 300}),
    ({"bound_cidrs": ["10.0.0.0/8"], "token_bound_cidrs": ["127.0.0.1"]},
     "Both 'token_bound_cidrs' and deprecated 'bound_cidrs' value supplied, ignoring the deprecated value",
     {"bound_cidrs": None, "token_bound_cidrs": ["127.0.0.1"]}),
    # The warning's bound is the mount's max lease TTL (7200 s here): at it, none.
    ({"token_explicit_max_ttl": 7200}, None, {"token_explicit_max_ttl": 7200}),
    ({"token_num_uses": 1}, None, {"token_num_uses": 1}),
    ({"token_explicit_max_ttl": "9999h"}, "Given explicit max TTL of 35996400 is greater than system/mount allowed "
     "value of 7200 seconds; until this is fixed attempting to create tokens against this role will result in an "
     "error", {"token_explicit_max_ttl": 35996400}),
    ({"bound_cidrs": ["10.0.0.1/8", "127.0.0.1/32"]}, None,
     {"bound_cidrs": ["10.0.0.1/8", "127.0.0.1"], "token_bound_cidrs": ["10.0.0.1/8", "127.0.0.1"]}),
    ({"token_num_uses": 3}, None, {"token_num_uses": 3}),
    ({"allowed_entity_aliases": "Foo,bar*"}, None, {"allowed_entity_aliases": ["bar*", "foo"]}),
    ({"disallowed_policies": [" B", "b"]}, None, {"disallowed_policies": ["b"]}),
])
async def test_role_fields_as_vault_stores_them(
    env: Env, body: dict[str, Any], warning: str | None, read: dict[str, Any]
) -> None:
    warnings = await _role(env, "ci", body)
    assert warnings == ([] if warning is None else [warning])
    data = await _read(env, "ci")
    assert data is not None and {k: data.get(k) for k in read} == read


#: What a role written with no fields reads back as (OpenBao 2.7.2's answer, compared by hand).
NEW_ROLE: dict[str, Any] = {
    "allowed_entity_aliases": None, "allowed_policies": [], "allowed_policies_glob": [], "disallowed_policies": [],
    "disallowed_policies_glob": [], "explicit_max_ttl": 0, "name": "ci", "orphan": False, "path_suffix": "",
    "period": 0, "renewable": True, "token_explicit_max_ttl": 0, "token_no_default_policy": False,
    "token_period": 0, "token_type": "default-service",
}


async def test_a_role_written_with_no_fields_has_the_defaults(env: Env) -> None:
    await _role(env, "ci", {})
    assert await _read(env, "ci") == NEW_ROLE
    await _role(env, "ci", {"allowed_policies_glob": ["a*"], "disallowed_policies_glob": ["b*"],
                            "token_no_default_policy": True})
    assert await _read(env, "ci") == {**NEW_ROLE, "allowed_policies_glob": ["a*"], "disallowed_policies_glob": ["b*"],
                                      "token_no_default_policy": True}


async def test_a_stored_batch_role_refuses_a_use_count(env: Env) -> None:
    """The stored type is checked against the token fields of an update that names none."""
    await _role(env, "ci", {"token_type": "batch", "orphan": True, "renewable": False})
    with pytest.raises(InvalidRequest) as exc:
        await _role(env, "ci", {"token_num_uses": 1})
    assert exc.value.messages == [_BATCH_FIELDS + "tokens with limited use count"]


async def test_a_role_stored_in_the_old_spelling_is_read_in_the_new_one(env: Env) -> None:
    """A role stored with only the deprecated fields and the type ``default`` (Vault's older
    entries) reads, and makes tokens, as its ``token_`` fields and ``default-service``."""
    await env.mount_storage.put("role/old", {"name": "old", "token_type": "default", "period": 1800,
                                             "explicit_max_ttl": 3600, "bound_cidrs": ["127.0.0.1"]})
    data = await _read(env, "old")
    assert data is not None
    assert {k: data[k] for k in ("token_type", "token_period", "period", "token_explicit_max_ttl",
                                 "explicit_max_ttl", "token_bound_cidrs", "bound_cidrs")} == {
        "token_type": "default-service", "token_period": 1800, "period": 1800, "token_explicit_max_ttl": 3600,
        "explicit_max_ttl": 3600, "token_bound_cidrs": ["127.0.0.1"], "bound_cidrs": ["127.0.0.1"]}
    block, _ = await _create(env, env.root, "old", {"policies": ["a"]})
    assert block["lease_duration"] == 1800 and block["token_type"] == "service"
    entry = await env.store.lookup(block["client_token"])
    assert entry is not None and entry.bound_cidrs == ["127.0.0.1"]
    # The token_ fields, where set, win over the old ones.
    await env.mount_storage.put("role/both", {"name": "both", "period": 1800, "token_period": 600,
                                              "explicit_max_ttl": 3600, "token_explicit_max_ttl": 1200,
                                              "bound_cidrs": ["10.0.0.0/8"], "token_bound_cidrs": ["127.0.0.1"]})
    data = await _read(env, "both")
    assert data is not None and (data["token_period"], data["token_explicit_max_ttl"], data["token_bound_cidrs"]) == (
        600, 1200, ["127.0.0.1"])


#: (role, create body, who creates, the new token's policies, or the refusal's text)
POLICY_CASES: list[tuple[dict[str, Any], dict[str, Any], str, list[str] | str]] = [
    ({}, {}, "child", ["creator", "default", "p"]),
    ({}, {"policies": ["a"]}, "child", "child policies must be subset of parent"),
    ({"allowed_policies": ["a", "b"]}, {}, "child", ["a", "b", "default"]),
    ({"allowed_policies": ["a", "b"]}, {"policies": ["a"]}, "child", ["a", "default"]),
    ({"allowed_policies": ["a", "b"]}, {"policies": ["c-1"]}, "root",
     'token policies (["c-1" "default"]) must be subset of the role\'s allowed policies (["a" "b" "default"]) '
     'or glob policies ([])'),
    ({"allowed_policies_glob": ["c-*"]}, {"policies": ["c-1", "c-2"]}, "child", ["c-1", "c-2", "default"]),
    ({"allowed_policies_glob": ["c-*"]}, {}, "child", ["default"]),
    ({"allowed_policies": ["a"], "allowed_policies_glob": ["c-*"]}, {"policies": ["a", "c-2"]}, "child",
     ["a", "c-2", "default"]),
    ({"disallowed_policies": ["b"]}, {}, "child", ["creator", "default", "p"]),
    ({"disallowed_policies": ["b"]}, {"policies": ["b"]}, "root", 'token policy "b" is disallowed by this role'),
    ({"disallowed_policies": ["default"]}, {"policies": ["a"]}, "child", ["a"]),
    ({"disallowed_policies_glob": ["c-*"]}, {"policies": ["c-1"]}, "root",
     'token policy "c-1" is disallowed by this role'),
    ({"allowed_policies": ["a"], "disallowed_policies_glob": ["def*"]}, {}, "child", ["a"]),
    ({"allowed_policies": ["a"], "token_no_default_policy": True}, {}, "child", ["a"]),
    ({"allowed_policies": ["a"]}, {"no_default_policy": True}, "child", ["a"]),
    ({"allowed_policies": ["root"]}, {}, "child", "root tokens may not be created without parent token being root"),
]


@pytest.mark.parametrize(("role", "body", "who", "expected"), POLICY_CASES)
async def test_the_policies_a_role_gives(
    env: Env, role: dict[str, Any], body: dict[str, Any], who: str, expected: list[str] | str
) -> None:
    """A role with allowed or disallowed policies lets a caller without sudo create tokens
    with policies it does not have itself; without them, the plain subset rule applies."""
    await _role(env, "ci", role)
    raw = env.root if who == "root" else await _child(env)
    if isinstance(expected, str):
        with pytest.raises(InvalidRequest) as exc:
            await _create(env, raw, "ci", body)
        assert exc.value.messages == [expected]
        return
    block, _ = await _create(env, raw, "ci", body)
    assert block["policies"] == expected


async def test_what_a_token_takes_from_its_role(env: Env) -> None:
    await _role(env, "ci", {"allowed_policies": ["a"], "orphan": True, "renewable": False, "path_suffix": "v2x",
                            "token_num_uses": 3, "token_bound_cidrs": ["10.0.0.0/8"]})
    child = await _child(env)
    block, _ = await _create(env, child, "ci", {"num_uses": 5, "renewable": True})
    assert block["orphan"] is True and block["renewable"] is False and block["num_uses"] == 3
    entry = await env.store.lookup(block["client_token"])
    assert entry is not None and entry.parent is None and entry.role == "ci"
    assert entry.path == "auth/token/create/ci/v2x" and entry.bound_cidrs == ["10.0.0.0/8"]
    data = env.store.lookup_data(entry)
    assert data["role"] == "ci" and data["path"] == "auth/token/create/ci/v2x"
    # A token made without a role has no role key.
    plain = await env.call(env.root, "create", {})
    assert plain is not None and plain.auth_block is not None
    plain_entry = await env.store.lookup(plain.auth_block["client_token"])
    assert plain_entry is not None and "role" not in env.store.lookup_data(plain_entry)


@pytest.mark.parametrize(("asked", "uses"), [(None, 3), (2, 2), (3, 3), (5, 3)])
async def test_a_roles_use_count_bounds_its_tokens(env: Env, asked: int | None, uses: int) -> None:
    """The role's count when the request names none or more; the request's when it is less."""
    await _role(env, "ci", {"token_num_uses": 3})
    block, _ = await _create(env, env.root, "ci", {"policies": ["a"], **({"num_uses": asked} if asked else {})})
    assert block["num_uses"] == uses


async def test_a_batch_token_of_a_role_takes_none_of_its_ttls(env: Env) -> None:
    """The role's period and explicit max TTL are a service token's: a batch token made against
    the role gets the mount's default TTL."""
    await _role(env, "ci", {"token_period": "30m", "token_explicit_max_ttl": "20m"})
    block, warnings = await _create(env, env.root, "ci", {"policies": ["a"], "type": "batch"})
    assert (block["token_type"], block["lease_duration"], warnings) == ("batch", 3600, [])
    service, _ = await _create(env, env.root, "ci", {"policies": ["a"]})
    assert service["lease_duration"] == 1200


@pytest.mark.parametrize(("role_type", "asked", "issued"), [
    ("default-service", None, "service"), ("default-service", "batch", "batch"),
    ("default-batch", None, "batch"), ("default-batch", "service", "service"),
    ("service", "batch", "service"), ("batch", "service", "batch"),
])
async def test_the_token_type_a_role_gives(env: Env, role_type: str, asked: str | None, issued: str) -> None:
    batch = {"orphan": True, "renewable": False} if role_type in ("batch", "default-batch") else {}
    await _role(env, "ci", {"token_type": role_type, **batch})
    block, _ = await _create(env, env.root, "ci", {"policies": ["a"], **({"type": asked} if asked else {})})
    assert block["token_type"] == issued


async def test_a_batch_token_keeps_its_role_and_no_use_count(env: Env) -> None:
    """OpenBao answers a role's use count for a batch token, and never counts it; authmount
    answers 0, what the token has (docs/vault-differences.md)."""
    await _role(env, "ci", {"token_num_uses": 3})
    block, _ = await _create(env, env.root, "ci", {"type": "batch", "policies": ["a"]})
    assert block["token_type"] == "batch" and block["num_uses"] == 0
    entry = await env.store.lookup(block["client_token"])
    assert entry is not None and entry.role == "ci" and entry.num_uses == 0
    key = b"k" * 32
    again = decode_batch(encode_batch(TokenEntry(id_hash="", accessor="", policies=["a"], role="ci"), key), (key,))
    assert again is not None and again.role == "ci"


@pytest.mark.parametrize(("role", "body", "ttl", "warning"), [
    ({"token_period": "30m"}, {}, 1800, None),
    ({"token_period": "30m"}, {"period": "20m"}, 1200,
     "Period specified both during creation call and in role; using the lesser value of 1200 seconds"),
    ({"token_explicit_max_ttl": "10m"}, {"ttl": "1h"}, 600, 'TTL of "1h" exceeded the effective max_ttl of "10m"'),
    ({"token_explicit_max_ttl": "10m"}, {"explicit_max_ttl": "5m"}, 300,
     "Explicit max TTL specified both during creation call and in role; using the lesser value of 300 seconds"),
])
async def test_a_roles_ttls(env: Env, role: dict[str, Any], body: dict[str, Any], ttl: int, warning: str | None) -> None:
    await _role(env, "ci", role)
    block, warnings = await _create(env, env.root, "ci", {"policies": ["a"], **body})
    assert block["lease_duration"] == ttl
    assert (warning is None and warnings == []) or (warning is not None and warning in warnings[0])


async def test_renewal_follows_the_role_as_it_is_now(env: Env) -> None:
    await _role(env, "ci", {"token_period": "30m"})
    block, _ = await _create(env, env.root, "ci", {"policies": ["a"]})
    raw = block["client_token"]
    env.clock.now += 600
    renewed = await env.call(raw, "renew-self", {})
    assert renewed is not None and renewed.auth_block is not None and renewed.auth_block["lease_duration"] == 1800
    await _role(env, "ci", {"token_period": "10m"})
    renewed = await env.call(raw, "renew-self", {})
    assert renewed is not None and renewed.auth_block is not None and renewed.auth_block["lease_duration"] == 600
    await env.call(env.root, "roles/ci", op=Operation.DELETE)
    with pytest.raises(InvalidRequest) as exc:
        await env.call(raw, "renew-self", {})
    assert exc.value.messages == ['original token role "ci" could not be found, not renewing']


@pytest.mark.parametrize(("role", "alias", "message"), [
    (None, "foo", "'entity_alias' is only allowed in combination with token role"),
    ({}, "foo", "invalid 'entity_alias' value"),
    ({"allowed_entity_aliases": ["bar*"]}, "foo", "invalid 'entity_alias' value"),
])
async def test_an_entity_alias_needs_a_role_that_allows_it(
    env: Env, role: dict[str, Any] | None, alias: str, message: str
) -> None:
    if role is not None:
        await _role(env, "ci", role)
    with pytest.raises(InvalidRequest) as exc:
        await env.call(env.root, "create/ci" if role is not None else "create", {"entity_alias": alias})
    assert exc.value.messages == [message]


async def test_an_allowed_entity_alias_gives_the_token_its_entity(env: Env) -> None:
    """The alias (compared in lower case, kept as given) names an entity on the token mount,
    the same one at every use, even for a child of a token with another entity."""
    await _role(env, "ci", {"allowed_entity_aliases": ["bar*"]})
    first, _ = await _create(env, env.root, "ci", {"entity_alias": "Bar-1"})
    again, _ = await _create(env, env.root, "ci", {"entity_alias": "Bar-1"})
    other, _ = await _create(env, env.root, "ci", {"entity_alias": "bar-2"})
    expected = env.store.entity_id("auth_token_00000001", "Bar-1")
    assert first["entity_id"] == again["entity_id"] == expected and other["entity_id"] not in ("", expected)
    # the alias folds as the allowed list did (Go's lower case: İ is i)
    await _role(env, "tr", {"allowed_entity_aliases": ["\u0130x"]})
    read = await env.call(env.root, "roles/tr", op=Operation.READ)
    assert read is not None and read.data is not None and read.data["allowed_entity_aliases"] == ["ix"]
    folded, _ = await _create(env, env.root, "tr", {"entity_alias": "\u0130x"})
    assert folded["entity_id"] == env.store.entity_id("auth_token_00000001", "\u0130x")


async def test_an_orphan_has_no_entity(env: Env) -> None:
    """Only a child shares its parent's entity (Vault), with or without a role."""
    parent = TokenEntry(id_hash="", accessor="", policies=["creator"], entity_id="ent-1")
    raw = await env.store.mint(parent, parent=None)
    kid = await env.call(raw, "create", {})
    assert kid is not None and kid.auth_block is not None and kid.auth_block["entity_id"] == "ent-1"
    await _role(env, "orph", {"orphan": True})
    orphan, _ = await _create(env, raw, "orph", {})
    assert orphan["entity_id"] == "" and orphan["orphan"] is True


@pytest.mark.parametrize(("capability", "new", "existing"), [("create", 204, 403), ("update", 403, 204)])
async def test_making_a_role_needs_create_and_changing_one_update(
    aiohttp_client: AiohttpClient, capability: str, new: int, existing: int
) -> None:
    """The path's existence check tells a new role from a stored one, as OpenBao's does: the
    ACL asks for ``create`` to make one and ``update`` to change one."""
    client = await dev_client(aiohttp_client, "root")
    policy = f'path "auth/token/roles/*" {{ capabilities = ["{capability}"] }}'
    assert (await answer(client, "PUT", "sys/policies/acl/roles", {"policy": policy}, token="root"))[0] == 204
    _, made = await answer(client, "POST", "auth/token/create", {"policies": ["roles"]}, token="root")
    token = made["auth"]["client_token"]
    assert (await answer(client, "POST", "auth/token/roles/old", {}, token="root"))[0] == 204
    assert (await answer(client, "POST", "auth/token/roles/new", {"orphan": True}, token=token))[0] == new
    assert (await answer(client, "POST", "auth/token/roles/old", {"orphan": True}, token=token))[0] == existing
    _, old = await answer(client, "GET", "auth/token/roles/old", token="root")
    assert old["data"]["orphan"] is (existing == 204)
