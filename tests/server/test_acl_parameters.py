"""Policy parameter constraints (``allowed_parameters``, ``denied_parameters``,
``required_parameters``): Vault's order of checks and merge, and values judged as the backend
takes them (server/acl/parameters.py; vault-differences row 61)."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from plugin.path_role import ROLE_FIELDS
from plugin.schema import Field, FieldSet, FieldType
from server.acl.parameters import Params
from server.acl.policies import ACL, PolicyError, parse_policy, resultant
from tests.server.test_policy_templates import _api

ROLE = "auth/jwt/role/team-a"
DELEGATE = '''
path "auth/jwt/role/team-*" {
  capabilities = ["create", "update", "read"]
  allowed_parameters = {
    "token_policies" = ["team-*", "default"]
    "role_type" = ["jwt"]
    "user_claim" = []
    "bound_audiences" = []
    "token_ttl" = ["1h"]
    "token_no_default_policy" = [true]
    "groups_claim" = ["", "groups"]
    "bound_claims" = [{ "project" = "x" }]
  }
  denied_parameters = { "token_policies" = ["team-admin"] }
  required_parameters = ["role_type"]
}
'''

#: (case, data, admitted) for a write of ``ROLE`` under ``DELEGATE``, judged with the role's fields.
DELEGATE_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("no parameters but the required one", {"role_type": "jwt"}, True),
    ("the required name missing", {"user_claim": "sub"}, False),
    ("the required name in another case", {"Role_Type": "jwt"}, False),  # the backend reads role_type only
    ("an allowed value", {"role_type": "jwt", "token_policies": "team-b"}, True),
    ("a value not allowed", {"role_type": "oidc"}, False),
    ("a name not allowed", {"role_type": "jwt", "bound_subject": "x"}, False),
    ("any value of an open name", {"role_type": "jwt", "user_claim": "anything"}, True),
    # Vault compares a list as a whole with each listed value, so it refuses these: here
    # each of a list's values is judged.
    ("a list of allowed values", {"role_type": "jwt", "token_policies": ["team-b", "default"]}, True),
    ("a list with one value not allowed", {"role_type": "jwt", "token_policies": ["team-b", "admin"]}, False),
    # Vault lets this string through ("team-*" matches all of it); the backend splits it.
    ("a comma-separated string hiding a value", {"role_type": "jwt", "token_policies": "team-b,admin"}, False),
    ("a comma-separated string of allowed values", {"role_type": "jwt", "token_policies": "team-b, default"}, True),
    # Vault misses these denied values: a list is no string, a string in another case.
    ("a denied value in a list", {"role_type": "jwt", "token_policies": ["team-b", "team-admin"]}, False),
    ("a denied value in a string", {"role_type": "jwt", "token_policies": "team-b,team-admin"}, False),
    ("a denied value in another case", {"role_type": "jwt", "token_policies": "Team-Admin"}, False),
    ("a denied value under the legacy name", {"role_type": "jwt", "policies": ["team-admin"]}, False),
    ("an allowed value under the legacy name", {"role_type": "jwt", "policies": "team-b"}, True),
    ("allowed values under the legacy name, as the field splits them", {"role_type": "jwt", "policies": "default, team-b"},
     True),
    ("the legacy name with a value not allowed", {"role_type": "jwt", "policies": "admin"}, False),
    # An empty list binds nothing: allowed only where the policy lists an empty value.
    ("an empty list where none is listed", {"role_type": "jwt", "token_policies": []}, False),
    ("an empty string where one is listed", {"role_type": "jwt", "groups_claim": ""}, True),
    ("an empty list of an open name", {"role_type": "jwt", "bound_audiences": []}, True),
    # Values as the field takes them: a duration in any spelling, a boolean as a string.
    ("a duration spelt otherwise", {"role_type": "jwt", "token_ttl": "60m"}, True),
    ("a duration in seconds", {"role_type": "jwt", "token_ttl": 3600}, True),
    ("another duration", {"role_type": "jwt", "token_ttl": "2h"}, False),
    ("a boolean as a string", {"role_type": "jwt", "token_no_default_policy": "true"}, True),
    ("the other boolean", {"role_type": "jwt", "token_no_default_policy": False}, False),
    ("an allowed object", {"role_type": "jwt", "bound_claims": {"project": "x"}}, True),
    ("another object", {"role_type": "jwt", "bound_claims": {"project": "y"}}, False),
    ("a value the field does not take, judged as sent", {"role_type": "jwt", "token_ttl": "forever"}, False),
    ("a value with spaces the backend strips", {"role_type": "jwt", "token_policies": " team-b "}, True),
]


@pytest.mark.parametrize(("case", "data", "admitted"), DELEGATE_CASES, ids=[c[0] for c in DELEGATE_CASES])
def test_a_delegated_role_write(case: str, data: dict[str, Any], admitted: bool) -> None:
    acl = ACL(parse_policy(DELEGATE))
    assert acl.allows(ROLE, "update")
    assert acl.permits(ROLE, data, ROLE_FIELDS) is admitted


#: (case, policy body, data, admitted) for a path without fields (Vault's raw comparison).
RAW_CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("no constraints", "", {"a": 1}, True),
    ("no data passes every constraint but required", 'allowed_parameters = { "a" = ["x"] }', {}, True),
    ("required and missing", 'required_parameters = ["a"]', {}, False),
    ("required, given in lower case", 'required_parameters = ["A"]', {"a": 1}, True),
    ("every name denied", 'denied_parameters = { "*" = [] }', {"a": 1}, False),
    ("every name denied, no data", 'denied_parameters = { "*" = [] }', {}, True),
    ("a name denied whatever its value", 'denied_parameters = { "a" = [] }', {"a": "x", "b": 1}, False),
    ("another name than the denied one", 'denied_parameters = { "a" = [] }', {"b": 1}, True),
    ("a name denied, sent in another case", 'denied_parameters = { "a" = [] }', {"A": 1}, False),
    ("every name allowed", 'allowed_parameters = { "*" = [] }', {"z": 1}, True),
    ("every name allowed, and one constrained", 'allowed_parameters = { "*" = [] "a" = ["x"] }', {"a": "y"}, False),
    ("another name, with * allowed", 'allowed_parameters = { "*" = [] "a" = ["x"] }', {"z": "y"}, True),
    ("a glob at the end", 'allowed_parameters = { "a" = ["x*"] }', {"a": "xyz"}, True),
    ("a glob at the start", 'allowed_parameters = { "a" = ["*z"] }', {"a": "xyz"}, True),
    ("globs at both ends", 'allowed_parameters = { "a" = ["*y*"] }', {"a": "xyz"}, True),
    ("globs at both ends, the middle missing", 'allowed_parameters = { "a" = ["*y*"] }', {"a": "xz"}, False),
    ("a glob at the start, another end", 'allowed_parameters = { "a" = ["*z"] }', {"a": "zy"}, False),
    ("a glob at the end, another start", 'allowed_parameters = { "a" = ["xy*"] }', {"a": "xzy"}, False),
    ("a lone * is no glob (Vault)", 'allowed_parameters = { "a" = ["*"] }', {"a": "xyz"}, False),
    ("a lone *, sent", 'allowed_parameters = { "a" = ["*"] }', {"a": "*"}, True),
    ("a glob in the middle is literal", 'allowed_parameters = { "a" = ["x*z"] }', {"a": "xyz"}, False),
    ("a number", 'allowed_parameters = { "a" = [1] }', {"a": 1}, True),
    ("a number is no boolean", 'allowed_parameters = { "a" = [1] }', {"a": True}, False),
    ("a string is no number", 'allowed_parameters = { "a" = [1] }', {"a": "1"}, False),
    ("a list as a whole (Vault)", 'allowed_parameters = { "a" = [["x", "y"]] }', {"a": ["x", "y"]}, True),
    ("a list's values one by one", 'allowed_parameters = { "a" = ["x", "y"] }', {"a": ["y", "x"]}, True),
    ("a list with a value denied", 'denied_parameters = { "a" = ["x"] }', {"a": ["y", "x"]}, False),
    ("a denied string in another case", 'denied_parameters = { "a" = ["x*"] }', {"a": "XY"}, False),
    ("an allowed string in another case", 'allowed_parameters = { "a" = ["x*"] }', {"a": "XY"}, False),
    ("an empty list, nothing listed empty", 'allowed_parameters = { "a" = ["x"] }', {"a": []}, False),
    ("an empty list listed (Vault)", 'allowed_parameters = { "a" = [[]] }', {"a": []}, True),
    ("null matches null", 'allowed_parameters = { "a" = ["x"] }', {"a": None}, False),
]


@pytest.mark.parametrize(("case", "body", "data", "admitted"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_parameters_of_a_path_without_fields(case: str, body: str, data: dict[str, Any], admitted: bool) -> None:
    acl = ACL(parse_policy(f'path "a/*" {{ capabilities = ["update"] {body} }}'))
    assert acl.permits("a/b", data, None) is admitted
    assert acl.permits("a/b", data, FieldSet({})) is admitted  # a path that declares none of them


#: (case, the policy's values for each field, data, admitted): listed values as the field takes them.
TAKEN_CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("an empty list, an empty value listed after it", '"token_policies": ["", "x"]', {"token_policies": []}, True),
    ("an empty list, an empty value listed before one", '"token_policies": ["x", ""]', {"token_policies": []}, True),
    ("a list, with those values", '"token_policies": ["", "x"]', {"token_policies": ["x"]}, True),
    ("a list, with another value", '"token_policies": ["", "x"]', {"token_policies": ["y"]}, False),
    ("a listed value the list field never takes is skipped",
     '"token_policies": [{"k": "v"}, "x"]', {"token_policies": ["x"]}, True),
    ("a listed value the duration field never takes is skipped",
     '"token_ttl": ["forever", "1h"]', {"token_ttl": "60m"}, True),
    ("a glob of a lower-case field is lower-cased as the field's values are", '"lower": ["AB*"]', {"lower": "ABC"}, True),
    ("a glob of a string field is kept", '"token_policies": [], "plain": ["Ab*"]', {"plain": "abc"}, False),
]
_TAKEN_FIELDS = FieldSet({**ROLE_FIELDS.fields, "lower": Field(FieldType.LOWER_STRING, "A lower-case field."),
                          "plain": Field(FieldType.STRING, "A string field.")})


@pytest.mark.parametrize(("case", "listed", "data", "admitted"), TAKEN_CASES, ids=[c[0] for c in TAKEN_CASES])
def test_listed_values_are_taken_as_the_field_takes_them(
    case: str, listed: str, data: dict[str, Any], admitted: bool
) -> None:
    acl = ACL(parse_policy('{"path": {"a": {"capabilities": ["update"], "allowed_parameters": {' + listed + "}}}}"))
    assert acl.permits("a", data, _TAKEN_FIELDS) is admitted


def test_constraints_of_several_policies_add_up() -> None:
    """Vault's merge: allowed and denied values of one name add up, any value in one makes it
    any value, required names add up; a path granted without constraints by one policy and
    with them by another is constrained; a deny drops them."""
    one = parse_policy('path "a" { capabilities = ["update"] allowed_parameters = { "x" = ["1"] "y" = ["a"] } '
                       'required_parameters = ["x"] }')
    two = parse_policy('path "a" { capabilities = ["read"] allowed_parameters = { "x" = ["2"] "y" = [] } '
                       'denied_parameters = { "z" = ["q"] } required_parameters = ["y", "x"] }')
    free = parse_policy('path "a" { capabilities = ["create"] }')
    acl = ACL([*one, *free, *two])
    assert resultant(acl)["exact_paths"]["a"] == {
        "capabilities": ["create", "read", "update"], "allowed_parameters": {"x": ["2", "1"], "y": []},
        "denied_parameters": {"z": ["q"]}, "required_parameters": ["x", "y"]}
    assert acl.permits("a", {"x": "1", "y": "anything"}, None)
    assert acl.permits("a", {"x": "2", "y": "b"}, None)
    assert not acl.permits("a", {"x": "3", "y": "b"}, None)
    assert not acl.permits("a", {"x": "1"}, None)  # y is required (by the second policy)
    assert not acl.permits("a", {"x": "1", "y": "b", "z": "q"}, None)
    assert ACL(free).permits("a", {"anything": 1}, None) and not ACL(free).constrained
    denied = ACL([*one, *parse_policy('path "a" { capabilities = ["deny"] }')])
    assert not denied.allows("a", "update") and not denied.constrained
    assert resultant(denied)["exact_paths"]["a"] == {"capabilities": ["deny"]}


def test_the_governing_rule_decides() -> None:
    """Only the constraints of the rule that governs the path apply (the exact one before a
    glob), and a templated path keeps its constraints when filled."""
    acl = ACL(parse_policy('path "a/*" { capabilities = ["update"] denied_parameters = { "*" = [] } }\n'
                           'path "a/free" { capabilities = ["update"] }'))
    assert acl.permits("a/free", {"x": 1}, None)
    assert not acl.permits("a/other", {"x": 1}, None)
    assert acl.permits("b", {"x": 1}, None)  # no rule: the capability check refuses it


#: (case, body, message) of constraints Vault refuses too.
BAD_CONSTRAINTS = [
    ("a value that is no list", 'allowed_parameters = { "a" = "x" }',
     'path "p": allowed_parameters "a" must be a list of values (an empty list: any value)'),
    ("a list of names", 'denied_parameters = ["a"]',
     'path "p": denied_parameters must be an object of parameter names to lists of values'),
    ("an empty list", 'allowed_parameters = []',  # OpenBao: not an object type for map
     'path "p": allowed_parameters must be an object of parameter names to lists of values'),
    ("a name that is no list", 'required_parameters = "a"', 'path "p": required_parameters must be a list of parameter names'),
    ("a list inside", 'required_parameters = [["a"]]', 'path "p": required_parameters must be a list of parameter names'),
]


@pytest.mark.parametrize(("case", "body", "message"), BAD_CONSTRAINTS, ids=[c[0] for c in BAD_CONSTRAINTS])
def test_malformed_constraints_are_refused(case: str, body: str, message: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(f'path "p" {{ capabilities = ["update"] {body} }}')
    assert str(exc.value) == message


def test_constraints_parse_as_vault_reads_them() -> None:
    """Names lower-cased (required ones kept as written, numbers as text); repeated blocks and
    the JSON form read; empty constraints are none; a deny has none."""
    [rule] = parse_policy('path "p" { capabilities = ["update"]\n allowed_parameters { "A" = ["x"] }\n'
                          'allowed_parameters = { b = [] }\n required_parameters = ["C", 1] }')
    assert isinstance(rule.params, Params)
    assert rule.params.shown() == {"allowed_parameters": {"a": ["x"], "b": []}, "required_parameters": ["C", "1"]}
    [rule] = parse_policy('{"path": {"p": {"capabilities": ["update"], "denied_parameters": {"X": [1, true]}}}}')
    assert rule.params is not None and rule.params.shown() == {"denied_parameters": {"x": [1, True]}}
    [rule] = parse_policy('path "p" { capabilities = ["update"] allowed_parameters = {} required_parameters = [] }')
    assert rule.params is None
    [rule] = parse_policy('path "p" { capabilities = ["deny"] allowed_parameters = { "a" = [] } }')
    assert rule.params is None


async def test_constraints_judge_requests_on_the_server(aiohttp_client: AiohttpClient) -> None:
    """Through the HTTP API: a team token writes its roles within the constraints; a write
    outside them is ``403 permission denied`` and changes nothing; a sys path and a token
    creation are judged too; LIST and DELETE carry no parameters to judge (Vault)."""
    api, _ = await _api(aiohttp_client)
    await api.ok("PUT", "sys/policies/acl/delegate", {"policy": DELEGATE + '''
path "auth/token/create" { capabilities = ["update"] denied_parameters = { "policies" = ["admin"] } }
path "sys/policies/acl/team-*" { capabilities = ["create", "update", "delete"] allowed_parameters = { "policy" = ["# team*"] } }
path "auth/jwt/role" { capabilities = ["list"] required_parameters = ["nothing"] }
path "auth/jwt/role/team-old" { capabilities = ["delete", "read"] required_parameters = ["nothing"] }
'''})
    token = (await api.ok("POST", "auth/token/create", {"policies": ["delegate"]}))["auth"]["client_token"]
    role = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount", "token_policies": "team-a"}
    assert (await api.call("POST", "auth/jwt/role/team-a", role, token=token))[0] == 204
    for escalation in ({"token_policies": "team-a,admin"}, {"policies": ["team-admin"]}, {"bound_subject": "x"}):
        status, out = await api.call("POST", "auth/jwt/role/team-a", {**role, **escalation}, token=token)
        assert (status, out) == (403, {"errors": ["permission denied"]}), escalation
    assert (await api.ok("GET", "auth/jwt/role/team-a"))["data"]["token_policies"] == ["team-a"]
    # A read is judged on its query (Vault): role_type is required there too.
    assert (await api.call("GET", "auth/jwt/role/team-a?role_type=jwt", token=token))[0] == 200
    assert (await api.call("GET", "auth/jwt/role/team-a?role_type=oidc", token=token))[0] == 403
    assert (await api.call("GET", "auth/jwt/role/team-a", token=token))[0] == 403
    assert (await api.call("POST", "auth/token/create", {"policies": "default,Admin"}, token=token))[0] == 403
    assert (await api.call("POST", "sys/policies/acl/team-x", {"policy": "# team x"}, token=token))[0] == 204
    assert (await api.call("POST", "sys/policies/acl/team-x", {"policy": "path \"*\" {}"}, token=token))[0] == 403
    assert (await api.call("LIST", "auth/jwt/role", token=token))[0] == 200
    await api.ok("POST", "auth/jwt/role/team-old", role)
    assert (await api.call("DELETE", "auth/jwt/role/team-old", token=token))[0] == 204
    assert (await api.call("GET", "auth/jwt/role/team-old", token=token))[0] == 403  # required: nothing


#: (case, body, wrap TTL asked or None, admitted) under a rule's wrapping bounds.
WRAP_CASES: list[tuple[str, str, int | None, bool]] = [
    ("no bounds", 'allowed_parameters = { "a" = [] }', None, True),
    ("a minimum, not wrapped", 'min_wrapping_ttl = "1m"', None, False),
    ("a minimum, wrapped for less", 'min_wrapping_ttl = "1m"', 30, False),
    ("a minimum, wrapped for it", 'min_wrapping_ttl = "1m"', 60, True),
    ("a maximum, not wrapped", "max_wrapping_ttl = 600", None, False),
    ("a maximum, wrapped for more", "max_wrapping_ttl = 600", 601, False),
    ("a maximum, wrapped for it", "max_wrapping_ttl = 600", 600, True),
    ("both the same, wrapped for it", 'min_wrapping_ttl = "1m" max_wrapping_ttl = 60', 60, True),
    ("a maximum, wrapped within", 'max_wrapping_ttl = "600"', 120, True),
    ("both, within", 'min_wrapping_ttl = "1m" max_wrapping_ttl = "10m"', 300, True),
]


@pytest.mark.parametrize(("case", "body", "wrap", "admitted"), WRAP_CASES, ids=[c[0] for c in WRAP_CASES])
def test_wrapping_bounds(case: str, body: str, wrap: int | None, admitted: bool) -> None:
    acl = ACL(parse_policy(f'path "a" {{ capabilities = ["update", "list"] {body} }}'))
    assert acl.permits("a", {}, None, wrap_ttl=wrap) is admitted
    assert acl.permits("a", None, None, wrap_ttl=wrap, listing=True) is admitted  # a LIST too (Vault)


def test_wrapping_bounds_parse_and_merge_as_vault() -> None:
    """Durations in Vault's forms, shown in seconds; Vault's texts for a bad one and for a
    maximum below the minimum; several policies: the least minimum and the least maximum,
    and a maximum below the minimum after the merge refuses everything."""
    [rule] = parse_policy('path "a" { capabilities = ["update"] min_wrapping_ttl = "1m" max_wrapping_ttl = 3600 }')
    assert rule.params is not None and rule.params.shown() == {"min_wrapping_ttl": 60, "max_wrapping_ttl": 3600}
    for body, message in (('min_wrapping_ttl = "soon"', 'error parsing min_wrapping_ttl: time: invalid duration "soon"'),
                          ('max_wrapping_ttl = "2m" min_wrapping_ttl = "3m"',
                           "max_wrapping_ttl cannot be less than min_wrapping_ttl")):
        with pytest.raises(PolicyError) as exc:
            parse_policy(f'path "a" {{ capabilities = ["update"] {body} }}')
        assert str(exc.value) == f'path "a": {message}'  # OpenBao 2.7.2's texts
    [rule] = parse_policy('path "a" { capabilities = ["update"] min_wrapping_ttl = "1m" max_wrapping_ttl = 60 }')
    assert rule.params is not None and rule.params.shown() == {"min_wrapping_ttl": 60, "max_wrapping_ttl": 60}
    acl = ACL([*parse_policy('path "a" { capabilities = ["update"] min_wrapping_ttl = "5m" max_wrapping_ttl = "10m" }'),
               *parse_policy('path "a" { capabilities = ["read"] min_wrapping_ttl = "1m" max_wrapping_ttl = "2m" }')])
    assert resultant(acl)["exact_paths"]["a"] == {"capabilities": ["read", "update"], "min_wrapping_ttl": 60,
                                                  "max_wrapping_ttl": 120}
    assert acl.permits("a", {}, None, wrap_ttl=90) and not acl.permits("a", {}, None, wrap_ttl=300)
    crossed = ACL([*parse_policy('path "a" { capabilities = ["update"] min_wrapping_ttl = "5m" }'),
                   *parse_policy('path "a" { capabilities = ["update"] max_wrapping_ttl = "2m" }')])
    assert not any(crossed.permits("a", {}, None, wrap_ttl=t) for t in (None, 60, 120, 300, 600))


async def test_a_policy_that_makes_token_creation_wrapped(aiohttp_client: AiohttpClient) -> None:
    """Vault's trusted-orchestrator pattern: a token may create tokens only wrapped, for at most
    ten minutes; unwrapped or for longer is ``403 permission denied``."""
    api, _ = await _api(aiohttp_client)
    await api.ok("PUT", "sys/policies/acl/orchestrator", {"policy": (
        'path "auth/token/create" { capabilities = ["update"] min_wrapping_ttl = "1m" max_wrapping_ttl = "10m" }')})
    token = (await api.ok("POST", "auth/token/create", {"policies": ["orchestrator"]}))["auth"]["client_token"]

    async def create(wrap: str | None) -> tuple[int, Any]:
        headers = {"X-Vault-Token": token, **({"X-Vault-Wrap-TTL": wrap} if wrap else {})}
        resp = await api.client.post("/v1/auth/token/create", json={"policies": ["default"]}, headers=headers)
        return resp.status, await resp.json()

    assert await create(None) == (403, {"errors": ["permission denied"]})
    assert (await create("30s"))[0] == 403 and (await create("11m"))[0] == 403
    status, out = await create("5m")
    assert status == 200 and out["auth"] is None and out["wrap_info"]["ttl"] == 300


async def test_a_templated_path_keeps_its_constraints(aiohttp_client: AiohttpClient) -> None:
    """A path with identity templates is filled per token with its constraints: each user
    writes the role named after it, without the admin policy."""
    api, accessor = await _api(aiohttp_client)
    await api.ok("PUT", "sys/policies/acl/dev", {"policy": (
        f'path "auth/jwt/role/{{{{identity.entity.aliases.{accessor}.name}}}}" {{ capabilities = ["create", "update"] '
        'denied_parameters = { "token_policies" = ["admin"] } }')})
    token = (await api.login("carol", []))["client_token"]
    role = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "authmount"}
    assert (await api.call("POST", "auth/jwt/role/carol", {**role, "token_policies": "x"}, token=token))[0] == 204
    assert (await api.call("POST", "auth/jwt/role/carol", {**role, "token_policies": "x,admin"}, token=token))[0] == 403
    assert (await api.call("POST", "auth/jwt/role/dave", role, token=token))[0] == 403
