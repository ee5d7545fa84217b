"""Claim helpers: lookup, metadata, groups, audience, bound claims, glob.

Scenarios: docs/reference/test-scenarios.md section 1; behaviour: docs/reference/vault-api.md section 5.
"""

from __future__ import annotations

import copy
import re
from contextlib import nullcontext
from typing import Any

import pytest

from plugin import claims as cl
from plugin.errors import InvalidRequest

CLAIMS = {"a": 42.0, "b": "bar", "c": {"d": 95.0, "e": ["dog", "cat", "bird"], "f": {"g": "zebra"}}}


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("a", 42),
        ("/a", 42),
        ("b", "bar"),
        ("/c/d", 95),
        ("/c/e/1", "cat"),
        ("/c/f/g", "zebra"),
        ("nope", None),
        ("/c/f/h", None),
        ("", None),
        ("\\", None),
        ("/c/e/01", None),
        ("/c/e/9", None),
        ("/b/x", None),
    ],
    ids=["a", "ptr-a", "b", "ptr-c-d", "list-index", "nested", "missing", "missing-ptr", "empty", "backslash",
         "leading-zero-index", "index-out-of-range", "through-string"],
)
def test_get_claim(name: str, want: Any) -> None:
    got = cl.get_claim(CLAIMS, name)
    assert got == want
    if isinstance(want, int):
        assert isinstance(got, int)  # floats become (truncated) ints, like json.Number


def test_get_claim_truncates_floats_and_pointer_escapes() -> None:
    assert cl.get_claim({"x": 1.9}, "x") == 1
    assert cl.get_claim({"https": {"//vault/groups": {"testing": ["a"]}}}, "/https/~1~1vault~1groups/testing") == ["a"]
    assert cl.get_claim({"a~b": 1}, "/a~0b") == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [("a", 43), ("/a", 43), ("b", "foo"), ("/c/d", 96), ("/c/e/1", "dog"), ("/c/f/g", "elephant")],
    ids=["a", "ptr-a", "b", "ptr-c-d", "list-element", "nested"],
)
def test_set_claim(name: str, value: Any) -> None:
    claims = copy.deepcopy(CLAIMS)
    assert cl.set_claim(claims, name, value)
    assert cl.get_claim(claims, name) == value


def test_set_claim_missing_parent() -> None:
    assert not cl.set_claim(copy.deepcopy(CLAIMS), "/x/y", 1)


@pytest.mark.parametrize(
    ("claims", "mappings", "expect"),
    [
        (None, None, nullcontext({})),
        ({"data1": "foo", "data2": "bar"}, {"data1": "val1", "data2": "val2"}, nullcontext({"val1": "foo", "val2": "bar"})),
        ({"data1": "foo", "data2": "bar"}, {"data1": "val1", "data3": "val2"}, nullcontext({"val1": "foo"})),
        ({"data1": "foo", "data2": "bar"}, {"data8": "val1", "data9": "val2"}, nullcontext({})),
        ({"data1": "foo", "data2": {"child": "bar"}}, {"data1": "val1", "/data2/child": "val2"},
         nullcontext({"val1": "foo", "val2": "bar"})),
        # docs/vault-differences.md row 3: numbers and booleans are stringified (Vault errors here).
        ({"data1": 42, "data2": True, "data3": 1.5, "data4": 7.0}, {"data1": "n", "data2": "b", "data3": "f", "data4": "i"},
         nullcontext({"n": "42", "b": "true", "f": "1.5", "i": "7"})),
        ({"data1": ["a"]}, {"data1": "val1"}, pytest.raises(InvalidRequest, match="error converting claim 'data1' to string")),
        ({"data1": {"x": 1}}, {"data1": "val1"}, pytest.raises(InvalidRequest, match="error converting claim 'data1' to string")),
    ],
    ids=["empty", "full-match", "partial-match", "no-match", "nested", "scalars-stringified", "list", "object"],
)
def test_extract_metadata(claims: Any, mappings: Any, expect: Any) -> None:
    with expect as want:
        assert cl.extract_metadata(claims or {}, mappings) == want


@pytest.mark.parametrize(
    ("claims", "expect"),
    [
        ({"groups": ["a", "b", 3, True]}, nullcontext({"g": "a,b,3,true"})),
        ({"groups": "solo"}, nullcontext({"g": "solo"})),
        ({"groups": []}, nullcontext({"g": ""})),
        ({}, nullcontext({})),
        ({"groups": [["x"]]}, pytest.raises(InvalidRequest, match="to string list")),
    ],
    ids=["list-joined", "scalar", "empty-list", "absent-skipped", "nested-list"],
)
def test_extract_list_metadata(claims: dict[str, Any], expect: Any) -> None:
    with expect as want:
        assert cl.extract_list_metadata(claims, {"groups": "g"}) == want


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        (["foo", "bar"], nullcontext(["foo", "bar"])),
        ("just_a_string", nullcontext(["just_a_string"])),
        (["a", "", "b"], nullcontext(["a", "b"])),
        ([], nullcontext([])),
        ([1], pytest.raises(InvalidRequest, match="value 1 in groups claim could not be parsed as string")),
        (True, pytest.raises(InvalidRequest, match="value true in groups claim")),
        ({"a": 1}, pytest.raises(InvalidRequest, match='"groups" claim could not be converted to string list')),
        ([["a"]], pytest.raises(InvalidRequest, match="could not be parsed as string")),
    ],
    ids=["list", "string", "empties-skipped", "empty", "number-element", "bool", "object", "nested"],
)
def test_get_groups(value: Any, expect: Any) -> None:
    with expect as want:
        assert cl.get_groups({"groups": value}, "groups") == want


def test_get_groups_missing() -> None:
    with pytest.raises(InvalidRequest, match='failed to fetch groups: "groups" claim not found in token'):
        cl.get_groups({}, "groups")


@pytest.mark.parametrize(
    ("claims", "name", "pointer", "expect"),
    [
        ({"email": "a@b"}, "email", False, nullcontext("a@b")),
        ({"/weird": "x"}, "/weird", False, nullcontext("x")),
        ({"n": {"u": "x"}}, "/n/u", True, nullcontext("x")),
        ({"n": {"u": "x"}}, "/n/u", False, pytest.raises(InvalidRequest, match='claim "/n/u" not found in token')),
        ({}, "email", False, pytest.raises(InvalidRequest, match='claim "email" not found in token')),
        ({"email": 42}, "email", False, pytest.raises(InvalidRequest, match='claim "email" could not be converted to string')),
        ({"email": ["a"]}, "email", False, pytest.raises(InvalidRequest, match="could not be converted to string")),
        ({"email": ""}, "email", False, pytest.raises(InvalidRequest, match='claim "email" is empty')),
    ],
    ids=["plain", "literal-slash-key", "pointer", "pointer-off", "missing", "number", "list", "empty"],
)
def test_get_user_claim(claims: dict[str, Any], name: str, pointer: bool, expect: Any) -> None:
    with expect as want:
        assert cl.get_user_claim(claims, name, pointer) == want


@pytest.mark.parametrize(
    ("bound", "aud", "ok", "match"),
    [
        (["a"], ["a"], True, ""),
        (["a"], ["b"], False, "does not match any expected audience"),
        (["a"], [""], False, "does not match"),
        ([], ["a"], False, "audience claim found in JWT but no audiences bound to the role"),
        ([], "a", False, "audience claim found in JWT but no audiences bound to the role"),
        (None, None, True, ""),
        ([], "", True, ""),
        ([], [], True, ""),
        (["a", "b"], ["a"], True, ""),
        (["a", "b"], ["b"], True, ""),
        (["a", "b"], ["a", "b", "c"], True, ""),
        (["a", "b"], ["c", "d"], False, r'token has \["c", "d"\], role expects one of \["a", "b"\]'),
        (["a"], "a", True, ""),
        (["a"], None, False, "does not match"),
        (["a"], [], False, "does not match"),
        (["https://x/"], "https://x", False, "does not match"),
        (["vault"], "VAULT", False, "does not match"),
        (["vault"], [1], False, "must be a string or a list of strings"),
        (["vault"], [["vault"]], False, "must be a string or a list of strings"),
        (["vault"], {"vault": 1}, False, "must be a string or a list of strings"),
    ],
    ids=["match", "mismatch", "empty-aud", "unbound-list-cve", "unbound-string-cve", "none", "unbound-empty-string",
         "unbound-empty-list", "first-of-two", "second-of-two", "superset", "disjoint", "string-aud", "absent-aud",
         "empty-list-aud", "trailing-slash", "case", "number", "nested-list", "object"],
)
def test_audience(bound: Any, aud: Any, ok: bool, match: str) -> None:
    err = _audience_refusal(bound, aud)
    if ok:
        assert err is None
    else:
        assert err is not None
        assert re.search(match, err.detail)  # explain and the server log: the full account


def _audience_refusal(bound: Any, aud: Any, *, glob: bool = False) -> InvalidRequest | None:
    try:
        cl.check_audience(bound, aud, glob=glob)
    except InvalidRequest as exc:
        return exc
    return None


def test_audience_glob() -> None:
    assert _audience_refusal(["spiffe-*"], "spiffe-api", glob=True) is None
    assert _audience_refusal(["spiffe-*"], "other", glob=True) is not None
    assert _audience_refusal(["spiffe-*"], "spiffe-api", glob=False) is not None


def test_audience_message_keeps_the_bound_audiences_out() -> None:
    err = _audience_refusal(["aud-secret-x", "team-*-y"], ["public"], glob=True)
    assert err is not None
    assert err.messages == [
        "error validating token: invalid audience (aud) claim: audience claim does not match any expected "
        'audience: token has ["public"]'
    ]
    assert err.expected == ', role expects one of ["aud-secret-x", "team-*-y"]'


OK = None
BOUND_CASES = [
    ("string", {"foo": "a", "bar": "b"}, {"foo": "a", "bar": "b"}, OK),
    ("string", {"foo": [42]}, {"foo": [42]}, OK),
    ("string", {"email_verified": [False]}, {"email_verified": [False]}, OK),
    ("string", {"foo": "a"}, {"foo": ["a", "b"]}, OK),
    ("string", {"foo": ["a", "b", "c"]}, {"foo": ["c", "d"]}, OK),
    ("string", {"foo": 123}, {"foo": 123.0}, OK),
    ("string", {"foo": 456}, {"foo": 123.0}, 'claim "foo" is 123.0, role expects one of \\[456\\]'),
    # numbers compare by value, exactly (row 81; Vault cuts the token's to an integer and compares
    # the role's by its JSON text)
    ("string", {"foo": 1}, {"foo": 1.9}, 'claim "foo" is 1.9, role expects one of \\[1\\]'),
    ("string", {"foo": 1.5}, {"foo": 1.5}, OK),
    ("string", {"foo": 1.0}, {"foo": 1}, OK),
    ("string", {"foo": [1.5, 2]}, {"foo": 1}, "role expects one of"),
    ("string", {"foo": 10000000000000000}, {"foo": 10000000000000001}, "role expects one of"),
    ("string", {"/a/0": 2}, {"a": [2.5]}, 'claim "/a/0" is 2.5'),
    ("string", {"foo": "c"}, {"foo": ["a", "b"]}, 'claim "foo" is \\["a", "b"\\], role expects one of \\["c"\\]'),
    ("string", {"foo": ["a", "b", "c"]}, {"foo": ["d", "e"]}, "role expects one of"),
    ("string", {"foo": "a", "bar": "b"}, {"foo": "a", "bar": "b", "color": "green"}, OK),
    ("string", {"foo": "a", "bar": "b"}, {"foo": "a", "bar": "wrong"}, 'claim "bar" is "wrong", role expects one of \\["b"\\]'),
    ("string", {"foo": "a", "bar": "b"}, {"foo": "a"}, 'claim "bar" is missing'),
    ("string", {"foo": "a", "/bar/baz/1": "y"}, {"foo": "a", "bar": {"baz": ["x", "y", "z"]}}, OK),
    ("string", {"/bar/baz/1": "q"}, {"bar": {"baz": ["x", "y", "z"]}}, "role expects one of"),
    ("string", {"/bar/XXX/1243": "q"}, {"bar": {"baz": ["x", "y", "z"]}}, 'claim "/bar/XXX/1243" is missing'),
    ("string", {"email": ["a", "b", "c"], "color": "green"}, {"email": "c", "color": "green"}, OK),
    ("string", {"email": ["a", "b", "c"], "color": "green"}, {"email": "d", "color": "green"}, "role expects one of"),
    ("string", {"email": {"x": 1}}, {"email": "d"}, "bound claim is not a string, bool, int or list"),
    ("string", {"email_verified": True}, {"email_verified": "true"}, "role expects one of"),
    ("string", {"pnum": "123"}, {"pnum": 123}, "role expects one of"),
    ("string", {"email": "d"}, {"email": {"x": 1}}, "received claim is not a string, bool, int or list"),
    ("glob", {"email": "4*"}, {"email": "42"}, OK),
    ("glob", {"email": "4*"}, {"email": 42}, "role expects one of"),
    ("glob", {"email": "4*"}, {"email": "d42"}, "role expects one of"),
    ("glob", {"email": "*2"}, {"email": "42x"}, "role expects one of"),
    ("glob", {"email": ["4*d", "42*"]}, {"email": "42x"}, OK),
    ("glob", {"email": ["4*d", "42*"]}, {"email": "43x"}, "role expects one of"),
    ("glob", {"email": 42}, {"email": "42x"}, "received claim is not a glob string"),
    ("glob", {"email": "*@*.com"}, {"email": "test@example.com"}, OK),
    ("glob", {"email": "*"}, {}, 'claim "email" is missing'),
    ("", {"email": "r*@*.com"}, {"email": "test@example.com"}, "role expects one of"),
    ("string", {"ref": ["release/*"]}, {"ref": "main"}, 'claim "ref" is "main", role expects one of \\["release/\\*"\\]'),
]


def _check_bound_claims(bound: dict[str, Any], claims: dict[str, Any], glob: bool) -> None:
    for name, expected in bound.items():
        cl.check_bound_claim(claims, name, expected, glob=glob)


@pytest.mark.parametrize(("kind", "bound", "claims", "error"), BOUND_CASES, ids=[f"{i}-{c[0] or 'empty'}" for i, c in enumerate(BOUND_CASES)])
def test_check_bound_claim(kind: str, bound: dict[str, Any], claims: dict[str, Any], error: str | None) -> None:
    if error is None:
        _check_bound_claims(bound, claims, kind == "glob")
    else:
        with pytest.raises(InvalidRequest) as info:
            _check_bound_claims(bound, claims, kind == "glob")
        # The full account (explain, server log) matches; the message alone never says what the role expects.
        assert re.search("^error validating claims: .*" + error, info.value.detail)
        assert "role expects" not in info.value.messages[0]


@pytest.mark.parametrize(
    ("bound", "claims", "glob", "message", "expected"),
    [
        ({"ref": ["secret-branch-x", "rel/*-y"]}, {"ref": "main"}, True,
         'error validating claims: claim "ref" is "main"', ', role expects one of ["secret-branch-x", "rel/*-y"]'),
        ({"env": {"secret-env-x": 1}}, {"env": "dev"}, False,
         "error validating claims: bound claim is not a string, bool, int or list", ': {"secret-env-x": 1}'),
        ({"env": 4242}, {"env": "dev"}, True, "error validating claims: received claim is not a glob string", ": 4242"),
    ],
    ids=["mismatch", "bound-object", "glob-not-string"],
)
def test_bound_claim_message_keeps_the_role_values_out(
    bound: dict[str, Any], claims: dict[str, Any], glob: bool, message: str, expected: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        _check_bound_claims(bound, claims, glob)
    assert info.value.messages == [message]
    assert info.value.expected == expected
    assert info.value.detail == message + expected


@pytest.mark.parametrize(
    ("value", "want"),
    [(["green", 42], ["green", 42]), (["green"], ["green"]), ([], []), ("green", ["green"]), ("", [""]),
     (42, [42]), (True, [True]), (None, None), ({"a": 1}, None)],
    ids=["mixed-list", "list", "empty-list", "string", "empty-string", "number", "bool", "none", "object"],
)
def test_normalize_list(value: Any, want: Any) -> None:
    assert cl.normalize_list(value) == want


@pytest.mark.parametrize(
    ("pattern", "subject", "want"),
    [
        ("", "", True), ("", "a", False), ("*", "", True), ("*", "anything", True), ("abc", "abc", True),
        ("abc", "abcd", False), ("a*", "abc", True), ("*c", "abc", True), ("*b*", "abc", True), ("a*c", "ac", True),
        ("a*c", "abd", False), ("a?c", "abc", False), ("a?c", "a?c", True), ("[ab]", "a", False), ("A*", "abc", False),
        ("spiffe://example.org/ns/*/sa/*", "spiffe://example.org/ns/prod/sa/api", True),
        ("spiffe://example.org/ns/*/sa/*", "spiffe://evil.org/ns/prod/sa/api", False),
        ("a*b*c", "aXbYc", True), ("a*b*c", "aXcYb", False), ("a*b*b", "ab", False), ("*x*x*", "x", False),
        ("*x*x*", "axbxc", True),
    ],
    ids=lambda v: repr(v),
)
def test_glob_match(pattern: str, subject: str, want: bool) -> None:
    assert cl.glob_match(pattern, subject) is want


def test_show_escapes_and_truncates() -> None:
    assert cl.show("a\r\nb") == '"a\\r\\nb"'
    assert cl.show("x" * 500).endswith("...")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("x" * 118, '"' + "x" * 118 + '"'),  # 120 characters: shown whole
        ("x" * 119, '"' + "x" * 119 + "..."),  # 121: cut to 120 and marked
        ("\u00e9", '"\\u00e9"'),  # ASCII only
        ({"b": 1, "a": [2, None]}, '{"a": [2, null], "b": 1}'),  # keys sorted
        (b"raw", "'bytes'"),  # not JSON: its type's name
        ({1, 2}, "'set'"),
    ],
    ids=["120 chars", "121 chars", "non-ASCII", "object", "bytes", "set"],
)
def test_show(value: Any, shown: str) -> None:
    assert cl.show(value) == shown


@pytest.mark.parametrize(
    ("name", "claims_after"),
    [
        ("/l/2", {"l": [1, 2], "s": "x", "n": None}),  # one past the end
        ("/l/x", {"l": [1, 2], "s": "x", "n": None}),  # not an index
        ("/l/-1", {"l": [1, 2], "s": "x", "n": None}),
        ("/s/0", {"l": [1, 2], "s": "x", "n": None}),  # into a string
        ("/n/a", {"l": [1, 2], "s": "x", "n": None}),  # into null
        ("/m/a", {"l": [1, 2], "s": "x", "n": None}),  # absent parent
    ],
)
def test_set_claim_refused(name: str, claims_after: dict[str, Any]) -> None:
    claims = {"l": [1, 2], "s": "x", "n": None}
    assert cl.set_claim(claims, name, 9) is False
    assert claims == claims_after


def test_set_claim_list_edges() -> None:
    claims: dict[str, Any] = {"l": [1, 2]}
    assert cl.set_claim(claims, "/l/0", "a") is True and cl.set_claim(claims, "/l/1", "b") is True
    assert claims == {"l": ["a", "b"]}


#: Each refusal's whole message (anyone sees it: no role value in it).
REFUSALS: list[tuple[str, Any, str]] = [
    ("user claim a number", lambda: cl.get_user_claim({"email": 42}, "email", False),
     'claim "email" could not be converted to string (it is 42)'),
    ("user claim a list", lambda: cl.get_user_claim({"email": ["a"]}, "email", False),
     'claim "email" could not be converted to string (it is ["a"])'),
    ("user claim empty", lambda: cl.get_user_claim({"email": ""}, "email", False), 'claim "email" is empty'),
    ("user claim missing", lambda: cl.get_user_claim({}, "/e", True), 'claim "/e" not found in token'),
    ("mapping an object", lambda: cl.extract_metadata({"d": {"x": 1}}, {"d": "m"}),
     "error converting claim 'd' to string (it is {\"x\": 1})"),
    ("list mapping a nested list", lambda: cl.extract_list_metadata({"g": ["a", ["b"]]}, {"g": "m"}),
     "error converting claim 'g' to string list (it is [\"a\", [\"b\"]])"),
    ("groups an object", lambda: cl.get_groups({"g": {"a": 1}}, "g"), '"g" claim could not be converted to string list'),
    ("groups holding a number", lambda: cl.get_groups({"g": ["a", 1]}, "g"),
     "value 1 in groups claim could not be parsed as string"),
    ("groups missing", lambda: cl.get_groups({}, "/g/0"), 'failed to fetch groups: "/g/0" claim not found in token'),
]


@pytest.mark.parametrize(("call", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusal_messages_in_full(call: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        call()
    assert info.value.messages == [message] and info.value.expected == ""


@pytest.mark.parametrize(
    ("claims", "metadata", "lists"),
    [
        # an absent source is skipped, and the mappings after it still apply
        ({"b": "x", "l": ["y"]}, {"b": "x"}, {"l": "y"}),
        # numbers keep their fraction (mappings do not truncate as bound claims do)
        ({"b": 1.5, "l": 2.5}, {"b": "1.5"}, {"l": "2.5"}),
        ({"b": 3.0, "l": [1.5, 2.0, 7]}, {"b": "3"}, {"l": "1.5,2,7"}),
    ],
    ids=["absent first", "fractions", "whole floats"],
)
def test_mappings_after_an_absent_source(claims: dict[str, Any], metadata: dict[str, str],
                                         lists: dict[str, str]) -> None:
    assert cl.extract_metadata(claims, {"absent": "a", "/gone/0": "g", "b": "b"}) == metadata
    assert cl.extract_list_metadata(claims, {"absent": "a", "/gone/0": "g", "l": "l"}) == lists
