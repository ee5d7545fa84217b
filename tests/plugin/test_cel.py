"""CEL roles (OpenBao's ``cel/role`` and ``cel/login``): programs compiled once at role write,
evaluated within a step budget, a CPU limit and a value-size limit; hostile programs and
hostile tokens are 400s naming why (docs/vault-differences.md row 32)."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest

from plugin.cel import COST_LIMIT, MAX_VARIABLES, CelProgram, compile_program, to_python
from plugin.errors import InvalidRequest, PluginError
from plugin.framework import Auth, Operation, Request
from plugin.path_cel import cel_auth
from tests.plugin.fakes import Harness
from tests.plugin.keyfactory import ec_key, make_token

KEY = ec_key()
CLAIMS: dict[str, Any] = {
    "sub": "ci", "ref": "v1.2.0", "groups": ["a", "b", "c"], "team": "payments", "n": list(range(300)),
    "s": "x" * 20000, "nested": {"k": "v"},
}


def raises(match: str) -> AbstractContextManager[Any]:
    return pytest.raises(InvalidRequest, match=match)


def evaluate(expression: str, variables: list[dict[str, str]] | None = None, **claims: Any) -> Any:
    program = compile_program(CelProgram.from_raw({"expression": expression, "variables": variables or []}))
    return to_python(program.evaluate({**CLAIMS, **claims}, time.time(), "update"))


@pytest.mark.parametrize(
    ("expression", "claims", "expected"),
    [
        ("claims.ref.matches('^v[0-9]+[.][0-9]+[.][0-9]+$')", {}, nullcontext(True)),
        ("claims.ref.matches('^v[0-9]+[.][0-9]+[.][0-9]+$')", {"ref": "v1.2.0-rc.2"}, nullcontext(False)),
        ("!claims.ref.startsWith('dependabot/')", {"ref": "dependabot/npm/x"}, nullcontext(False)),
        ("'a' in claims.groups && 'b' in claims.groups", {}, nullcontext(True)),
        ("['a', 'z'].all(g, g in claims.groups)", {}, nullcontext(False)),
        ("claims.groups.exists(g, g.startsWith('c'))", {}, nullcontext(True)),
        ("has(claims.nested.k) && !has(claims.nested.q)", {}, nullcontext(True)),
        ("claims.team.upperAscii() + '-' + claims.ref.split('.').join('_')", {}, nullcontext("PAYMENTS-v1_2_0")),
        ("now > timestamp('2020-01-01T00:00:00Z') && operation == 'update'", {}, nullcontext(True)),
        ("claims.ref.matches('(a+)+$')", {"ref": "a" * 5000 + "!"}, nullcontext(False)),  # RE2: linear
        ("claims.missing == 1", {}, raises("CEL program failed: expression: no such member")),
        ("1 / 0 == 1", {}, raises("CEL program failed: expression: .*divide by zero")),
        ("1 / 0 != 1", {}, raises("CEL program failed: expression: .*divide by zero")),  # an error is no value to compare
        ("1 / 0 in [1]", {}, raises("CEL program failed: expression: .*divide by zero")),
        ("1 / 0 < 1.5", {}, raises("CEL program failed: expression: .*divide by zero")),
        ("claims.n.all(a, claims.n.all(b, claims.n.all(c, a + b + c >= 0)))", {},
         raises("CEL program failed: the program exceeded its (cost|time) limit")),
        ("claims.n.map(a, claims.n.map(b, a * b)).size() > 0", {},
         raises("CEL program failed: the program exceeded its (cost|time) limit")),
        ("size(claims.s + claims.s + claims.s + claims.s) > 0", {},
         raises("CEL program failed: the program built a value larger than 65536 elements")),
        # row 32: cel-go's checker refuses this at the role's write (OpenBao: 500); here it compares by value
        ("size(claims.groups) < 2.5", {}, nullcontext(False)),
    ],
    ids=[
        "release-tag", "rc-tag-refused", "not-dependabot", "list-has-both", "all-of", "exists", "has",
        "string-extensions", "now-and-operation", "regex-no-backtracking", "missing-claim", "divide-by-zero",
        "error-not-equal", "error-in", "error-ordered",
        "cubic-loop", "quadratic-map", "string-blowup", "int-beside-double",
    ],
)
def test_evaluate(expression: str, claims: dict[str, Any], expected: AbstractContextManager[Any]) -> None:
    started = time.thread_time()
    with expected as e:
        assert evaluate(expression, **claims) == e
    assert time.thread_time() - started < 1.0  # every refusal comes fast, whatever the program


#: cel-go's equality and ordering over dynamic values (each answer OpenBao 2.7.2's, asked side
#: by side): values of two types are unequal, not an error; numbers compare by value across
#: int and double, in lists, maps and ``in`` too; ordering across other types is an error.
HETEROGENEOUS: list[tuple[str, Any]] = [
    ('claims.l == ["a"]', True), ('claims.m == {"k": "a"}', True), ("claims.ln == [1.0, 2.0]", True),
    ('claims.s < "b"', True), ("claims.b < true", False), ("false < true", True), ('claims.n in [1.0, "x"]', True),
    ('"k" in claims.m', True), ("claims.nn == null", True), ("claims.s == null", False), ("claims.n == claims.f", True),
    ("claims.l != claims.ln", True), ('[1, "a"] == [1.0, "a"]', True), ('claims.m != {"k": 1}', True),
    ("claims.ln.exists(v, v == 2.0)", True), ('{"k": claims.n} == {"k": claims.f}', True), ("claims.s in claims.ln", False),
    ("claims.n < claims.f", False), ("claims.n <= claims.f && claims.f >= claims.n", True), ('2 in {2: "x"}', True),
    ('claims.f in {1: "x"}', True), ('claims.groups.exists(g, g == "b")', True), ("claims.mixed.exists(v, v == 2)", True),
    ('claims.mixed.all(v, v != "z")', True), ('"z" in claims.mixed', False), ("{1: 2} == {1.0: 2.0}", True),
    ('{"a": 1} == {"a": 1, "b": 2}', False), ("[[1], [2]] == [[1.0], [2.0]]", True),
    ("claims.n >= claims.f", True), ("claims.n > claims.f", False), ("2 > claims.f", True), ("[1] == [1, 2]", False),
    ('"z" in claims.m', False), ('true in {true: "x"}', True), ('false in {true: "x"}', False), ('1 in {true: "x"}', False),
    ("claims.s < claims.n", InvalidRequest), ("claims.m < claims.m", InvalidRequest), ("claims.l < claims.l", InvalidRequest),
]


@pytest.mark.parametrize(("expression", "expected"), HETEROGENEOUS, ids=[e for e, _ in HETEROGENEOUS])
def test_equality_and_ordering_as_cel_go(expression: str, expected: Any) -> None:
    claims: dict[str, Any] = {"s": "a", "n": 1, "f": 1.0, "l": ["a"], "ln": [1, 2], "m": {"k": "a"}, "b": True, "nn": None,
              "mixed": ["a", 2, True, None, {"k": 1}]}
    if expected is InvalidRequest:
        with raises("CEL program failed: expression: found no matching overload"):
            evaluate(expression, **claims)
    else:
        assert evaluate(expression, **claims) is expected


def test_variables_are_evaluated_in_order_and_doubling_is_stopped() -> None:
    assert evaluate("b", [{"name": "a", "expression": "claims.team"}, {"name": "b", "expression": "a + a"}]) == (
        "paymentspayments"
    )
    doubling = [{"name": "v0", "expression": "claims.team"}]
    doubling += [{"name": f"v{i}", "expression": f"v{i - 1} + v{i - 1}"} for i in range(1, MAX_VARIABLES)]
    with raises("the program built a value larger than"):
        evaluate(f"size(v{MAX_VARIABLES - 1}) > 0", doubling)


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ({"expression": "claims.x +"}, "cel_program: expression: invalid CEL syntax: claims.x +"),
        ({"expression": "nope == 1"}, "cel_program: expression: undeclared reference to 'nope'"),
        ({"expression": ".claims"}, "cel_program: expression: undeclared reference to '.claims'"),
        ({"expression": "claims.groups.exists(g, g == h)"}, "cel_program: expression: undeclared reference to 'h'"),
        ({"expression": "claims.x.lowerascii()"}, "cel_program: expression: undeclared reference to function 'lowerascii'"),
        ({"expression": "system('ls')"}, "cel_program: expression: undeclared reference to function 'system'"),
        ({"expression": "claims.groups.exists(1, true)"}, "cel_program: expression: exists() takes a variable name and an expression"),
        ({"expression": "pb.Auth{entity_id: 'x'}"}, "cel_program: expression: pb.Auth.entity_id is set by the server"),
        ({"expression": "pb.Auth{identity_policies: ['admin']}"}, "cel_program: expression: pb.Auth.identity_policies is set by the server"),
        ({"expression": "pb.Auth{client_token: 'x'}"}, "cel_program: expression: pb.Auth.client_token is set by the server"),
        ({"expression": "pb.Auth{nope: 1}"}, "cel_program: expression: pb.Auth has no field 'nope'"),
        ({"expression": "pb.Auth{policies: [], policies: []}"}, "cel_program: expression: a field of pb.Auth is set twice"),
        ({"expression": "pb.Secret{}"}, "cel_program: expression: unknown message type 'pb.Secret' (pb.Auth, logical.Alias, pb.LeaseOptions)"),
        ({"expression": "google.protobuf.Struct{}"}, "cel_program: expression: unknown message type 'google.protobuf.Struct' (pb.Auth, logical.Alias, "
         "pb.LeaseOptions)"),
        ({"expression": "[" + ",".join(["1"] * 1500) + "]"}, "cel_program: expression: too large (more than 4000 parse nodes)"),
        ({"expression": "1" + " + 1" * 1000}, "cel_program: expression: nested too deep (more than 300 parse levels)"),
        ({"expression": "(" * 40 + "1" + ")" * 40}, "cel_program: expression: nested too deep (more than 300 parse levels)"),
        ({"expression": "1" * 4097}, "cel_program: expression: longer than 4096 characters"),
        ({"expression": "a", "variables": [{"name": "a", "expression": "b"}, {"name": "b", "expression": "1"}]},
         "cel_program: variable 'a': undeclared reference to 'b'"),
        ({"expression": "1", "variables": [{"name": "claims", "expression": "1"}]}, "cel_program: variables[0]: invalid or reserved variable name 'claims'"),
        ({"expression": "1", "variables": [{"name": "a b", "expression": "1"}]}, "cel_program: variables[0]: invalid or reserved variable name 'a b'"),
        ({"expression": "1", "variables": [{"name": "a", "expression": "1"}] * 2}, "cel_program: variables[1]: variable 'a' is defined twice"),
        ({"expression": "1", "variables": [{"name": f"v{i}", "expression": "1"} for i in range(33)]},
         "cel_program: at most 32 variables"),
        ({"expression": ""}, "cel_program.expression cannot be empty"),
        ({"expression": "1", "extra": 1}, "failed to decode 'cel_program': unknown keys ['extra']"),
    ],
    ids=[
        "syntax", "undeclared", "leading-dot", "macro-scope", "unknown-method", "unknown-function", "macro-var",
        "entity-id", "identity-policies", "client-token", "unknown-field", "field-twice", "unknown-type",
        "struct-type", "huge-tree", "long-chain", "deep-nesting", "long", "forward-variable", "reserved-name", "bad-name",
        "duplicate-variable", "too-many-variables", "empty", "unknown-key",
    ],
)
def test_compile_refusals(program: dict[str, Any], message: str) -> None:
    started = time.thread_time()
    with pytest.raises(InvalidRequest) as info:
        compile_program(CelProgram.from_raw(program))
    assert info.value.messages == [message]
    assert time.thread_time() - started < 1.0


def _auth(expression: str, **claims: Any) -> Auth:
    from plugin.path_cel import CelRole

    program = CelProgram.from_raw({"expression": expression})
    value = compile_program(program).evaluate({**CLAIMS, **claims}, time.time(), "update")
    return cel_auth(CelRole(name="r", cel_program=program, message="not allowed here"), value)


@pytest.mark.parametrize(
    ("expression", "claims", "expected"),
    [
        ("false", {}, raises("CEL role 'r' blocked authorization: not allowed here")),
        ("'go away'", {}, raises("CEL role 'r' blocked authorization with message: go away")),
        ("true", {}, raises(r"CEL role 'r' returned true: return pb.Auth\{...\} to log in")),
        ("42", {}, raises("CEL role 'r' returned unexpected type")),
        ("pb.Auth{policies: ['team-' + claims.team]}", {"team": "*"}, raises("which is not a policy name")),
        ("pb.Auth{policies: ['team-' + claims.team]}", {"team": "a/b"}, raises("which is not a policy name")),
        ("pb.Auth{policies: [claims.team]}", {"team": "Root"}, raises("auth methods cannot create root tokens")),
        ("pb.Auth{token_policies: [claims.team]}", {"team": "root"}, raises("auth methods cannot create root tokens")),
        ("pb.Auth{policies: [1]}", {}, raises("pb.Auth.policies must be a list of strings")),
        ("pb.Auth{period: 3600}", {}, raises("pb.Auth.period is in nanoseconds")),
        ("pb.Auth{token_type: 9}", {}, raises("unknown token type")),
        ("pb.Auth{num_uses: -1}", {}, raises("num_uses must be a non-negative integer")),
        ("pb.Auth{alias: logical.Alias{name: ''}}", {}, raises("logical.Alias needs a non-empty name")),
        ("pb.Auth{metadata: {'a': 1}}", {}, raises("pb.Auth.metadata must be a map of strings to strings")),
        ("pb.Auth{bound_cidrs: ['not a cidr']}", {}, raises("error parsing address")),
    ],
    ids=[
        "false-with-message", "string", "true", "number", "star-policy", "slash-policy", "root", "root-token-policies",
        "non-string-policy", "period-in-seconds", "token-type", "num-uses", "empty-alias", "metadata-values",
        "bad-cidr",
    ],
)
def test_program_answers_refused(expression: str, claims: dict[str, Any], expected: AbstractContextManager[Any]) -> None:
    with expected:
        _auth(expression, **claims)


def test_program_answer_becomes_the_auth() -> None:
    auth = _auth(
        "pb.Auth{policies: ['team-' + claims.team], token_policies: ['base'], display_name: 'ci-bot', "
        "metadata: {'ref': claims.ref}, alias: logical.Alias{name: claims.sub, metadata: {'k': 'v'}}, "
        "group_aliases: claims.groups.map(g, logical.Alias{name: g}), period: duration('1h'), "
        "explicit_max_ttl: 7200000000000, lease_options: pb.LeaseOptions{TTL: duration('10m')}, num_uses: 3, "
        "bound_cidrs: ['10.0.0.0/8'], token_type: 1, no_default_policy: true}"
    )
    assert auth.policies == ["base", "team-payments"]
    assert (auth.display_name, auth.metadata) == ("ci-bot", {"ref": "v1.2.0", "role": "r"})
    assert auth.alias is not None and (auth.alias.name, auth.alias.metadata) == ("ci", {"k": "v"})
    assert auth.group_aliases == ["a", "b", "c"]
    assert (auth.period, auth.explicit_max_ttl, auth.ttl, auth.num_uses) == (3600, 7200, 600, 3)
    assert (auth.bound_cidrs, auth.token_type, auth.no_default_policy) == (["10.0.0.0/8"], "service", True)
    assert auth.internal_data == {"role": "r", "role_type": "cel"}


# ---------------------------------------------------------------------------
# Over the backend: role CRUD, login, explain, renewal

PROGRAM = {
    "variables": [{"name": "release", "expression": "claims.ref.matches('^v[0-9]+[.][0-9]+[.][0-9]+$')"}],
    "expression": "release ? pb.Auth{policies: ['release-' + claims.team], alias: logical.Alias{name: claims.sub}}"
                  " : false",
}


def token(h: Harness, **claims: Any) -> str:
    now = int(h.clock.now)
    return make_token({"sub": "ci", "aud": "vault", "iat": now, "exp": now + 300, "ref": "v1.2.0",
                       "team": "payments", **claims}, key=KEY)


@pytest.fixture
async def h() -> Harness:
    h = Harness()
    await h.write("config", {"jwt_validation_pubkeys": [KEY.pem]})
    resp = await h.write("cel/role/release", {"cel_program": PROGRAM, "bound_audiences": "vault",
                                              "message": "only release tags"})
    assert resp is not None and resp.data is not None
    assert resp.data == {
        "name": "release", "cel_program": PROGRAM, "message": "only release tags", "expiration_leeway": 150,
        "not_before_leeway": 150, "clock_skew_leeway": 60, "bound_audiences": ["vault"],
    }
    return h


async def test_login(h: Harness) -> None:
    resp = await h.call(Operation.UPDATE, "cel/login", {"role": "release", "jwt": token(h)}, remote_addr="127.0.0.1")
    assert resp is not None and resp.auth is not None
    assert resp.auth.policies == ["release-payments"]
    assert resp.auth.alias is not None and resp.auth.alias.name == "ci"


@pytest.mark.parametrize(
    ("claims", "check", "message"),
    [
        ({"ref": "v1.2.0-rc.2"}, "cel_program", "CEL role 'release' blocked authorization: only release tags"),
        ({"team": "../admin"}, "cel_program", "not a policy name"),
        ({"aud": "other"}, "audience", "invalid audience"),
        ({"exp": 1}, "time", "token is expired"),
    ],
    ids=["program-refuses", "policy-injection", "audience", "expired"],
)
async def test_login_refused(h: Harness, claims: dict[str, Any], check: str, message: str) -> None:
    with pytest.raises(PluginError, match=message) as exc:
        await h.write("cel/login", {"role": "release", "jwt": token(h, **claims)})
    assert exc.value.check == check
    # What the audit log and the login metrics record, as for a JWT login's refusal.
    assert exc.value.login == {"role": "release", "sub": "ci"}


async def test_unknown_role_and_missing_token(h: Harness) -> None:
    with raises('role "nope" could not be found') as unknown:
        await h.write("cel/login", {"role": "nope", "jwt": token(h)})
    assert unknown.value.login == {}  # no role is known: none is named
    with raises("missing token"):
        await h.write("cel/login", {"role": "release"})
    with raises("missing required field 'cel_program'"):
        await h.write("cel/role/x", {"message": "m"})


async def test_explain_shows_the_programs_outcome(h: Harness) -> None:
    resp = await h.write("cel/role/release/explain", {"jwt": token(h, ref="v1.2.0-rc.2")})
    assert resp is not None and resp.data is not None and resp.auth is None
    assert resp.data["would_succeed"] is False and resp.data["result"] is False
    assert [c["check"] for c in resp.data["checks"]] == ["parse", "algorithm", "signature", "issuer", "audience",
                                                         "time", "cel_program"]
    ok = await h.write("cel/role/release/explain", {"jwt": token(h)})
    assert ok is not None and ok.data is not None
    assert ok.data["would_succeed"] is True
    assert ok.data["result"] == {"policies": ["release-payments"], "alias": {"name": "ci"}}
    assert ok.data["auth"]["policies"] == ["release-payments"]


async def test_list_read_delete_and_renewal(h: Harness) -> None:
    await h.write("cel/role/other", {"cel_program": {"expression": "false"}})
    listed = await h.call(Operation.LIST, "cel/role/")
    assert listed is not None and listed.data == {"keys": ["other", "release"]}
    page = await h.call(Operation.LIST, "cel/role/", {"after": "other", "limit": 5})
    assert page is not None and page.data == {"keys": ["release"]}
    resp = await h.call(Operation.UPDATE, "cel/login", {"role": "release", "jwt": token(h)})
    assert resp is not None and resp.auth is not None
    renew = Request(Operation.RENEW, "cel/login", storage=h.storage, system=h.system, auth=resp.auth)
    renewed = await h.backend.handle_request(renew)
    assert renewed is not None and renewed.auth is not None and renewed.auth.policies == ["release-payments"]
    await h.call(Operation.DELETE, "cel/role/release")
    assert await h.backend.cel_role(h.storage, "release") is None
    with raises("CEL role release does not exist during renewal"):
        await h.backend.handle_request(renew)


async def test_a_stored_program_is_compiled_once(h: Harness) -> None:
    h.backend.invalidate("cel/role/release")  # as if another node wrote it
    first = await h.backend.cel_role(h.storage, "release")
    second = await h.backend.cel_role(h.storage, "release")
    assert first is not None and second is not None and first[1] is second[1]


def test_cost_limit_is_a_step_budget() -> None:
    assert COST_LIMIT == 10_000


def test_a_slow_garbage_collection_does_not_count_against_the_program() -> None:
    """The CPU limit measures the program: a full collection of a big process starting during
    it (it did in the test suite, 50+ ms) must not refuse a cheap login. Here every collection
    burns 60 ms of this thread's CPU, more than the whole limit, and collections are due every
    50 allocations: the program still succeeds, and the collector is back after."""
    import gc

    program = compile_program(CelProgram.from_raw({"expression": "[1, 2, 3].map(x, [x, x, x]).size() == 3"}))

    def slow(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            end = time.thread_time() + 0.06
            while time.thread_time() < end:
                pass

    before = gc.get_threshold()
    gc.set_threshold(50, 1, 1)
    gc.callbacks.append(slow)
    try:
        assert to_python(program.evaluate(CLAIMS, time.time(), "update")) is True
    finally:
        gc.callbacks.remove(slow)
        gc.set_threshold(*before)
    assert gc.isenabled()


#: More refusals at write, each with its whole message: the program's shape, every name the
#: checker must visit (in either order of the operands), the limits at their exact values.
MORE_REFUSALS: list[tuple[str, Any, str]] = [
    ("not an object", [], "failed to decode 'cel_program': expected an object"),
    ("no expression", {"variables": []}, "cel_program.expression cannot be empty"),
    ("expression not a string", {"expression": 1}, "failed to decode 'cel_program': expression must be a string"),
    ("variables not a list", {"expression": "1", "variables": "a"},
     "failed to decode 'cel_program': variables must be a list"),
    ("variables an empty object", {"expression": "1", "variables": {}},
     "failed to decode 'cel_program': variables must be a list"),
    ("variables an empty string", {"expression": "1", "variables": ""},
     "failed to decode 'cel_program': variables must be a list"),
    ("variables false", {"expression": "1", "variables": False},
     "failed to decode 'cel_program': variables must be a list"),
    ("a variable not an object", {"expression": "1", "variables": [1]},
     "failed to decode 'cel_program': variables[0] must be {name, expression}"),
    ("a variable with another key", {"expression": "1", "variables": [{"name": "a", "expression": "1", "x": 1}]},
     "failed to decode 'cel_program': variables[0] must be {name, expression}"),
    ("a variable's expression not a string", {"expression": "1", "variables": [{"name": "a", "expression": 2}]},
     "cel_program: variables[0].a: expression cannot be empty"),
    ("a variable's expression empty", {"expression": "1", "variables": [{"name": "a", "expression": ""}]},
     "cel_program: variables[0].a: expression cannot be empty"),
    ("a function's argument", {"expression": "size(nope) > 0"}, "undeclared reference to 'nope'"),
    ("after a function", {"expression": "size(claims.groups) > 0 && nope"}, "undeclared reference to 'nope'"),
    ("before a function", {"expression": "nope && size(claims.groups) > 0"}, "undeclared reference to 'nope'"),
    ("after a name", {"expression": "claims.a == 1 || nope"}, "undeclared reference to 'nope'"),
    ("before a name", {"expression": "nope || claims.a == 1"}, "undeclared reference to 'nope'"),
    ("a method's target", {"expression": "nope.startsWith('a')"}, "undeclared reference to 'nope'"),
    ("a method's argument", {"expression": "claims.ref.startsWith(nope)"}, "undeclared reference to 'nope'"),
    ("after a method", {"expression": "claims.ref.startsWith('a') && nope"}, "undeclared reference to 'nope'"),
    ("before a method", {"expression": "nope && claims.ref.startsWith('a')"}, "undeclared reference to 'nope'"),
    ("after a macro", {"expression": "claims.groups.all(g, g != '') && nope"}, "undeclared reference to 'nope'"),
    ("a field access's target", {"expression": "nope.x == 1"}, "undeclared reference to 'nope'"),
    ("after a field access", {"expression": "claims.x == 1 && nope"}, "undeclared reference to 'nope'"),
    ("a message's first field", {"expression": "pb.Auth{policies: [nope]}"}, "undeclared reference to 'nope'"),
    ("a message's second field", {"expression": "pb.Auth{policies: ['a'], display_name: nope}"},
     "undeclared reference to 'nope'"),
    ("a message's third field", {"expression": "pb.Auth{policies: ['a'], display_name: 'x', num_uses: nope}"},
     "undeclared reference to 'nope'"),
    ("after a message", {"expression": "pb.Auth{policies: []} == nope"}, "undeclared reference to 'nope'"),
    ("before a message", {"expression": "nope == pb.Auth{policies: []}"}, "undeclared reference to 'nope'"),
    ("after a message type", {"expression": "type(claims) == pb.Auth || nope"}, "undeclared reference to 'nope'"),
    ("before a message type", {"expression": "nope || type(claims) == pb.Auth"}, "undeclared reference to 'nope'"),
    ("a function called with a leading dot", {"expression": ".system('ls')"},
     "undeclared reference to function 'system'"),
    ("301 parse levels", {"expression": "(" * 30 + "1" + ")" * 30}, "nested too deep (more than 300 parse levels)"),
    ("4001 parse nodes", {"expression": "size([---" + ",".join(["1"] * 394) + "])" + " + 1" * 5},
     "too large (more than 4000 parse nodes)"),
    # a message type's package is no value: anything but a known type under it fails every login
    ("an unknown name under pb", {"expression": "pb.Foo == 1"}, "undeclared reference to 'pb'"),
    ("pb alone", {"expression": "pb == 1"}, "undeclared reference to 'pb'"),
    ("an unknown name under logical", {"expression": "logical.X"}, "undeclared reference to 'logical'"),
    ("the accessor", {"expression": "pb.Auth{accessor: 'x'}"}, "pb.Auth.accessor is set by the server"),
    ("the internal data", {"expression": "pb.Auth{internal_data: {}}"}, "pb.Auth.internal_data is set by the server"),
    ("4097 characters", {"expression": "'" + "x" * 4095 + "'"}, "longer than 4096 characters"),
    ("a long syntax error shows the line around the error", {"expression": "claims.x + " * 40},
     "invalid CEL syntax: aims.x + claims.x + claims.x + claims.x + "),
]


@pytest.mark.parametrize(("program", "message"), [c[1:] for c in MORE_REFUSALS], ids=[c[0] for c in MORE_REFUSALS])
def test_more_compile_refusals(program: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        compile_program(CelProgram.from_raw(program))
    [got] = info.value.messages
    if message.startswith(("failed to decode", "cel_program")):
        assert got == message
    else:
        assert got == "cel_program: expression: " + message


@pytest.mark.parametrize("name", ["claims", "now", "operation", "pb", "logical", "google", "true", "false", "null", "in",
                                  "map", "filter", "all", "exists", "exists_one", "1a", ""])
def test_reserved_variable_names(name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        CelProgram.from_raw({"expression": "1", "variables": [{"name": name, "expression": "1"}]})
    assert info.value.messages == [f"cel_program: variables[0]: invalid or reserved variable name {name!r}"]


#: Programs at the limits, and every extension function, that must compile and run.
ACCEPTED: list[tuple[str, str, Any]] = [
    ("4096 characters", "'" + "x" * 4094 + "'", "x" * 4094),
    ("300 parse levels", "(" * 29 + "1" + ")" * 29, 1),  # 29 parentheses: 300 levels, 30: 310
    ("a value of exactly 65536 characters", "size(claims.s + claims.s + claims.s + claims.s)", 65536),
    ("lowerAscii", "'PaYmEnTs-É'.lowerAscii()", "payments-É"),
    ("upperAscii", "'payments-é'.upperAscii()", "PAYMENTS-é"),
    ("trim", "'  a b  '.trim()", "a b"),
    ("split", "'a.b.c'.split('.')", ["a", "b", "c"]),
    ("join without a separator", "['a', 'b'].join()", "ab"),
    ("join", "['a', 'b'].join('-')", "a-b"),
    ("replace", "'v1.2.0'.replace('.', '-')", "v1-2-0"),
    ("indexOf", "'v1.2.0'.indexOf('.')", 2),
    ("dyn", "dyn(1) == 1", True),
    ("filter", "claims.groups.filter(g, g != 'a')", ["b", "c"]),
    ("exists_one", "claims.groups.exists_one(g, g == 'a')", True),
    ("map", "claims.groups.map(g, g + g)", ["aa", "bb", "cc"]),
    ("an empty message", "pb.Auth{}", {}),
    ("lease options", "pb.LeaseOptions{TTL: 5, MaxTTL: 6, renewable: true}", {"TTL": 5, "MaxTTL": 6, "renewable": True}),
    ("an alias", "logical.Alias{name: 'n', metadata: {'k': 'v'}}", {"name": "n", "metadata": {"k": "v"}}),
    ("message types as values", "pb.Auth == pb.Auth && logical.Alias != pb.Auth && type(claims) != pb.Auth", True),
]


@pytest.mark.parametrize(("expression", "value"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted_programs(expression: str, value: Any) -> None:
    assert evaluate(expression, s="x" * 16384) == value


def test_4000_parse_nodes_compile() -> None:
    """The largest program the node limit takes compiles (only compiled: running its 395-element
    list costs CPU time the time limit would count on a slow machine)."""
    compile_program(CelProgram.from_raw({"expression": "size([" + ",".join(["1"] * 395) + "])" + " + 1" * 4}))


def test_32_variables_are_allowed() -> None:
    variables = [{"name": f"v{i}", "expression": f"{i}"} for i in range(32)]
    assert evaluate("v0 + v31", variables) == 31


#: Evaluation errors, with their whole message: where it failed and celpy's reason, short.
EVALUATION_ERRORS: list[tuple[str, str, list[dict[str, str]], str]] = [
    ("a missing claim", "claims.missing == 1", [], "expression: no such member in mapping: 'missing'"),
    ("in a variable", "a", [{"name": "a", "expression": "claims.missing"}],
     "variable 'a': no such member in mapping: 'missing'"),
    ("after a variable", "a == claims.missing", [{"name": "a", "expression": "1"}],
     "expression: no such member in mapping: 'missing'"),
    ("divide by zero", "1 / 0 == 1", [], "expression: modulus or divide by zero"),
    ("a long reason is cut to 300 characters", "claims." + "k" * 400 + " == 1", [],
     "expression: " + ("no such member in mapping: '" + "k" * 400)[:300]),
    ("an extension given a number", "claims.ref.split(1).size() > 0", [], "expression: no such overload"),
    ("join given a string", "'ab'.join('-') == ''", [], "expression: no such overload"),
    ("join given numbers", "['a', 1].join('-') == ''", [], "expression: no such overload"),
    ("a value too large", "size(claims.s + claims.s + claims.s + claims.s + 'y') > 0", [],
     "the program built a value larger than 65536 elements"),
]


@pytest.mark.parametrize(("expression", "variables", "message"), [c[1:] for c in EVALUATION_ERRORS],
                         ids=[c[0] for c in EVALUATION_ERRORS])
def test_evaluation_errors_in_full(expression: str, variables: list[dict[str, str]], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        evaluate(expression, variables, s="x" * 16384)
    assert info.value.messages == ["CEL program failed: " + message]


def test_cost_limit_counts_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """10000 steps are allowed, not one more (the time limit lifted, so only the steps count):
    ``all`` over 587 elements and ``&& true`` takes exactly 10000, over 588 it takes 17 more."""
    from plugin import cel

    monkeypatch.setattr(cel, "TIME_LIMIT", 60.0)
    assert evaluate("claims.n.all(a, a >= 0) && true", n=list(range(587))) is True
    assert evaluate("claims.n.all(a, a >= 0)", n=list(range(400))) is True  # 6813 steps
    with pytest.raises(InvalidRequest) as info:
        evaluate("claims.n.all(a, a >= 0) && true", n=list(range(588)))
    assert info.value.messages == ["CEL program failed: the program exceeded its cost limit (10000 evaluation steps)"]


def test_time_limit_is_50_ms_of_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the step budget lifted, a long program is stopped by the CPU limit, soon after it."""
    from plugin import cel

    monkeypatch.setattr(cel, "COST_LIMIT", 10**9)
    started = time.thread_time()
    with pytest.raises(InvalidRequest) as info:
        evaluate("claims.n.all(a, claims.n.all(b, a + b >= 0))", n=list(range(2000)))
    assert info.value.messages == ["CEL program failed: the program exceeded its time limit (0.05s)"]
    assert time.thread_time() - started < 0.5


@pytest.mark.parametrize("raw", [{"expression": "true"}, {"expression": "true", "variables": None},
                                 {"expression": "true", "variables": []}], ids=["absent", "null", "empty list"])
def test_no_variables_is_absent_null_or_an_empty_list(raw: dict[str, Any]) -> None:
    """Only these mean no variables; ``{}``, ``""`` or ``false`` are refused (OpenBao's JSON decoding)."""
    program = CelProgram.from_raw(raw)
    assert program.variables == () and program.to_json() == {"expression": "true"}


async def test_a_patch_changes_only_the_fields_sent(h: Harness) -> None:
    """OpenBao's PATCH of a CEL role: the stored role with the fields sent; a program sent
    replaces the program (and is compiled, so a bad one changes nothing)."""
    resp = await h.call(Operation.PATCH, "cel/role/release", {"message": "tags only", "clock_skew_leeway": "5s"})
    assert resp is not None and resp.data is not None
    assert resp.data == {
        "name": "release", "cel_program": PROGRAM, "message": "tags only", "expiration_leeway": 150,
        "not_before_leeway": 150, "clock_skew_leeway": 5, "bound_audiences": ["vault"],
    }
    with raises("cel_program: expression: undeclared reference to 'nope'"):
        await h.call(Operation.PATCH, "cel/role/release", {"cel_program": {"expression": "nope == 1"}})
    with raises("failed to decode 'cel_program': expected an object"):
        await h.call(Operation.PATCH, "cel/role/release", {"cel_program": "release"})
    with pytest.raises(PluginError, match="blocked authorization: tags only$"):
        await h.write("cel/login", {"role": "release", "jwt": token(h, ref="main")})  # the patched role is in use
    found = await h.backend.cel_role(h.storage, "release")
    assert found is not None and found[0].message == "tags only" and found[0].cel_program.to_json() == PROGRAM
    tagged = "release ? pb.Auth{policies: ['tagged']} : false"
    resp = await h.call(Operation.PATCH, "cel/role/release", {"cel_program": {"expression": tagged}})
    assert resp is not None and resp.data is not None  # the expression replaced, the variables kept
    assert resp.data["cel_program"] == {"variables": PROGRAM["variables"], "expression": tagged}
    login = await h.call(Operation.UPDATE, "cel/login", {"role": "release", "jwt": token(h)})
    assert login is not None and login.auth is not None and login.auth.policies == ["tagged"]
    with raises("Unable to fetch cel role entry to patch"):
        await h.call(Operation.PATCH, "cel/role/nope", {"message": "m"})
    assert await h.backend.cel_role(h.storage, "nope") is None
