"""ACL policies at their edges (server.acl: policies, hcl): every legacy ``policy`` value and
every unsupported key, glob matching and priority where one character decides, the LIST
fallback to the path without its trailing slash, the policy store's layout and its one-second
cache across nodes, HCL nesting at its exact limit, and each parser and validator message.
Found by mutation testing (docs/mutation.md)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import structlog

from plugin.errors import InvalidRequest
from plugin.storage import InMemoryStorage
from server.acl.hcl import HCLError, parse
from server.acl.policies import (
    ACL,
    PathRule,
    PolicyError,
    PolicyStore,
    canonical_policy_name,
    parse_policy,
    resultant,
)
from server.acl.templating import KNOWN, IdentityView


def acl(text: str) -> ACL:
    return ACL(parse_policy(text))


def rules(*pairs: tuple[str, set[str]]) -> ACL:
    return ACL(PathRule(p, frozenset(c)) for p, c in pairs)


# -- policy text ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "caps"),
    [
        ("deny", ["deny"]),
        ("read", ["list", "read"]),
        ("write", ["create", "delete", "list", "read", "update"]),
        ("sudo", ["create", "delete", "list", "read", "sudo", "update"]),
        ("READ", ["list", "read"]),
    ],
)
def test_legacy_policy_values(value: str, caps: list[str]) -> None:
    assert acl(f'path "a" {{ policy = "{value}" }}').capabilities("a") == caps


def test_capabilities_are_read_case_insensitively() -> None:
    """OpenBao refuses ``"READ"``; authmount reads it as ``read`` (docs/vault-differences.md row 48)."""
    assert acl('path "a" { capabilities = ["READ", " List "] }').capabilities("a") == ["list", "read"]


def test_patch_and_comments_are_accepted() -> None:
    """``patch`` loads (no authmount path uses it); a ``comment`` key is skipped, wherever it is."""
    a = acl('path "a" { comment = "why" capabilities = ["read", "patch"] }')
    assert a.capabilities("a") == ["patch", "read"]
    assert acl('path "a" { capabilities = ["read"] comment = "why" }').capabilities("a") == ["read"]


UNSUPPORTED = ["mfa_methods", "control_group", "subscribe_event_types",
               "pagination_limit", "expiration", "list_scan_response_keys_filter_path"]


@pytest.mark.parametrize("key", UNSUPPORTED)
def test_unsupported_keys_are_refused_by_name(key: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(f'path "a" {{ capabilities = ["read"] {key} = 1 }}')
    assert str(exc.value) == f'path "a": "{key}" is not supported'


POLICY_ERRORS: list[tuple[str, str, str]] = [
    ("unbalanced template", 'path "a/{{identity.entity.id}" { capabilities = ["read"] }',
     'path "a/{{identity.entity.id}": failed to validate policy templating: unbalanced templating characters'),
    ("closing braces first", 'path "a/}}{{identity.entity.id}}" { capabilities = ["read"] }',
     'path "a/}}{{identity.entity.id}}": failed to validate policy templating: unbalanced templating characters'),
    ("unknown template", 'path "a/{{identity.entity.idd}}" { capabilities = ["read"] }',
     'path "a/{{identity.entity.idd}}": failed to validate policy templating: unknown template "identity.entity.idd" '
     '(known: identity.entity.id, identity.entity.name, identity.entity.metadata.<key>, '
     'identity.entity.aliases.<mount accessor>.id|name|metadata.<key>|custom_metadata.<key>, '
     'identity.groups.ids.<group id>.id|name|metadata.<key>, identity.groups.names.<group name>.id|name|metadata.<key>)'),
    ("a whole map", 'path "a/{{identity.entity.metadata}}" { capabilities = ["read"] }',
     'path "a/{{identity.entity.metadata}}": failed to validate policy templating: unknown template '
     '"identity.entity.metadata" (known: ' + ", ".join(KNOWN) + ")"),
    ("time template", 'path "a/{{time.now}}" { capabilities = ["read"] }',
     'path "a/{{time.now}}": failed to validate policy templating: the template "time.now" is not supported: '
     'only identity templates are'),
    ("glob beside a template", 'path "a/{{identity.entity.id}}*/b" { capabilities = ["read"] }',
     'path "a/{{identity.entity.id}}*/b": the "*" glob is only allowed at the end of a path'),
    ("plus glued to a template", 'path "a/+{{identity.entity.id}}" { capabilities = ["read"] }',
     'path "a/+{{identity.entity.id}}": the "+" wildcard must be a whole path segment'),
    ("plus star", 'path "a/+*" { capabilities = ["read"] }', "path \"a/+*\": invalid use of wildcards ('+*' is forbidden)"),
    ("star inside", 'path "a*/b" { capabilities = ["read"] }', 'path "a*/b": the "*" glob is only allowed at the end of a path'),
    ("partial plus", 'path "a/b+c" { capabilities = ["read"] }',
     'path "a/b+c": the "+" wildcard must be a whole path segment'),
    ("partial plus before a star", 'path "a/+b*" { capabilities = ["read"] }',
     'path "a/+b*": the "+" wildcard must be a whole path segment'),
    ("partial plus in a prefix", 'path "a/b+c/*" { capabilities = ["read"] }',
     'path "a/b+c/*": the "+" wildcard must be a whole path segment'),
    ("path a number", '{"path": {"a": 5}}', 'path "a": expected a block'),
    ("legacy value unknown", 'path "a" { policy = "admin" }', 'path "a": invalid policy "admin"'),
    ("legacy value a number", 'path "a" { policy = 5 }', 'path "a": invalid policy "5"'),
    ("capabilities a string", 'path "a" { capabilities = "read" }', 'path "a": capabilities must be a list of strings'),
    ("capability unknown", 'path "a" { capabilities = ["fly"] }', 'path "a": invalid capability "fly"'),
    ("key unknown", 'path "a" { colour = "red" }', 'path "a": invalid key "colour"'),
    ("capabilities misspelt", 'path "a" { capabilites = ["read"] }',
     'path "a": invalid key "capabilites" (did you mean capabilities?)'),
    ("policy misspelt", 'path "a" { polcy = "read" }', 'path "a": invalid key "polcy" (did you mean policy?)'),
    ("top-level key unknown", 'paths "a" { capabilities = [] }', 'invalid key "paths" (did you mean path?)'),
    ("path not a block", '{"path": 5}', '"path" must be a block'),
    ("HCL error", 'path "a" {', "expected a key but found end of input on line 1"),
    # OpenBao 2.7.2 stores these and ignores what follows (docs/vault-differences.md row 55): a
    # rule after them, a deny too, would never apply
    ("JSON then HCL", '{"path": {"g": {"capabilities": ["read"]}}}\npath "g" { capabilities = ["deny"] }',
     "invalid JSON: text follows the policy's JSON object (line 2 column 1): a policy is one JSON object, or HCL"),
    ("two JSON objects", '{"path": {"g": {"capabilities": ["read"]}}} {"path": {"g": {"capabilities": ["deny"]}}}',
     "invalid JSON: text follows the policy's JSON object (line 1 column 45): a policy is one JSON object, or HCL"),
    ("a comment eats a path's label", 'path "h" { capabilities = ["read"] }\npath//"a/b" { capabilities = ["read"] }\n'
     'path "e" { capabilities = ["deny"] }', "expected '=' or '{' after 'path' but found 'path' on line 3"),
    ("quotes inside a label", 'path ""x"/*" { capabilities = ["update"] }',
     "expected '=' or '{' after 'path' but found 'x' on line 1"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in POLICY_ERRORS], ids=[c[0] for c in POLICY_ERRORS])
def test_policy_errors_name_the_culprit(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(text)
    assert str(exc.value) == message


def test_policy_text_must_be_a_string() -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(5)  # type: ignore[arg-type]
    assert str(exc.value) == "policy must be a string"
    with pytest.raises(PolicyError) as exc:
        parse_policy('{"path": {"a": [{"capabilities": ["read"]}, 7]}}')
    assert str(exc.value) == 'path "a": expected a block'


def test_a_name_key_is_ignored_wherever_it_is() -> None:
    doc = {"name": "dev", "path": {"a": {"capabilities": ["read"]}}}
    assert acl(json.dumps(doc)).capabilities("a") == ["read"]
    assert acl(json.dumps({"path": doc["path"], "name": "dev"})).capabilities("a") == ["read"]


def test_leading_slashes_are_dropped_only() -> None:
    a = acl('path "/Xa/b" { capabilities = ["read"] }\npath "XX/*" { capabilities = ["list"] }')
    assert a.allows("Xa/b", "read") and a.allows("/Xa/b", "read")
    assert a.capabilities("Xa/b") == ["read"] and a.capabilities("/Xa/b") == ["read"]
    assert a.allows("XX/y", "list") and not a.allows("a/b", "read")


# -- matching -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/bc", False),
        ("a/+/c*", "a/x/cd", True),
        ("a/+/c*", "a/x/d", False),
        ("a/+/c*", "ab/x/cd", False),
        ("a/+/c*", "a/x", False),
        ("a/+/c", "a/x/c/d", False),
        ("+/b", "x/b", True),
    ],
)
def test_path_rule_matches(pattern: str, path: str, matches: bool) -> None:
    assert PathRule(pattern, frozenset({"read"})).matches(path) is matches


def test_a_later_first_wildcard_wins_even_with_an_x() -> None:
    a = rules(("X/*", {"read"}), ("+/b", {"update"}))
    assert a.capabilities("X/b") == ["read"]


def test_list_falls_back_to_the_path_without_its_slash() -> None:
    a = rules(("dirX", {"list"}), ("a/b", {"read", "list"}), ("a/b/", {"update"}))
    assert a.allows("dirX/", "list")
    assert not a.allows("dirX/", "read")
    assert a.allows("a/b/", "update") and not a.allows("a/b/", "list")  # its own rule first
    assert a.capabilities("dirX/") == ["list"]



@pytest.mark.parametrize(
    ("policy", "allowed"),
    [
        ((("x/", {"list"}), ("x", {"read"})), True),  # the exact rule of the path as asked first
        ((("x", {"update"}), ("x/*", {"list"})), False),  # then the exact rule without the slash
        ((("x/*", {"list"}),), True),  # then the globs on the path as asked
        ((("a/+", {"list"}),), True),  # then the globs on the path without its slash
        ((("a/+/", {"read"}), ("a/+", {"list"})), False),  # a glob of the path as asked wins
        ((("a/b/c", {"list"}),), False),
    ],
    ids=["exact-slash", "exact-trimmed-before-glob", "glob", "glob-trimmed", "glob-before-glob-trimmed", "none"],
)
def test_a_list_finds_its_rule_in_vaults_order(policy: tuple[tuple[str, set[str]], ...], allowed: bool) -> None:
    """OpenBao's ``AllowOperation`` for a LIST of ``x/`` (``a/b/``): the exact rule, the exact
    rule without the slash, the globs, the globs of the path without the slash. The path
    without the slash was only tried as an exact rule (LIST sys/policies/acl with a policy
    on sys/policies/acl/* was refused: docs/vault-differences.md names no such difference)."""
    a = rules(*policy)
    assert a.allows("a/b/" if policy[0][0].startswith("a/") else "x/", "list") is allowed


@pytest.mark.parametrize(("path", "allowed"), [
    ("foo/", False), ("foo/metadata/", True), ("foo/metadata/test/", True), ("foo/metadata/private/", False),
    ("foo/metadata/private/internal/", False), ("foo/metadata/private/granted/", True),
    ("foo/metadata/private/granted/test/", True),
])
def test_a_deny_glob_below_a_list_grant_holds_for_the_directory_itself(path: str, allowed: bool) -> None:
    """OpenBao's GHSA-xp3c-3jw3-4vcr (fixed in 2.6): a LIST of ``foo/metadata/private/`` took
    the grant of ``foo/metadata/*`` found for the path without its slash, past the deny of
    ``foo/metadata/private/*``. authmount tries the globs of the path as asked first (OpenBao's
    test table, ``TestACL_ListScanWildcardDeny``)."""
    a = acl('path "foo/metadata/*" { capabilities = ["list"] }\n'
            'path "foo/metadata/private/*" { capabilities = ["deny"] }\n'
            'path "foo/metadata/private/granted/*" { capabilities = ["list"] }')
    assert a.allows(path, "list") is allowed


def test_a_lists_sudo_is_judged_on_the_lists_rule() -> None:
    """A LIST that needs sudo (sys/policies/acl) takes list and sudo from the one rule a LIST
    finds: an exact rule on the path without its slash grants both."""
    a = rules(("sys/policies/acl", {"list", "sudo"}))
    assert a.allows("sys/policies/acl/", "list") and a.allows("sys/policies/acl/", "sudo", listing=True)
    assert not a.allows("sys/policies/acl/", "sudo")  # not a LIST: the path as asked only

def test_capabilities_are_the_rule_a_list_finds() -> None:
    """OpenBao's ``Capabilities`` looks the path up as a LIST: for ``a/b/`` the exact rule on
    ``a/b`` comes before the glob ``a/*`` (this test expected ``list`` until a side-by-side
    fuzz of sys/capabilities-self against OpenBao 2.7.2 said ``read``)."""
    a = rules(("a/b", {"read"}), ("a/*", {"list"}))
    assert a.capabilities("a/b/") == ["read"] and a.capabilities("a/c/") == ["list"]
    assert rules(("a/b", {"read"})).capabilities("a/b/") == ["read"]
    assert rules(("c", {"read", "delete"}), ("+/", {"create"})).capabilities("c/") == ["delete", "read"]


# -- canonical names ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "message"),
    [(" dev", 'invalid policy name " dev": leading or trailing whitespace'),
     ("a/b", 'invalid policy name "a/b"'),
     ("", 'invalid policy name ""'),
     ("x" * 129, f'invalid policy name "{"x" * 129}"')],
    ids=["whitespace", "slash", "empty", "too long"],
)
def test_policy_name_refusals(name: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        canonical_policy_name(name)
    assert exc.value.messages == [message]
    assert canonical_policy_name("X" * 128) == "x" * 128


# -- the store ------------------------------------------------------------------------------------

@pytest.fixture
def store() -> PolicyStore:
    return PolicyStore(InMemoryStorage())


async def test_store_layout(store: PolicyStore) -> None:
    text = 'path "a" { capabilities = ["read"] }'
    store.clock = lambda: 1_800_000_000.5
    await store.put("Dev", text)
    assert await store.storage.get("sys/policy/dev") == {"name": "dev", "policy": text, "version": 1,
                                                         "modified": 1_800_000_000.5}
    await store.put("dev", text, cas=1, cas_required=True, expiration=1_900_000_000.0)
    assert await store.storage.get("sys/policy/dev") == {"name": "dev", "policy": text, "version": 2,
                                                         "modified": 1_800_000_000.5, "cas_required": True,
                                                         "expiration": 1_900_000_000.0}
    await store.storage.put("sys/policy/bare", {"name": "bare"})  # a row without its text
    assert await store.get("bare") == ""
    await store.storage.put("sys/policy/folder/x", {"policy": ""})  # not a policy name
    assert await store.list() == ["bare", "default", "dev", "root"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.put("root", 'path "a" {}'), 'cannot update "root" policy'),
        (lambda s: s.put("dev", " \n"), "'policy' parameter not supplied or empty"),
        (lambda s: s.put("dev", 'path "a" { capabilities = ["fly"] }'),
         'failed to parse policy: path "a": invalid capability "fly"'),
        (lambda s: s.delete("Default"), 'cannot delete default policy'),
        (lambda s: s.delete("root"), 'cannot delete "root" policy'),
    ],
    ids=["put root", "put empty", "put invalid", "delete default", "delete root"],
)
async def test_store_refusals(store: PolicyStore, call: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await call(store)
    assert exc.value.messages == [message]


async def test_a_stored_policy_that_no_longer_parses_grants_nothing_and_is_logged(store: PolicyStore) -> None:
    await store.put("good", 'path "g" { capabilities = ["read"] }')
    await store.storage.put("sys/policy/broken", {"name": "broken", "policy": 'path "b" { capabilities = ["fly"] }'})
    with structlog.testing.capture_logs() as logs:
        a = await store.acl_for(["broken", "good"])
    assert a.allows("g", "read") and not a.allows("b", "read")
    assert {"event": "stored_policy_invalid", "policy": "broken", "log_level": "error"} in logs


async def test_an_unusable_name_does_not_hide_the_others(store: PolicyStore) -> None:
    await store.put("dev", 'path "d" { capabilities = ["read"] }')
    a = await store.acl_for(["a/b", "dev"])  # "a/b" sorts first and can name no policy
    assert a.allows("d", "read")
    b = await store.acl_for(["dev", "other"])  # "dev" again, from the rule cache
    assert b.allows("d", "read")


async def test_another_nodes_policy_write_is_seen_within_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.acl.policies as policies_mod

    mono = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(policies_mod, "time", SimpleNamespace(monotonic=lambda: mono.now))
    storage = InMemoryStorage()
    here, there = PolicyStore(storage), PolicyStore(storage)
    await there.put("dev", 'path "a" { capabilities = ["read"] }')
    assert (await here.acl_for(["dev"])).allows("a", "read")
    await there.put("dev", 'path "a" { capabilities = ["deny"] }')  # this node is not told
    mono.now += 1.001
    assert not (await here.acl_for(["dev"])).allows("a", "read")


# -- HCL ------------------------------------------------------------------------------------------

NESTING = [
    ("lists", lambda n: "a = " + "[" * n + "]" * n, 32),
    ("blocks", lambda n: "a { " * n + "}" * n, 32),
    ("objects", lambda n: "a = " + "{ b = " * n + "1" + " }" * n, 15),
    ("objects in lists", lambda n: "a = " + "[{ b = " * n + "1" + " }]" * n, 10),
]


@pytest.mark.parametrize(("build", "limit"), [c[1:] for c in NESTING], ids=[c[0] for c in NESTING])
def test_hcl_nesting_limit_is_exact(build: Any, limit: int) -> None:
    assert parse(build(limit))
    with pytest.raises(HCLError) as exc:
        parse(build(limit + 1))
    assert str(exc.value) == "nesting too deep on line 1"


HCL_ERRORS: list[tuple[str, str, str]] = [
    ("a number where a key goes", "a = 1 2", "expected a key but found '2' on line 1"),
    ("a string between list items", 'a = ["x" "it\'s"]', "expected ',' or ']' but found \"it's\" on line 1"),
    ("a number between list items", "a = [1\n2]", "expected ',' or ']' but found '2' on line 2"),
    ("equals after a label", 'a "l" = 1', "expected '=' or '{' after 'a' but found '=' on line 1"),
    ("no value", "a = ", "expected a value but found end of input on line 1"),
    ("no value before a brace", "a = }", "expected a value but found '}' on line 1"),
    ("a bad escape", 'a = "\\q"', "invalid string escape on line 1"),
    ("an odd character", "a = @", "unexpected character '@' on line 1"),
    ("an open comment", "\n/* x", "unterminated comment on line 2"),
    ("an open string", 'a = "x', "unterminated string on line 1"),
    ("a heredoc", "a = <<EOF", "heredocs are not supported (line 1)"),
    ("a value then a block", "a = 1\na { }", "duplicate key 'a' on line 2"),
    ("a list then a block", "a = [1]\na { }", "duplicate key 'a' on line 2"),
    ("a list then a value", "a = [1]\na = 2", "duplicate key 'a' on line 2"),
    ("a block then a value", "a { }\na = 1", "duplicate key 'a' on line 2"),
    ("a value then a labelled block", 'a = 1\na "x" { }', "key 'a' is both a value and a block on line 2"),
    ("JSON that does not parse", "{bad",
     "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("JSON nested too deeply", '{"a":' + "[" * 100_000 + "]" * 100_000 + "}", "invalid JSON: nesting too deep"),
    # More digits than Python converts: a ValueError, which was a 500.
    ("a number of 4301 digits", "x = " + "9" * 4301, "number too long on line 1"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in HCL_ERRORS], ids=[c[0] for c in HCL_ERRORS])
def test_hcl_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(HCLError) as exc:
        parse(text)
    assert str(exc.value) == message


def test_hcl_values() -> None:
    assert parse("a: 1") == {"a": 1}
    assert parse("x = { b: 1 }") == {"x": {"b": 1}}
    values = parse("i = 1\nf = 1.5\ne = 1e3\nn = -2")
    assert [type(v) for v in values.values()] == [int, float, float, int]
    assert values == {"i": 1, "f": 1.5, "e": 1000.0, "n": -2}
    assert parse('a { b = 1 }\na { b = 2 }\na { b = 3 }') == {"a": [{"b": 1}, {"b": 2}, {"b": 3}]}


@pytest.mark.parametrize(("pairs", "mount", "seen"), [
    ([], "auth/jwt/", False),
    ([("auth/jwt/login", {"update"})], "auth/jwt/", True),  # an exact rule below the mount
    ([("auth/jwt/role/*", {"read"})], "auth/jwt/", True),  # a prefix rule below it
    ([("auth/*", {"read"})], "auth/jwt/", True),  # a rule that governs the mount's own path
    ([("auth/j*", {"read"})], "auth/jwt/", True),
    ([("auth/jwt2/*", {"read"})], "auth/jwt/", False),  # another mount's
    ([("auth/jwt/role/*", {"deny"}), ("auth/jwt/x", {"deny"})], "auth/jwt/", False),  # denials grant nothing
    ([("auth/jwt/role/*", {"deny"}), ("auth/jwt/login", {"update"})], "auth/jwt/", True),
    ([("auth/*", {"deny"}), ("auth/jwt/login", {"update"})], "auth/jwt/", True),  # Vault's walk under the mount
    ([("auth/+/login", {"update"})], "auth/jwt/", True),  # a + rule whose first segments name the mount
    ([("+/jwt/*", {"read"})], "auth/jwt/", True),
    ([("auth/+/login", {"deny"})], "auth/jwt/", False),
    ([("auth/+", {"read"})], "auth/jwt/", True),
    ([("+/jw*", {"read"})], "auth/jwt/", True),  # a prefix glob in the mount's own segment
    ([("+/ji*", {"read"})], "auth/jwt/", False),
    ([("auth/token/lookup-self", {"read"})], "auth/token/", True),
    ([("identity/entity/name/*", {"read"})], "identity/", True),
    ([("identity/entity/name/*", {"read"})], "sys/", False),
    # the mount's own path denied: only a rule below it, or a + rule naming it, shows it (compared
    # with OpenBao 2.7.2 through sys/internal/ui/mounts)
    ([("auth/jwt", {"deny"}), ("+/jwt", {"read"})], "auth/jwt/", True),
    ([("auth/jwt", {"deny"}), ("+/jw*", {"read"})], "auth/jwt/", True),
    ([("auth/jwt", {"deny"}), ("+/ji*", {"read"})], "auth/jwt/", False),
    ([("auth/jwt", {"deny"}), ("auth/+/x", {"deny"}), ("+/jwt/y", {"read"})], "auth/jwt/", True),  # past a denial
    ([("sys/*", {"read"}), ("+/jwt/y", {"read"})], "auth/jwt/", True),  # past another mount's glob
    ([("+/boX/y", {"read"})], "auth/boX/", True),
    ([("+/boX/y", {"read"})], "auth/bo/", False),
])
def test_mount_access_is_any_grant_at_or_below_the_mount(pairs: list[tuple[str, set[str]]], mount: str,
                                                         seen: bool) -> None:
    """``sys/internal/ui/mounts`` for a token: Vault's ``hasMountAccess`` (compared with
    OpenBao in ``test_ui_mounts_with_a_token_as_openbao``)."""
    assert rules(*pairs).has_mount_access(mount) is seen
    assert ACL(root=True).has_mount_access(mount)


def test_every_leading_slash_of_a_rule_path_is_dropped() -> None:
    """Row 48: ``//a/b`` is the rule of ``a/b`` here (OpenBao 2.7.2 drops one ``/`` and keeps a
    rule no request path can match, so a deny written so is never applied)."""
    denied = acl('path "//a/b" { capabilities = ["deny"] }\npath "a/*" { capabilities = ["read"] }')
    assert not denied.allows("a/b", "read") and denied.allows("a/c", "read")
    assert denied.capabilities("/a/b") == ["deny"]


def test_a_denial_beside_other_capabilities_denies() -> None:
    denied = acl('path "a" { capabilities = ["deny", "read"] }')
    assert denied.capabilities("a") == ["deny"] and not denied.allows("a", "read")


@pytest.mark.parametrize(("pairs", "path", "capability", "allowed"), [
    ([("auth/+", {"read"})], "auth/jwt", "read", True),
    ([("auth/+", {"read"})], "auth/jwt/", "read", False),  # only a LIST is judged without its slash
    ([("auth/+", {"list"})], "auth/jwt/", "list", True),
    ([("+/boX", {"list"})], "auth/boX/", "list", True),
    ([("+/boX", {"list"})], "auth/bo/", "list", False),
    # one slash only, as Vault's TrimSuffix (OpenBao 2.7.2 side by side, sys/capabilities-self)
    ([("a/b", {"list"})], "a/b//", "list", False),
    ([("a/b", {"list"})], "a/b/", "list", True),
    ([("+/+/+", {"list"})], "x/y/z//", "list", False),
    ([("+/+/+", {"list"})], "x/y//", "list", True),
    ([("+/+/+", {"list"})], "a///", "list", True),
])
def test_only_a_list_is_judged_without_its_trailing_slash(pairs: list[tuple[str, set[str]]], path: str,
                                                          capability: str, allowed: bool) -> None:
    assert rules(*pairs).allows(path, capability) is allowed


def test_the_resultant_acl_as_openbao() -> None:
    """``sys/internal/ui/resultant-acl`` of this policy, as OpenBao 2.7.2 answered it: a
    denial beside other capabilities is a denial, capabilities in its bitmap's order, globs
    ending in ``*`` without it, no ``+`` path; a root token's is ``{"root": true}``."""
    text = """path "a" { capabilities = ["deny", "read"] }
path "b" { capabilities = ["patch", "sudo", "delete", "create", "read", "update", "list"] }
path "c/*" { capabilities = ["read"] }
path "auth/+/role/*" { capabilities = ["read"] }
path "auth/jwt/+" { capabilities = ["read"] }
path "sys/internal/ui/resultant-acl" { capabilities = ["read"] }"""
    assert resultant(acl(text)) == {
        "exact_paths": {"a": {"capabilities": ["deny"]},
                        "b": {"capabilities": ["create", "delete", "list", "read", "sudo", "update", "patch"]},
                        "sys/internal/ui/resultant-acl": {"capabilities": ["read"]}},
        "glob_paths": {"c/": {"capabilities": ["read"]}}, "root": False}
    assert resultant(ACL(root=True)) == {"root": True}


class _Counting(InMemoryStorage):
    """Counts the reads of policy rows."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, key: str) -> Any:
        self.reads += key.startswith("sys/policy/")
        return await super().get(key)


async def test_policies_and_acls_are_read_once_within_the_cache_ttl() -> None:
    """A token's ACL is built once per set of policy names, and each policy read once, until
    ``cache_ttl`` has passed or a policy is written."""
    storage = _Counting()
    store = PolicyStore(storage, cache_ttl=60)
    await store.put("a", 'path "a" { capabilities = ["read"] }')
    await store.put("b", 'path "b" { capabilities = ["read"] }')
    storage.reads = 0
    first = await store.acl_for(["a"])
    assert storage.reads == 1 and await store.acl_for(["a"]) is first and storage.reads == 1
    both = await store.acl_for(["a", "b"])  # "a" from the policy cache, "b" read
    assert storage.reads == 2 and both.allows("a", "read") and both.allows("b", "read")
    await store.put("a", 'path "a2" { capabilities = ["read"] }')
    storage.reads = 0
    assert (await store.acl_for(["a"])).allows("a2", "read") and storage.reads == 1


async def test_templates_are_filled_per_identity_and_the_filled_acl_kept() -> None:
    """The rules of a policy with identity templates: one whose value is missing, or whose
    filled path is a glob Vault refuses, is left out and the others still apply; a ``+``
    before the template bounds which paths fill them; the filled ACL is kept per identity."""
    seen: list[str] = []
    who = IdentityView(id="e-1", name="a*b", metadata=(("team", "red"),))

    async def identity(entity_id: str) -> IdentityView | None:
        seen.append(entity_id)
        return who if entity_id == "e-1" else None

    store = PolicyStore(InMemoryStorage(), cache_ttl=60)
    store.identity = identity
    await store.put("t", """path "x/{{identity.entity.metadata.nope}}" { capabilities = ["read"] }
path "y/{{identity.entity.name}}/z" { capabilities = ["read"] }
path "auth/jwt/+/{{identity.entity.metadata.team}}/*" { capabilities = ["read"] }
path "w/{{identity.entity.id}}" { capabilities = ["read"] }""", flags={"allow_wildcards_in_identity_templates": True})
    path = "auth/jwt/r/red/k"
    filled = await store.acl_for(["t"], "e-1", path)
    assert filled.allows(path, "read") and filled.allows("w/e-1", "read")
    assert not filled.allows("y/a*b/z", "read") and not filled.allows("x/", "read")
    assert await store.acl_for(["t"], "e-1", path) is filled and seen == ["e-1", "e-1"]
    plain = await store.acl_for(["t"], "e-1", "sys/auth")  # no template can match: not filled
    assert not plain.allows("w/e-1", "read") and seen == ["e-1", "e-1"]
    assert not (await store.acl_for(["t"], "", path)).allows(path, "read")  # no entity
