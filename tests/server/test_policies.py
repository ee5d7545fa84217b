"""Policies: HCL/JSON parsing, validation, glob priority, deny wins, PolicyStore."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest

from plugin.errors import InvalidRequest
from plugin.storage import InMemoryStorage
from server.acl.hcl import HCLError, parse
from server.acl.policies import ACL, DEFAULT_POLICY, PathRule, PolicyError, PolicyStore, parse_policy


def acl(text: str) -> ACL:
    return ACL(parse_policy(text))


HCL_SAMPLE = """
# comment
// another
/* block
   comment */
path "auth/+/role/*" {
  capabilities = ["read", "list",]  # trailing comma
}
path "secret/data" { capabilities = ["create", "update"] }
"""


def test_hcl_and_json_give_same_rules() -> None:
    from_hcl = parse_policy(HCL_SAMPLE)
    from_json = parse_policy(
        '{"path": {"auth/+/role/*": {"capabilities": ["read", "list"]},'
        ' "secret/data": {"capabilities": ["create", "update"]}}}'
    )
    assert set(from_hcl) == set(from_json)
    assert PathRule("auth/+/role/*", frozenset({"read", "list"})) in from_hcl


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('a = "x"', {"a": "x"}),
        ("a = 1\nb = true\nc = -2.5", {"a": 1, "b": True, "c": -2.5}),
        ('a = ["x", 2, false]', {"a": ["x", 2, False]}),
        ('a = { "k" = [] , j = "v" }', {"a": {"k": [], "j": "v"}}),
        ('p "x" { c = 1 }\np "y" { c = 2 }', {"p": {"x": {"c": 1}, "y": {"c": 2}}}),
        ('p "x" { c = 1 }\np "x" { c = 2 }', {"p": {"x": [{"c": 1}, {"c": 2}]}}),
        ('a = "tab\\there \\"q\\""', {"a": 'tab\there "q"'}),
        ("", {}),
    ],
    ids=["string", "scalars", "list", "object", "two-blocks", "repeated-block", "escapes", "empty"],
)
def test_hcl_parse(text: str, expected: dict[str, Any]) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('a = "x', "unterminated string on line 1"),
        ("\n\n/* never closed", "unterminated comment on line 3"),
        ("a = <<EOF\nx\nEOF", "heredocs are not supported"),
        ('a "x" = 1', "expected '=' or '{'"),
        ("a = ", "expected a value but found end of input"),
        ('path "x" {', "expected a key but found end of input"),
        ("a = [1 2]", "expected ',' or ']'"),
        ("a = 1\na = 2", "duplicate key 'a' on line 2"),
        ("a = @", "unexpected character '@'"),
        ("a = " + "[" * 100 + "]" * 100, "nesting too deep"),
    ],
    ids=["open-string", "open-comment", "heredoc", "label-then-equals", "no-value", "open-block",
         "missing-comma", "duplicate", "bad-char", "deep"],
)
def test_hcl_errors(text: str, message: str) -> None:
    with pytest.raises(HCLError, match=message):
        parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('path "a" { capabilities = ["read", "fly"] }', 'path "a": invalid capability "fly"'),
        ('path "a*b" { capabilities = ["read"] }', 'path "a\\*b": the "\\*" glob is only allowed at the end'),
        ('path "a/+*" { capabilities = ["read"] }', "'\\+\\*' is forbidden"),
        ('path "a/b+c/d" { capabilities = ["read"] }', 'the "\\+" wildcard must be a whole path segment'),
        ('path "a" { capabilities = "read" }', "capabilities must be a list of strings"),
        ('path "a" { colour = "red" }', 'path "a": invalid key "colour"'),
        ('path "a" { mfa_methods = ["m"] }', '"mfa_methods" is not supported'),
        ('path "a" { policy = "admin" }', 'invalid policy "admin"'),
        ('paths "a" { capabilities = [] }', 'invalid key "paths"'),
        ('path "identity/entity/id/{{identity.entity.ids}}" { capabilities = ["read"] }', "unknown template"),
        ("{not json", "invalid JSON"),
        ('{"path": ' + "[" * 100000 + "]" * 100000 + "}", "nesting too deep"),
        ('{"path": {"a": "read"}}', 'path "a": expected a block'),
        ('{"path": 5}', '"path" must be a block'),
        ('{"path": {"a": {"capabilities": ["read", 5]}}}', "capabilities must be a list of strings"),
    ],
    ids=["capability", "mid-glob", "plus-star", "partial-plus", "caps-string", "unknown-key",
         "unsupported-key", "legacy-bad", "top-level-key", "template", "bad-json", "json-deep",
         "json-body-not-block", "json-path-scalar", "json-cap-number"],
)
def test_policy_validation(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


GLOB_POLICY = """
path "secret/*"            { capabilities = ["read"] }
path "secret/foo"          { capabilities = ["update"] }
path "secret/foo*"         { capabilities = ["list"] }
path "secret/+/bar"        { capabilities = ["delete"] }
path "secret/+/bar/*"      { capabilities = ["create"] }
path "secret/+/+/baz"      { capabilities = ["sudo"] }
path "auth/+/role/*"       { capabilities = ["read", "list"] }
path "auth/jwt/role"       { capabilities = ["list"] }
path "sys/*"               { policy = "read" }
path "/lead/slash"         { capabilities = ["read"] }
"""


@pytest.mark.parametrize(
    ("path", "cap", "allowed"),
    [
        ("secret/foo", "update", True),  # exact beats every glob
        ("secret/foo", "read", False),
        ("secret/foobar", "list", True),  # longer prefix wins over secret/*
        ("secret/foobar", "read", False),
        ("secret/other", "read", True),
        ("secret/x/bar", "delete", True),  # + matches one segment
        ("secret/x/y/bar", "delete", False),
        ("secret/x/y/bar", "read", True),  # falls back to secret/*
        # Vault's rule 3: at equal wildcard position, both globs, fewer "+" wins: secret/*
        ("secret/x/bar/q", "create", False),
        ("secret/x/bar/q", "read", True),
        ("secret/x/bar", "create", False),
        ("secret/a/b/baz", "sudo", True),
        ("auth/jwt/role/alice", "read", True),
        ("auth/oidc/role/", "list", True),
        ("auth/jwt/role/", "list", True),  # LIST also matches the exact path without "/"
        ("auth/jwt/role", "read", False),
        ("auth/jwt/config", "read", False),
        ("sys/mounts", "list", True),  # legacy policy = "read"
        ("sys/mounts", "update", False),
        ("lead/slash", "read", True),
        ("/secret/other", "read", True),
        ("", "read", False),
        ("secret", "read", False),
    ],
    ids=lambda v: str(v),
)
def test_glob_table(path: str, cap: str, allowed: bool) -> None:
    assert acl(GLOB_POLICY).allows(path, cap) is allowed


@pytest.mark.parametrize(
    ("patterns", "path", "winner"),
    [
        (["a/*", "a/b*"], "a/bc", "a/b*"),
        (["a/+/c", "a/b/*"], "a/b/c", "a/b/*"),  # first wildcard later wins
        (["a/b/*", "a/b/c*"], "a/b/cd", "a/b/c*"),
        (["a/+/c/*", "a/+/c/d"], "a/x/c/d", "a/+/c/d"),  # not ending in * wins
        (["a/+/+/d", "a/+/c/d"], "a/x/c/d", "a/+/c/d"),  # fewer + wins
        (["a/+/c/*", "a/+/c/de*"], "a/x/c/def", "a/+/c/de*"),  # longer wins
        (["*", "a*"], "abc", "a*"),
    ],
    ids=["longer-prefix", "wildcard-position", "prefix-length", "star-loses", "fewer-plus",
         "length", "star-everything"],
)
def test_priority_table(patterns: list[str], path: str, winner: str) -> None:
    rules = [PathRule(p, frozenset({f"cap{i}"})) for i, p in enumerate(patterns)]
    want = f"cap{patterns.index(winner)}"
    assert ACL(rules).capabilities(path) == [want]


@pytest.mark.parametrize(
    ("policies", "path", "cap", "allowed"),
    [
        ([('"a/*"', '["read", "deny"]')], "a/x", "read", False),
        ([('"a/*"', '["read"]'), ('"a/*"', '["deny"]')], "a/x", "read", False),
        ([('"a/*"', '["deny"]'), ('"a/x"', '["read"]')], "a/x", "read", True),  # exact is more specific
        ([('"a/x"', '["deny"]'), ('"a/*"', '["read"]')], "a/x", "read", False),
        ([('"a/*"', '["read"]'), ('"a/*"', '["update"]')], "a/x", "update", True),  # union
        ([('"a/*"', '["sudo", "deny"]')], "a/x", "sudo", False),
    ],
    ids=["deny-same-block", "deny-other-policy", "specific-allow", "specific-deny", "union", "deny-beats-sudo"],
)
def test_deny_wins_table(policies: list[tuple[str, str]], path: str, cap: str, allowed: bool) -> None:
    rules = []
    for pattern, caps in policies:
        rules += parse_policy(f"path {pattern} {{ capabilities = {caps} }}")
    assert ACL(rules).allows(path, cap) is allowed


def test_capabilities_report() -> None:
    a = acl(GLOB_POLICY)
    assert a.capabilities("secret/other") == ["read"]
    assert a.capabilities("nothing/here") == ["deny"]
    assert ACL(root=True).capabilities("anything") == ["root"]


def test_default_policy_parses() -> None:
    a = acl(DEFAULT_POLICY)
    assert a.allows("auth/token/lookup-self", "read")
    assert a.allows("auth/token/renew-self", "update")
    assert a.allows("auth/token/revoke-self", "update")
    assert a.allows("sys/capabilities-self", "update")
    assert not a.allows("auth/token/create", "update")
    assert not a.allows("sys/auth/jwt", "sudo")


@pytest.fixture
def store() -> PolicyStore:
    return PolicyStore(InMemoryStorage())


async def test_store_round_trip_and_normalisation(store: PolicyStore) -> None:
    with pytest.raises(InvalidRequest, match="whitespace"):  # no second spelling of "dev"
        await store.put("  Dev ", 'path "secret/*" { capabilities = ["read"] }')
    await store.put("Dev", 'path "secret/*" { capabilities = ["read"] }')
    assert await store.get("DEV") == 'path "secret/*" { capabilities = ["read"] }'
    assert await store.list() == ["default", "dev", "root"]
    a = await store.acl_for(["dev", "default", "missing"])
    assert a.allows("secret/x", "read") and a.allows("auth/token/lookup-self", "read")
    assert not a.allows("secret/x", "update")
    await store.delete("dev")
    assert await store.get("dev") is None
    assert await store.list() == ["default", "root"]
    await store.put("zeta", 'path "z" { capabilities = ["read"] }')
    assert await store.list() == ["default", "zeta", "root"]  # Vault appends root to the sorted names


async def test_acl_cache_invalidated_on_write(store: PolicyStore) -> None:
    await store.put("dev", 'path "a" { capabilities = ["read"] }')
    assert (await store.acl_for(["dev"])).allows("a", "read")
    await store.put("dev", 'path "a" { capabilities = ["deny"] }')
    assert not (await store.acl_for(["dev"])).allows("a", "read")
    await store.delete("dev")
    assert not (await store.acl_for(["dev"])).allows("a", "read")


async def test_failed_parse_keeps_old_policy(store: PolicyStore) -> None:
    good = 'path "a" { capabilities = ["read"] }'
    await store.put("dev", good)
    with pytest.raises(InvalidRequest, match='failed to parse policy: path "a": invalid capability "fly"'):
        await store.put("dev", 'path "a" { capabilities = ["fly"] }')
    assert await store.get("dev") == good
    assert (await store.acl_for(["dev"])).allows("a", "read")


@pytest.mark.parametrize(
    ("op", "name", "expected"),
    [
        ("put", "root", pytest.raises(InvalidRequest, match='cannot update "root" policy')),
        ("put", " ROOT ", pytest.raises(InvalidRequest, match='invalid policy name " ROOT ": leading or trailing')),
        ("put", "ROOT", pytest.raises(InvalidRequest, match='cannot update "root" policy')),
        ("delete", "root", pytest.raises(InvalidRequest, match='cannot delete "root" policy')),
        ("delete", "Default", pytest.raises(InvalidRequest, match='^cannot delete default policy$')),
        ("delete", "response-wrapping", pytest.raises(InvalidRequest, match='^cannot delete "response-wrapping" policy$')),
        ("put", "default", nullcontext()),
        ("put", "a/b", pytest.raises(InvalidRequest, match='invalid policy name "a/b"')),
        ("put", "   ", pytest.raises(InvalidRequest, match="invalid policy name")),
        ("delete", "missing", nullcontext()),
    ],
    ids=["put-root", "put-root-spaced", "put-root-upper", "delete-root", "delete-default", "delete-wrapping",
         "put-default", "slash",
         "blank", "delete-missing"],
)
async def test_builtin_policy_rules(store: PolicyStore, op: str, name: str, expected: Any) -> None:
    with expected:
        if op == "put":
            await store.put(name, 'path "x" { capabilities = ["read"] }')
        else:
            await store.delete(name)


async def test_default_editable_and_root_acl(store: PolicyStore) -> None:
    assert await store.get("default") == DEFAULT_POLICY
    assert await store.get("root") == ""
    await store.put("default", 'path "only/this" { capabilities = ["read"] }')
    a = await store.acl_for(["default"])
    assert a.allows("only/this", "read") and not a.allows("auth/token/lookup-self", "read")
    root = await store.acl_for([" Root"])
    assert root.allows("sys/auth/jwt", "sudo") and root.allows("anything", "delete")


async def test_empty_policy_refused(store: PolicyStore) -> None:
    with pytest.raises(InvalidRequest, match="'policy' parameter not supplied or empty"):
        await store.put("dev", "  ")


# -- OpenBao's check-and-set and expiring policies ----------------------------------------------
RULE = 'path "a" { capabilities = ["read"] }'

#: Writes of one policy, in order: (cas, cas_required, the refusal or None); then its read.
CAS_STEPS: list[tuple[int | None, bool, str | None]] = [
    (5, False, "check-and-set parameter 5 did not match the current version 0"),  # no policy yet
    (-1, False, None),  # -> version 1
    (-1, False, "check-and-set parameter set to -1 on existing entry"),
    (None, False, None),  # -> 2: no cas needed while nothing requires it
    (2, True, None),  # -> 3, cas_required from now on
    (None, False, "check-and-set parameter required for this call"),  # the stored flag requires it
    (2, False, "check-and-set parameter 2 did not match the current version 3"),
    (3, False, None),  # -> 4, and the flag is off again (it is set per write)
    (None, True, "check-and-set parameter required for this call"),  # this write's own flag
    (None, False, None),  # -> 5
]


async def test_check_and_set_steps(store: PolicyStore) -> None:
    for i, (cas, required, refusal) in enumerate(CAS_STEPS):
        before = await store.entry("dev")
        if refusal is None:
            await store.put("dev", RULE + f"\n# {i}", cas=cas, cas_required=required)
            continue
        with pytest.raises(InvalidRequest) as info:
            await store.put("dev", RULE + f"\n# {i}", cas=cas, cas_required=required)
        assert info.value.messages == [refusal], i
        assert await store.entry("dev") == before, i  # a refused write changes nothing
    found = await store.entry("dev")
    assert found is not None and (found.version, found.cas_required, found.text) == (5, False, RULE + "\n# 9")


async def test_the_built_in_default_is_version_one(store: PolicyStore) -> None:
    found = await store.entry("default")
    assert found is not None and (found.version, found.modified) == (1, None)
    with pytest.raises(InvalidRequest, match="set to -1 on existing entry"):
        await store.put("default", RULE, cas=-1)
    await store.put("default", RULE, cas=1)
    found = await store.entry("default")
    assert found is not None and found.version == 2 and found.modified is not None


async def test_a_policy_an_older_version_wrote_is_version_zero(store: PolicyStore) -> None:
    await store.storage.put("sys/policy/old", {"name": "old", "policy": RULE})
    found = await store.entry("old")
    assert found is not None and (found.version, found.cas_required, found.modified) == (0, False, None)
    assert not any(found.flags.values())  # a row without its flags: none set
    await store.put("old", RULE, cas=0)
    found = await store.entry("old")
    assert found is not None and found.version == 1


async def test_an_expired_policy_is_gone() -> None:
    clock = [1_000.0]
    store = PolicyStore(InMemoryStorage(), clock=lambda: clock[0], cache_ttl=0)
    await store.put("temp", RULE, expiration=1_060.0)
    found = await store.entry("temp")
    assert found is not None and found.expiration == 1_060.0 and found.public()["expiration"] == "1970-01-01T00:17:40Z"
    assert (await store.acl_for(["temp"])).allows("a", "read")
    clock[0] = 1_060.0
    assert not (await store.acl_for(["temp"])).allows("a", "read")
    assert await store.entry("temp") is None
    assert await store.storage.get("sys/policy/temp") is None  # removed, as OpenBao removes it when loaded
    await store.put("temp", RULE, cas=-1)  # and a create may take the name again


async def test_the_built_in_policies_read_as_written_by_no_one(store: PolicyStore) -> None:
    for name in ("root", "response-wrapping", "default"):
        found = await store.entry(name)
        assert found is not None, name
        assert (found.flags, found.cas_required, found.modified, found.expiration) == (
            dict.fromkeys(("allow_slashes_in_identity_templates", "allow_wildcards_in_identity_templates"), False),
            False, None, None)
        assert found.version == (1 if name == "default" else 0)


async def test_a_write_stores_what_a_read_gives_back(store: PolicyStore) -> None:
    store.clock = lambda: 1_800_000_000.0
    flags = {"allow_slashes_in_identity_templates": True, "allow_wildcards_in_identity_templates": False,
             "not_a_flag": True}
    await store.put("dev", RULE, flags, cas=-1, cas_required=True, expiration=1_900_000_000.0)
    found = await store.entry("dev")
    assert found is not None
    assert found.public() == {"allow_slashes_in_identity_templates": True, "allow_wildcards_in_identity_templates": False,
                              "version": 1, "cas_required": True, "modified": "2027-01-15T08:00:00Z",
                              "expiration": "2030-03-17T17:46:40Z"}


async def test_a_write_over_an_expired_row_is_a_create() -> None:
    clock = [1_000.0]
    store = PolicyStore(InMemoryStorage(), clock=lambda: clock[0])
    await store.put("temp", RULE, cas=-1, cas_required=True, expiration=1_010.0)
    clock[0] = 1_020.0  # expired, and nothing has read it since
    await store.put("temp", RULE, cas=-1)  # no check-and-set of the expired row is asked for
    found = await store.entry("temp")
    assert found is not None and (found.version, found.cas_required, found.expiration) == (1, False, None)


async def test_an_expired_row_rewritten_meanwhile_is_kept() -> None:
    """The removal of an expired policy is a check of the stored row: a write that replaced it
    between the read and the removal (another node's) is kept, and is what the read returns."""
    clock = [1_000.0]
    storage = InMemoryStorage()
    store = PolicyStore(storage, clock=lambda: clock[0])
    await store.put("temp", RULE, expiration=1_010.0)
    expired = await storage.get("sys/policy/temp")
    await store.put("temp", RULE + "\n# fresh")
    clock[0] = 1_020.0
    real_get = storage.get

    async def stale_get(key: str) -> Any:
        return expired if key == "sys/policy/temp" else await real_get(key)

    storage.get = stale_get  # type: ignore[method-assign]  # the read saw the expired row
    found = await store.entry("temp")
    assert found is not None and found.text == RULE + "\n# fresh" and found.expiration is None
    storage.get = real_get  # type: ignore[method-assign]
    kept = await storage.get("sys/policy/temp")
    assert kept is not None and kept["policy"] == RULE + "\n# fresh"
