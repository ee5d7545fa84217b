"""Identity templates in ACL policy paths (``server.acl.templating``): each template's value,
the paths left out, what a token may do at once after its entity changed, the default
policy's own-entity paths, merged entities, and that a request no template could concern
never reads the identity. What tokens may do is compared with OpenBao 2.7.2 in
tests/e2e/test_identity_peer.py (``test_templated_policies_as_openbao``)."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from server.acl.policies import PolicyStore
from server.acl.templating import (
    AliasView,
    GroupView,
    IdentityView,
    TemplateError,
    blocked_by,
    populate,
    template_names,
)
from server.app import create_app
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from tests.server.test_identity import ROOT, Api, _mount

WHO = IdentityView(
    id="e-1", name="carol", metadata=(("empty", ""), ("team", "red")),
    aliases=(("auth_jwt_1", AliasView("a-1", "carol@x", (("project", "grp/web"),), (("c", "cm"),))),),
    groups=(GroupView("g-1", "devs", (("tier", "gold"),)),),
)
DEFAULT = blocked_by(False, False)


@pytest.mark.parametrize(("pattern", "blocked", "filled"), [
    ("x/{{identity.entity.id}}", DEFAULT, "x/e-1"),
    ("x/{{ identity.entity.name }}/*", DEFAULT, "x/carol/*"),
    ("x/{{identity.entity.metadata.team}}-{{identity.entity.name}}", DEFAULT, "x/red-carol"),
    ("x/{{identity.entity.metadata.empty}}/y", DEFAULT, "x//y"),  # a key that is there, empty: as Vault
    ("x/{{identity.entity.metadata.nope}}", DEFAULT, None),
    ("x/{{identity.entity.aliases.auth_jwt_1.name}}", DEFAULT, "x/carol@x"),
    ("x/{{identity.entity.aliases.auth_jwt_1.id}}", DEFAULT, "x/a-1"),
    ("x/{{identity.entity.aliases.auth_jwt_1.custom_metadata.c}}", DEFAULT, "x/cm"),
    ("x/{{identity.entity.aliases.auth_jwt_1.metadata.project}}", DEFAULT, None),  # a '/'
    ("x/{{identity.entity.aliases.auth_jwt_1.metadata.project}}", blocked_by(True, False), "x/grp/web"),
    ("x/{{identity.entity.aliases.auth_jwt_2.name}}", DEFAULT, None),
    ("x/{{identity.groups.names.devs.id}}", DEFAULT, "x/g-1"),
    ("x/{{identity.groups.ids.g-1.name}}", DEFAULT, "x/devs"),
    ("x/{{identity.groups.names.devs.metadata.tier}}", DEFAULT, "x/gold"),
    ("x/{{identity.groups.names.ops.id}}", DEFAULT, None),
])
def test_filled_templates(pattern: str, blocked: str, filled: str | None) -> None:
    assert populate(pattern, WHO, blocked) == filled


@pytest.mark.parametrize("value", ["a*", "a+b", "{{identity.entity.id}}", "a}}"])
def test_values_that_are_never_filled_in(value: str) -> None:
    """Globs (unless the policy allows them) and template braces in a value leave the path out."""
    who = IdentityView(id="e", name=value)
    assert populate("x/{{identity.entity.name}}", who, DEFAULT) is None
    assert populate("x/{{identity.entity.name}}", None, DEFAULT) is None  # no entity


#: Template names a policy path may hold (Vault's ``identity.*`` templates), each with a value.
NAMED = [
    "identity.entity.id", "identity.entity.name", "identity.entity.metadata.k",
    "identity.entity.aliases.acc.id", "identity.entity.aliases.acc.name", "identity.entity.aliases.acc.metadata.k",
    "identity.entity.aliases.acc.custom_metadata.k", "identity.entity.aliases.acc.metadata.k.with.dots",
    "identity.groups.ids.g-1.id", "identity.groups.ids.g-1.name", "identity.groups.ids.g-1.metadata.k",
    "identity.groups.names.devs.id", "identity.groups.names.devs.name", "identity.groups.names.devs.metadata.k",
]
#: Names that name nothing: refused when the policy is written, not left to match no token.
UNNAMED = [
    "identity.entity.metadata.", "identity.entity.aliases.acc", "identity.entity.aliases..name",
    "identity.entity.aliases.acc.metadata.", "identity.entity.aliases.acc.custom_metadata.",
    "identity.entity.aliases.acc.other", "identity.entity.aliases.acc.name.x", "identity.groups.ids..name",
    "identity.groups.ids.g-1", "identity.groups.names.devs.metadata.", "identity.groups.names.devs.custom_metadata.k",
    "identity.groups.other.devs.id", "identity.entity.idd", "timex.now",
]


@pytest.mark.parametrize("name", NAMED)
def test_a_template_that_names_a_value_is_taken(name: str) -> None:
    assert template_names(f"x/{{{{{name}}}}}/y") == [name]


@pytest.mark.parametrize("name", UNNAMED)
def test_a_template_that_names_nothing_is_refused(name: str) -> None:
    with pytest.raises(TemplateError) as exc:
        template_names(f"x/{{{{{name}}}}}")
    assert str(exc.value).startswith(f'unknown template "{name}" (known: ')


def test_time_templates_are_refused_by_name() -> None:
    with pytest.raises(TemplateError) as exc:
        template_names("x/{{time.now}}")
    assert str(exc.value) == 'the template "time.now" is not supported: only identity templates are'


def test_the_characters_a_value_may_not_hold() -> None:
    """By the policy's flags (``allow_slashes``, ``allow_wildcards``)."""
    assert (blocked_by(False, False), blocked_by(True, False), blocked_by(False, True), blocked_by(True, True)) == (
        "/*+", "*+", "/", "")
    assert populate("x/{{identity.entity.name}}", IdentityView(id="e", name="Xa/b*"), blocked_by(True, True)) == "x/Xa/b*"


def test_an_identity_without_metadata_aliases_or_groups_fills_nothing_of_them() -> None:
    """The views' defaults: no metadata, aliases or groups (no value, not an error)."""
    who = IdentityView(id="e", name="n", aliases=(("acc", AliasView("a", "an")),), groups=(GroupView("g", "gn"),))
    for name in ("identity.entity.metadata.k", "identity.entity.aliases.acc.metadata.k",
                 "identity.entity.aliases.acc.custom_metadata.k", "identity.groups.ids.g.metadata.k",
                 "identity.entity.aliases.other.id", "identity.groups.names.other.id"):
        assert populate(f"x/{{{{{name}}}}}", who, DEFAULT) is None, name
    bare = IdentityView(id="e", name="n")
    assert populate("x/{{identity.groups.ids.g.name}}", bare, DEFAULT) is None
    assert populate("x/{{identity.entity.aliases.acc.id}}", bare, DEFAULT) is None
    assert IdentityView.items(None) == () and IdentityView.items({"b": "2", "a": "1"}) == (("a", "1"), ("b", "2"))


async def _api(aiohttp_client: AiohttpClient) -> tuple[Api, str]:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    api = Api(await aiohttp_client(make_test_server(create_app(settings))))
    return api, await _mount(api, "jwt")


async def _can(api: Api, token: str, path: str) -> Any:
    out = (await api.call("POST", "sys/capabilities-self", {"paths": [path]}, token=token))[1]
    return out["data"][path]


async def test_a_change_of_the_entity_applies_at_once(aiohttp_client: AiohttpClient) -> None:
    """The filled ACL is kept by what was read of the entity, so a change of its metadata
    (or aliases, or groups) applies to the token's next request, not a second later."""
    api, _ = await _api(aiohttp_client)
    await api.ok("POST", "sys/policies/acl/dev", {
        "policy": 'path "auth/jwt/role/team-{{identity.entity.metadata.team}}" { capabilities = ["read"] }'})
    login = await api.login("carol", [])
    eid, token = login["entity_id"], login["client_token"]
    await api.ok("POST", f"identity/entity/id/{eid}", {"metadata": {"team": "red"}})
    assert await _can(api, token, "auth/jwt/role/team-red") == ["read"]
    await api.ok("POST", f"identity/entity/id/{eid}", {"metadata": {"team": "blue"}})
    assert await _can(api, token, "auth/jwt/role/team-red") == ["deny"]
    assert (await api.call("GET", "auth/jwt/role/team-blue", token=token))[0] == 404  # allowed: no such role


async def test_the_default_policy_lets_a_token_read_its_own_entity(aiohttp_client: AiohttpClient) -> None:
    """Vault's default policy: ``identity/entity/id/{{identity.entity.id}}`` and
    ``.../name/{{identity.entity.name}}``; a merged entity's token reads the entity it went into."""
    api, _ = await _api(aiohttp_client)
    mine, other = await api.login("dora", []), await api.login("eve", [])
    token, eid = mine["client_token"], mine["entity_id"]
    name = (await api.ok("GET", f"identity/entity/id/{eid}"))["data"]["name"]
    assert (await api.call("GET", f"identity/entity/id/{eid}", token=token))[0] == 200
    assert (await api.call("GET", f"identity/entity/name/{name}", token=token))[0] == 200
    assert (await api.call("GET", f"identity/entity/id/{other['entity_id']}", token=token))[0] == 403
    keep = (await api.ok("GET", f"identity/entity/id/{other['entity_id']}"))["data"]["aliases"][0]["id"]
    await api.ok("POST", "identity/entity/merge", {"to_entity_id": other["entity_id"], "from_entity_ids": [eid],
                                                   "conflicting_alias_ids_to_keep": [keep]})
    assert (await api.call("GET", f"identity/entity/id/{other['entity_id']}", token=token))[0] == 200


async def test_a_request_no_template_concerns_reads_no_identity(
    aiohttp_client: AiohttpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every token has the default policy, whose two templated paths are under
    ``identity/entity/``: the other requests of a token (its lookup-self, a login's role read)
    are judged without looking its entity up."""
    api, _ = await _api(aiohttp_client)
    login = await api.login("fay", [])
    token, eid = login["client_token"], login["entity_id"]
    asked: list[str] = []
    real = PolicyStore._filled_acl

    async def counting(self: PolicyStore, names: Any, plain: Any, loaded: Any, entity_id: str, now: float) -> Any:
        asked.append(entity_id)
        return await real(self, names, plain, loaded, entity_id, now)

    monkeypatch.setattr(PolicyStore, "_filled_acl", counting)
    assert (await api.call("GET", "auth/token/lookup-self", token=token))[0] == 200
    assert (await api.call("GET", "auth/jwt/role/dev", token=token))[0] == 403
    assert asked == []
    assert (await api.call("GET", f"identity/entity/id/{eid}", token=token))[0] == 200
    assert asked == [eid]


async def test_policy_flags_are_stored_and_read(aiohttp_client: AiohttpClient) -> None:
    api, _ = await _api(aiohttp_client)
    text = 'path "auth/jwt/role/{{identity.entity.name}}" { capabilities = ["read"] }'
    await api.ok("POST", "sys/policies/acl/t", {"policy": text, "allow_slashes_in_identity_templates": True})
    data = (await api.ok("GET", "sys/policies/acl/t"))["data"]
    assert (data["allow_slashes_in_identity_templates"], data["allow_wildcards_in_identity_templates"]) == (True, False)
    await api.ok("POST", "sys/policies/acl/t", {"policy": text})  # a write without them: false again, as OpenBao
    data = (await api.ok("GET", "sys/policies/acl/t"))["data"]
    assert data["allow_slashes_in_identity_templates"] is False


async def test_the_resultant_acl_shows_the_filled_paths(aiohttp_client: AiohttpClient) -> None:
    """``sys/internal/ui/resultant-acl`` lists a template's path as filled for the calling
    token (the default policy's own entity, by id and by name, too)."""
    api, _ = await _api(aiohttp_client)
    await api.ok("POST", "sys/policies/acl/dev", {
        "policy": 'path "auth/jwt/role/{{identity.entity.name}}/*" { capabilities = ["read", "list"] }'})
    login = await api.login("gil", [])
    name = (await api.ok("GET", f"identity/entity/id/{login['entity_id']}"))["data"]["name"]
    status, out = await api.call("GET", "sys/internal/ui/resultant-acl", token=login["client_token"])
    assert status == 200 and out["data"]["root"] is False
    assert out["data"]["glob_paths"][f"auth/jwt/role/{name}/"] == {"capabilities": ["list", "read"]}
    assert out["data"]["exact_paths"][f"identity/entity/id/{login['entity_id']}"] == {"capabilities": ["read"]}
    assert out["data"]["exact_paths"][f"identity/entity/name/{name}"] == {"capabilities": ["read"]}
