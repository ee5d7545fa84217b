"""role/<name> CRUD, LIST, validation order and messages, legacy fields.

Scenarios: docs/reference/test-scenarios.md section 3; behaviour: docs/reference/vault-api.md section 3.
"""

from __future__ import annotations

from typing import Any

import pytest

from plugin.errors import InvalidRequest, NotFound, PluginError, UnsupportedPath
from plugin.framework import Operation
from plugin.path_role import ROLE_FIELDS
from tests.plugin.fakes import Harness

ROLE_FIELDS_NAMES = list(ROLE_FIELDS)


@pytest.fixture
def h() -> Harness:
    return Harness()


async def stored(h: Harness, name: str) -> dict[str, Any]:
    raw = await h.storage.get("role/" + name)
    assert isinstance(raw, dict)
    return raw


JWT = {"role_type": "jwt", "user_claim": "user"}

CREATE_OK = [
    ("has-bound-subject", {**JWT, "bound_subject": "testsub"}, {"bound_subject": "testsub"}),
    ("has-audience", {**JWT, "bound_audiences": "vault"}, {"bound_audiences": ["vault"]}),
    ("has-cidr-legacy", {**JWT, "bound_cidrs": "127.0.0.1/8"}, {"token_bound_cidrs": ["127.0.0.1/8"], "bound_cidrs": ["127.0.0.1/8"]}),
    ("has-bound-claims", {**JWT, "bound_claims": {"foo": 10, "bar": "baz"}}, {"bound_claims": {"foo": 10, "bar": "baz"}}),
    ("custom-leeways", {**JWT, "bound_subject": "s", "expiration_leeway": "5s", "not_before_leeway": "5s", "clock_skew_leeway": "5s"},
     {"expiration_leeway": 5, "not_before_leeway": 5, "clock_skew_leeway": 5}),
    ("zero-leeways", {**JWT, "bound_subject": "s", "expiration_leeway": "0", "not_before_leeway": "0", "clock_skew_leeway": "0"},
     {"expiration_leeway": 0, "not_before_leeway": 0, "clock_skew_leeway": 0}),
    ("negative-leeways", {**JWT, "bound_subject": "s", "expiration_leeway": "-1", "not_before_leeway": "-1", "clock_skew_leeway": "-1"},
     {"expiration_leeway": -1, "not_before_leeway": -1, "clock_skew_leeway": -1}),
    ("glob-strings", {**JWT, "bound_claims_type": "glob", "bound_claims": {"ref": ["release/*", "main"], "x": "y*"}},
     {"bound_claims_type": "glob"}),
    ("max-token-age", {**JWT, "bound_subject": "s", "max_token_age": "1h"}, {"max_token_age": 3600}),
    ("list-claim-mappings", {**JWT, "bound_subject": "s", "list_claim_mappings": {"groups": "groups"}},
     {"list_claim_mappings": {"groups": "groups"}}),
    ("oidc-with-redirects", {"user_claim": "user", "allowed_redirect_uris": "https://example.com"}, {"role_type": "oidc"}),
    ("oidc-redirect-false", {"user_claim": "user", "allowed_redirect_uris": "false"}, {"allowed_redirect_uris": ["false"]}),
]


@pytest.mark.parametrize(("data", "want"), [c[1:] for c in CREATE_OK], ids=[c[0] for c in CREATE_OK])
async def test_create_ok(h: Harness, data: dict[str, Any], want: dict[str, Any]) -> None:
    assert await h.write("role/r1", data) is None
    raw = await stored(h, "r1")
    for key, value in want.items():
        assert raw[key] == value


async def test_create_happy_path_stores_legacy_copies(h: Harness) -> None:
    """TestPath_Create happy path."""
    data = {
        "role_type": "jwt", "bound_subject": "testsub", "bound_audiences": "vault", "user_claim": "user",
        "user_claim_json_pointer": True, "groups_claim": "groups", "bound_cidrs": "127.0.0.1/8", "policies": "test",
        "period": "3s", "ttl": "1s", "num_uses": 12, "max_ttl": "5s", "max_age": "60s",
    }
    assert await h.write("role/plugin-test", data) is None
    raw = await stored(h, "plugin-test")
    assert raw["token_policies"] == ["test"] and raw["policies"] == ["test"]
    assert (raw["token_period"], raw["token_ttl"], raw["token_max_ttl"], raw["token_num_uses"]) == (3, 1, 5, 12)
    assert (raw["period"], raw["ttl"], raw["max_ttl"], raw["num_uses"]) == (3, 1, 5, 12)
    assert raw["token_bound_cidrs"] == ["127.0.0.1/8"] and raw["bound_cidrs"] == ["127.0.0.1/8"]
    assert raw["alias_metadata"] == {}
    assert raw["bound_audiences"] == ["vault"] and raw["bound_claims_type"] == "string"
    assert (raw["expiration_leeway"], raw["not_before_leeway"], raw["clock_skew_leeway"]) == (0, 0, 0)
    assert raw["allowed_redirect_uris"] is None and raw["max_age"] == 60


CREATE_ERR = [
    ("no-user-claim", {"policies": "test"}, "a user claim must be defined on the role"),
    ("no-binding", {**JWT, "policies": "test"}, "must have at least one bound constraint when creating/updating a role"),
    ("bad-role-type", {"role_type": "saml", "user_claim": "u"}, "invalid 'role_type': saml"),
    ("bad-bound-claims-type", {**JWT, "bound_subject": "s", "bound_claims_type": "invalid"}, "invalid 'bound_claims_type': invalid"),
    # sent empty: no type, as OpenBao 2.7.2 answers (it was taken as left out; found by a fuzz)
    ("empty-bound-claims-type", {**JWT, "bound_claims_type": ""}, "invalid 'bound_claims_type': "),
    ("glob-number", {**JWT, "bound_claims_type": "glob", "bound_claims": {"bar": "baz", "foo": 25}}, "claim is not a string: 25"),
    ("glob-list-number", {**JWT, "bound_claims_type": "glob", "bound_claims": {"foo": ["baz", 10]}}, "claim is not a string: 10"),
    ("glob-object", {**JWT, "bound_claims_type": "glob", "bound_claims": {"foo": {"a": 1}}}, 'claim is not a string or list: {"a": 1}'),
    ("reserved-target", {**JWT, "bound_subject": "s", "claim_mappings": {"foo": "a", "some_claim": "role"}},
     'metadata key "role" is reserved and may not be a mapping destination'),
    ("duplicate-target", {**JWT, "bound_subject": "s", "claim_mappings": {"foo": "a", "bar": "a"}},
     'multiple keys are mapped to metadata key "a"'),
    ("duplicate-across-list-mappings", {**JWT, "bound_subject": "s", "claim_mappings": {"foo": "a"}, "list_claim_mappings": {"bar": "a"}},
     'multiple keys are mapped to metadata key "a"'),
    ("reserved-list-target", {**JWT, "bound_subject": "s", "list_claim_mappings": {"g": "role"}}, 'metadata key "role" is reserved'),
    ("oidc-no-redirect", {"user_claim": "u"}, "'allowed_redirect_uris' must be set if 'role_type' is 'oidc' or unspecified."),
    ("default-service", {**JWT, "bound_subject": "s", "token_type": "default-service"}, "invalid 'token_type' value \"default-service\""),
    ("batch-period", {**JWT, "bound_subject": "s", "token_type": "batch", "token_period": "1h"},
     "'token_type' cannot be 'batch' or 'default_batch' when set to generate periodic tokens"),
    ("batch-num-uses", {**JWT, "bound_subject": "s", "token_type": "batch", "token_num_uses": 3},
     "'token_type' cannot be 'batch' or 'default_batch' when set to generate tokens with limited use count"),
    ("negative-num-uses", {**JWT, "bound_subject": "s", "token_num_uses": -1}, "'token_num_uses' cannot be negative"),
    ("token-ttl-gt-max", {**JWT, "bound_subject": "s", "token_ttl": "2h", "token_max_ttl": "1h"},
     "'token_ttl' cannot be greater than 'token_max_ttl'"),
    ("legacy-ttl-gt-max", {**JWT, "bound_subject": "s", "ttl": "2h", "max_ttl": "1h"}, "ttl should not be greater than max ttl"),
    ("period-gt-mount-max", {**JWT, "bound_subject": "s", "token_period": "25h"},
     "'period' of '\"25h0m0s\"' is greater than the backend's maximum lease TTL of '\"24h0m0s\"'"),
    ("bad-cidr", {**JWT, "token_bound_cidrs": "300.1.1.1"}, 'error parsing address "300.1.1.1"'),
    ("bad-legacy-cidr", {**JWT, "bound_cidrs": "nope/8"}, 'error parsing address "nope/8"'),
    # OpenBao's token_strictly_bind_ip binds a token to the login's address: no CIDRs beside it.
    ("strict-and-cidrs", {**JWT, "token_strictly_bind_ip": True, "token_bound_cidrs": "10.0.0.0/8"},
     "'token_strictly_bind_ip' conflicts with 'token_bound_cidrs'; set only one"),
    # OpenBao stores this pair (its check runs before the legacy name is copied); a role that
    # shows both would be read as bound to the CIDRs, so it is refused (docs/vault-differences.md).
    ("strict-and-legacy-cidrs", {**JWT, "token_strictly_bind_ip": True, "bound_cidrs": "10.0.0.0/8"},
     "'token_strictly_bind_ip' conflicts with 'token_bound_cidrs'; set only one"),
    ("strict-not-a-bool", {**JWT, "bound_subject": "s", "token_strictly_bind_ip": "maybe"}, "Field validation failed"),
    ("negative-max-age", {**JWT, "bound_subject": "s", "max_age": "-1"}, "Field validation failed"),
    ("bad-max-age", {**JWT, "bound_subject": "s", "max_age": "1hr"}, "Field validation failed"),
    ("bad-claim-mappings-pair", {**JWT, "bound_subject": "s", "claim_mappings": ["x"]}, 'Field validation failed: error converting input ["x"] for field "claim_mappings": invalid key pair "x"'),
    # Order: the user claim check (8) comes before the redirect check (9) and the constraint check (10).
    ("user-claim-before-redirect", {"role_type": "oidc"}, "a user claim must be defined on the role"),
    ("role-type-first", {"role_type": "x", "token_type": "bogus"}, "invalid 'role_type': x"),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in CREATE_ERR], ids=[c[0] for c in CREATE_ERR])
async def test_create_errors(h: Harness, data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        await h.write("role/r1", data)
    assert info.value.messages[0].startswith(message), info.value.messages
    assert await h.storage.get("role/r1") is None


async def test_strict_binding_conflicts_with_stored_cidrs(h: Harness) -> None:
    """An update that turns on token_strictly_bind_ip judges the CIDRs the role already has."""
    await h.write("role/r1", {**JWT, "token_bound_cidrs": "10.0.0.0/8"})
    with pytest.raises(InvalidRequest) as info:
        await h.write("role/r1", {**JWT, "token_strictly_bind_ip": True})
    assert info.value.messages == ["'token_strictly_bind_ip' conflicts with 'token_bound_cidrs'; set only one"]
    await h.write("role/r1", {**JWT, "token_bound_cidrs": [], "bound_subject": "s", "token_strictly_bind_ip": True})
    assert (await stored(h, "r1"))["token_strictly_bind_ip"] is True


async def test_failed_update_keeps_previous_role(h: Harness) -> None:
    await h.write("role/r1", {**JWT, "bound_subject": "s"})
    before = await stored(h, "r1")
    with pytest.raises(InvalidRequest):
        await h.write("role/r1", {**JWT, "bound_claims_type": "nope"})
    assert await stored(h, "r1") == before
    resp = await h.read("role/r1")
    assert resp is not None and resp.data is not None and resp.data["bound_subject"] == "s"


async def test_oidc_create_then_update_stores_numbers(h: Harness) -> None:
    """TestPath_OIDCCreate: explicit and default role_type on the same name."""
    data = {
        "bound_audiences": "vault", "bound_claims": {"foo": 10, "bar": "baz"}, "oidc_scopes": ["email", "profile"],
        "allowed_redirect_uris": ["https://example.com", "http://localhost:8250"], "claim_mappings": {"foo": "a", "bar": "b"},
        "user_claim": "user", "groups_claim": "groups", "policies": "test", "period": "3s", "ttl": "1s", "num_uses": 12,
        "max_ttl": "5s", "expiration_leeway": "300s", "not_before_leeway": "300s", "clock_skew_leeway": "1s",
    }
    assert await h.write("role/test", {**data, "role_type": ""}) is None
    assert (await stored(h, "test"))["role_type"] == "oidc"
    assert await h.write("role/test", {**data, "role_type": "oidc"}) is None
    raw = await stored(h, "test")
    assert raw["role_type"] == "oidc"
    assert raw["bound_claims"] == {"foo": 10, "bar": "baz"}
    assert (raw["expiration_leeway"], raw["not_before_leeway"], raw["clock_skew_leeway"]) == (300, 300, 1)
    assert raw["token_policies"] == ["test"] and raw["token_ttl"] == 1 and raw["token_max_ttl"] == 5


async def test_read_exact(h: Harness) -> None:
    """TestPath_Read: GET returns exactly these keys and values."""
    await h.write("role/plugin-test", {
        "role_type": "jwt", "bound_subject": "testsub", "bound_audiences": "vault",
        "allowed_redirect_uris": ["http://127.0.0.1"], "oidc_scopes": ["email", "profile"], "user_claim": "user",
        "groups_claim": "groups", "bound_cidrs": "127.0.0.1/8", "policies": "test", "period": "3s", "ttl": "1s",
        "num_uses": 12, "max_ttl": "5s", "expiration_leeway": "500s", "not_before_leeway": "500s", "clock_skew_leeway": "100s",
    })
    resp = await h.read("role/plugin-test")
    assert resp is not None
    assert resp.data == {
        "role_type": "jwt", "bound_claims_type": "string", "bound_claims": None, "claim_mappings": None,
        "list_claim_mappings": None, "bound_subject": "testsub", "bound_audiences": ["vault"],
        "allowed_redirect_uris": ["http://127.0.0.1"], "oidc_scopes": ["email", "profile"], "user_claim": "user",
        "user_claim_json_pointer": False, "groups_claim": "groups", "token_policies_template_claims": False,
        "token_policies": ["test"], "policies": ["test"], "token_period": 3, "period": 3, "token_ttl": 1, "ttl": 1,
        "token_num_uses": 12, "num_uses": 12, "token_max_ttl": 5, "max_ttl": 5,
        "expiration_leeway": 500, "not_before_leeway": 500, "clock_skew_leeway": 100, "verbose_oidc_logging": False,
        "token_type": "default", "token_no_default_policy": False, "token_explicit_max_ttl": 0, "max_age": 0,
        "max_token_age": 0, "alias_metadata": {},
        "bound_cidrs": ["127.0.0.1/8"], "token_bound_cidrs": ["127.0.0.1/8"],
        "callback_mode": "client", "poll_interval": 0, "oidc_disable_confirmation": False, "oauth2_metadata": None,
            "token_strictly_bind_ip": False,
        "oidc_claims_precedence": "userinfo", "resolve_distributed_claims": False,
    }


async def test_legacy_role_upgraded_on_read(h: Harness) -> None:
    await h.write("role/old", {**JWT, "bound_subject": "s", "token_policies": "p"})
    raw = await stored(h, "old")
    del raw["role_type"], raw["bound_claims_type"]
    raw.update(token_ttl=0, ttl=60, token_policies=[], policies=["legacy"])
    await h.storage.put("role/old", raw)
    h.backend.invalidate("role/old")
    resp = await h.read("role/old")
    assert resp is not None and resp.data is not None
    assert resp.data["role_type"] == "jwt" and resp.data["bound_claims_type"] == "string"
    assert resp.data["token_ttl"] == 60 and resp.data["ttl"] == 60
    assert resp.data["token_policies"] == ["legacy"]
    assert "role_type" not in await stored(h, "old")  # storage is not rewritten


async def test_delete(h: Harness) -> None:
    await h.write("role/r1", {**JWT, "bound_subject": "s"})
    assert await h.call(Operation.DELETE, "role/r1") is None
    with pytest.raises(NotFound):
        await h.read("role/r1")
    assert await h.call(Operation.DELETE, "role/never") is None


async def test_list(h: Harness) -> None:
    with pytest.raises(NotFound) as info:
        await h.call(Operation.LIST, "role/")
    assert info.value.messages == []
    for name in ("b", "a", "c.d"):
        await h.write(f"role/{name}", {**JWT, "bound_subject": "s"})
    for path in ("role", "role/"):
        resp = await h.call(Operation.LIST, path)
        assert resp is not None and resp.data == {"keys": ["a", "b", "c.d"]}


PAGES = [
    # (after, limit) as ``bao list -after -limit`` sends them, and the names answered (None: 404)
    ({}, ["a", "b", "c.d"]),
    ({"after": "a"}, ["b", "c.d"]),  # no limit: every name after it (a 500 on cel/role/ before)
    ({"after": "a", "limit": 1}, ["b"]),
    ({"limit": 2}, ["a", "b"]),
    ({"after": "aa", "limit": 5}, ["b", "c.d"]),  # the name need not exist
    ({"after": "a", "limit": -3}, ["b", "c.d"]),  # 0 or less: all, as OpenBao
    ({"after": "a", "limit": "0"}, ["b", "c.d"]),
    ({"after": "c.d"}, None),
    ({"after": "zz", "limit": 1}, None),
]


@pytest.mark.parametrize("prefix", ["role/", "cel/role/"])
@pytest.mark.parametrize(("page", "keys"), PAGES)
async def test_list_pages_as_openbao(h: Harness, prefix: str, page: dict[str, Any], keys: list[str] | None) -> None:
    """OpenBao 2.x pages both role lists (``after``, ``limit``); compared side by side in
    tests/e2e/test_openbao_differential.py (``test_role_list_pages_as_openbao``)."""
    for name in ("b", "a", "c.d"):
        body = {**JWT, "bound_subject": "s"} if prefix == "role/" else {"cel_program": {"expression": "true"}}
        await h.write(prefix + name, body)
    if keys is None:
        with pytest.raises(NotFound):
            await h.call(Operation.LIST, prefix, page)
        return
    resp = await h.call(Operation.LIST, prefix, page)
    assert resp is not None and resp.data == {"keys": keys} and not resp.warnings


@pytest.mark.parametrize("prefix", ["role/", "cel/role/"])
@pytest.mark.parametrize(("page", "message"), [
    ({"limit": "x"}, 'Field validation failed: error converting input x for field "limit": cannot parse as an integer'),
    ({"after": "a\x00b"}, "after must be valid UTF-8 without NUL characters"),  # a 500 before
    ({"after": "\x00", "limit": 1}, "after must be valid UTF-8 without NUL characters"),
    ({"after": "\ud800"}, "after must be valid UTF-8 without NUL characters"),
])
async def test_a_page_that_cannot_be_is_refused(h: Harness, prefix: str, page: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        await h.call(Operation.LIST, prefix, page)
    assert info.value.messages == [message]


async def test_names_lower_cased_and_regex(h: Harness) -> None:
    await h.write("role/MyRole", {**JWT, "bound_subject": "s", "name": "MyRole"})
    resp = await h.read("role/myrole")
    assert resp is not None and resp.data is not None and resp.data["bound_subject"] == "s"
    assert await h.storage.get("role/myrole") is not None
    for bad in ("role/-x", "role/x-", "role/a/../b", "role/a%2fb", "role/é"):
        with pytest.raises(UnsupportedPath):
            await h.read(bad)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("role/ADMIN", "role/admin"), ("role/Admin", "role/admin"), ("role/admin", "role/admin"),
     ("role/CI.Deploy-1", "role/ci.deploy-1"), ("role/ADMIN/explain", "role/admin/explain"), ("login", "login")],
)
def test_route_is_canonical_before_the_acl(h: Harness, raw: str, canonical: str) -> None:
    """The server judges the ACL on ``route.path``; the handler gets the same name."""
    route = h.backend.resolve(raw)
    assert route.path == canonical
    if "name" in route.captures:
        assert route.captures["name"] == canonical.split("/")[1]


async def test_update_merges_everything_but_role_type(h: Harness) -> None:
    """An update keeps every field it does not send, ``bound_claims_type`` included (Vault
    resets it to ``string``, which turns a glob role's globs into exact values: logins then
    fail; docs/vault-differences.md). ``role_type`` stays required, as in Vault."""
    await h.write("role/r", {**JWT, "bound_subject": "s", "bound_claims_type": "glob", "bound_claims": {"a": "x*"}, "token_ttl": 60})
    await h.write("role/r", {"role_type": "jwt", "token_max_ttl": 120})
    raw = await stored(h, "r")
    assert raw["bound_subject"] == "s" and raw["token_ttl"] == 60 and raw["token_max_ttl"] == 120
    assert raw["bound_claims_type"] == "glob" and raw["bound_claims"] == {"a": "x*"} and raw["user_claim"] == "user"
    await h.write("role/r", {"role_type": "jwt", "bound_claims_type": "string"})  # said: changed
    assert (await stored(h, "r"))["bound_claims_type"] == "string"
    await h.write("role/r2", {**JWT, "bound_subject": "s"})  # a new role: string by default
    assert (await stored(h, "r2"))["bound_claims_type"] == "string"
    with pytest.raises(InvalidRequest, match="'allowed_redirect_uris' must be set"):
        await h.write("role/r", {"bound_subject": "t"})  # no role_type: becomes oidc


async def test_new_name_overrides_legacy(h: Harness) -> None:
    await h.write("role/r", {**JWT, "bound_subject": "s", "ttl": 30})
    assert (await stored(h, "r"))["ttl"] == 30
    await h.write("role/r", {**JWT, "token_ttl": 40})
    raw = await stored(h, "r")
    assert raw["token_ttl"] == 40 and raw["ttl"] == 0  # old copy cleared
    await h.write("role/r", {**JWT, "token_ttl": 50, "ttl": 10})
    raw = await stored(h, "r")
    assert raw["token_ttl"] == 50 and raw["ttl"] == 50


async def test_legacy_policies_normalised(h: Harness) -> None:
    await h.write("role/r", {**JWT, "bound_subject": "s", "policies": " B,a,,a ,C"})
    raw = await stored(h, "r")
    assert raw["policies"] == ["a", "b", "c"] and raw["token_policies"] == ["a", "b", "c"]
    await h.write("role/r", {**JWT, "policies": "x,Root"})
    assert (await stored(h, "r"))["token_policies"] == ["root"]
    await h.write("role/r", {**JWT, "token_policies": " Dev ,ops"})
    assert (await stored(h, "r"))["token_policies"] == ["Dev", "ops"]  # stored as given (trimmed), not lower-cased


@pytest.mark.parametrize(
    ("data", "warning"),
    [
        ({"token_max_ttl": "48h"}, "token max ttl is greater than the system or backend mount's maximum TTL value"),
        ({"verbose_oidc_logging": True}, "verbose_oidc_logging has been enabled for this role."),
    ],
    ids=["max-ttl-over-mount", "verbose-logging"],
)
async def test_warnings(h: Harness, data: dict[str, Any], warning: str) -> None:
    resp = await h.write("role/r", {**JWT, "bound_subject": "s", **data})
    assert resp is not None and resp.data is None
    assert any(w.startswith(warning) for w in resp.warnings)


async def test_unknown_field_warning_and_hvac_name(h: Harness) -> None:
    assert await h.write("role/r", {**JWT, "bound_subject": "s", "name": "r"}) is None
    resp = await h.write("role/r", {**JWT, "bound_subject": "s", "bogus": 1, "verbose_oidc_logging": True})
    assert resp is not None
    assert "Endpoint ignored these unrecognized parameters: [bogus]" in resp.warnings


async def test_a_misspelt_field_answers_with_the_field_it_resembles(h: Harness) -> None:
    """A write that had no body (204) still says what it ignored, with the closest field."""
    resp = await h.write("role/r", {**JWT, "bound_subject": "s", "bound_claim": {"a": "b"}, "token_policy": "dev"})
    assert resp is not None and resp.data is None
    assert resp.warnings == [
        "Endpoint ignored these unrecognized parameters: [bound_claim token_policy]",
        "bound_claim: did you mean bound_claims?",
        "token_policy: did you mean token_policies?",
    ]
    assert (await stored(h, "r"))["bound_claims"] is None  # ignored, as the warning says


async def test_cache_invalidated_on_write(h: Harness) -> None:
    await h.write("role/r", {**JWT, "bound_subject": "s"})
    first = await h.backend.role(h.storage, "r")
    await h.write("role/r", {**JWT, "bound_subject": "t"})
    second = await h.backend.role(h.storage, "r")
    assert first is not None and second is not None
    assert first.bound_subject == "s" and second.bound_subject == "t"


async def test_an_update_merges_into_the_stored_role_not_a_stale_copy(h: Harness) -> None:
    """Two nodes, one storage: node B's cached copy of a role misses node A's write of a
    moment ago (its announcement on the way); B's update merges into the stored role, so A's
    change is kept, not written over."""
    other = Harness()
    other.storage = h.storage
    await h.write("role/r", {**JWT, "bound_subject": "s"})
    assert (await other.backend.role(other.storage, "r")) is not None  # B caches the role
    await h.write("role/r", {**JWT, "token_ttl": "1h"})  # A's change B has not heard of
    await other.write("role/r", {**JWT, "bound_subject": "t"})
    role = await stored(h, "r")
    assert (role["token_ttl"], role["bound_subject"]) == (3600, "t")
    with pytest.raises(InvalidRequest, match="^'token_ttl' cannot be greater than 'token_max_ttl'$"):
        await other.write("role/r", {**JWT, "token_max_ttl": "30m"})  # judged with the stored 1 h TTL
    assert (await stored(h, "r"))["token_max_ttl"] == 0  # and nothing was written


HOSTILE: list[Any] = [None, {}, [], [[]], {"a": {"b": []}}, [None], 1e308, -(2**70), True, "x" * 5000, "a=b", ["k=v", 3]]


@pytest.mark.parametrize("field", [n for n in ROLE_FIELDS_NAMES if n != "name"])
async def test_hostile_values_never_crash(h: Harness, field: str) -> None:
    """Any value in any role field gives success or a PluginError (a 4xx), never another exception."""
    for value in HOSTILE:
        try:
            await h.write("role/r", {**JWT, "bound_subject": "s", field: value})
        except PluginError:
            pass
        resp = await h.read("role/r") if await h.storage.get("role/r") else None
        assert resp is None or resp.data is not None
