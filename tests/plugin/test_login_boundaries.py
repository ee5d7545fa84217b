"""JWT login at its edges, through ``JWTAuthBackend.handle_request`` only: bound claims of
each JSON type, JSON-pointer indexes, globs, every time leeway at its exact boundary (one
second either side), the NumericDate range, ``max_token_age``, bound CIDRs given odd peers,
and a malformed ``jwt`` that is never echoed. Each case also runs through
``role/<name>/explain``, which must agree with login. The tests assert public behaviour
only, so they hold whatever shape the login checks take inside (issue 16; found by mutation
testing, docs/mutation.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from plugin.errors import InvalidRequest, PermissionDenied, PluginError
from plugin.framework import Operation
from tests.plugin.fakes import Clock, Harness
from tests.plugin.keyfactory import DROP, b64url, changed, ec_key, ed25519_key, make_token, rsa_key

KEY = ec_key()
NOW = 1_700_000_000
MAX_DATE = 253402300799  # 9999-12-31T23:59:59Z


async def mount(role: dict[str, Any] | None = None, *, now: float = NOW) -> Harness:
    """A jwt mount with a static key and role ``r`` (``sub`` must be ``alice`` unless replaced)."""
    h = Harness(clock=Clock(float(now)))
    await h.write("config", {"jwt_validation_pubkeys": [KEY.pem]})
    data: dict[str, Any] = {"role_type": "jwt", "user_claim": "sub", "bound_subject": "alice"}
    data.update(role or {})
    await h.write("role/r", {k: v for k, v in data.items() if v is not DROP})
    return h


def token(**claims: Any) -> str:
    """A token signed by KEY: ``sub`` alice, ``iat`` NOW, ``exp`` NOW + 300, then ``claims``."""
    return make_token(changed({"sub": "alice", "iat": NOW, "exp": NOW + 300}, claims), key=KEY)


async def login(h: Harness, jwt: Any, *, remote_addr: str | None = "127.0.0.1") -> str | None:
    """None when the login succeeds, else the error it gives (always a PluginError: a 4xx)."""
    try:
        resp = await h.call(Operation.UPDATE, "login", {"role": "r", "jwt": jwt}, remote_addr=remote_addr)
    except PermissionDenied:
        return "permission denied"
    except PluginError as exc:
        assert isinstance(exc, InvalidRequest), exc
        return "; ".join(exc.messages)
    assert resp is not None and resp.auth is not None
    return None


async def explain(h: Harness, jwt: str, **extra: Any) -> bool:
    resp = await h.call(Operation.UPDATE, "role/r/explain", {"jwt": jwt, **extra})
    assert resp is not None and resp.data is not None and resp.auth is None
    return bool(resp.data["would_succeed"])


async def check(h: Harness, jwt: str, ok: bool, message: str = "") -> None:
    """Login succeeds exactly when ``ok`` (else fails naming ``message``); explain agrees."""
    error = await login(h, jwt)
    if ok:
        assert error is None, error
    else:
        assert error is not None, "login succeeded"
        assert message in error, error
    assert await explain(h, jwt) is ok


# -- bound claims: JSON types ------------------------------------------------------------------

BOUND_TYPES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("number vs null", {"n": 123}, {"n": None}, False),
    ("number vs a list holding it", {"n": 123}, {"n": [1, 123]}, True),
    ("number vs a list without it", {"n": 123}, {"n": [1, 2]}, False),
    ("number vs an empty list", {"n": 123}, {"n": []}, False),
    ("number vs a list holding null", {"n": 123}, {"n": [None]}, False),
    ("number vs a list of lists", {"n": 123}, {"n": [[123]]}, False),
    ("number vs an object", {"n": 123}, {"n": {"n": 123}}, False),
    ("number vs a list holding an object", {"n": 123}, {"n": [{"n": 123}]}, False),
    ("number vs its string", {"n": 123}, {"n": "123"}, False),
    ("string vs its number", {"n": "123"}, {"n": 123}, False),
    ("number vs another", {"n": 123}, {"n": 124}, False),
    ("zero vs zero", {"n": 0}, {"n": 0}, True),
    ("zero vs null", {"n": 0}, {"n": None}, False),
    ("zero vs false", {"n": 0}, {"n": False}, False),
    ("one vs true", {"n": 1}, {"n": True}, False),
    ("true vs one", {"b": True}, {"b": 1}, False),
    ("false vs zero", {"b": False}, {"b": 0}, False),
    ("true vs true", {"b": True}, {"b": True}, True),
    ("false vs false", {"b": False}, {"b": False}, True),
    ("true vs false", {"b": True}, {"b": False}, False),
    ("true vs its string", {"b": True}, {"b": "true"}, False),
    ("true vs a list holding true", {"b": True}, {"b": [False, True]}, True),
    ("123.0 vs 123", {"n": 123.0}, {"n": 123}, True),
    ("123 vs 123.0", {"n": 123}, {"n": 123.0}, True),
    ("123.0 vs 123.0", {"n": 123.0}, {"n": 123.0}, True),
    ("any of a bound list", {"n": [1, 2]}, {"n": 2}, True),
    ("none of a bound list", {"n": [1, 2]}, {"n": 3}, False),
    ("string vs a list holding it", {"s": "x"}, {"s": ["y", "x"]}, True),
    ("string is case-sensitive", {"s": "x"}, {"s": "X"}, False),
    ("string is not a glob", {"s": "a*"}, {"s": "ab"}, False),
    ("string with a star matches itself", {"s": "a*"}, {"s": "a*"}, True),
    ("claim missing", {"n": 1}, {}, False),
    ("every bound claim must match", {"a": "x", "b": "y"}, {"a": "x", "b": "z"}, False),
    ("both bound claims match", {"a": "x", "b": "y"}, {"a": "x", "b": "y"}, True),
]


@pytest.mark.parametrize(("bound", "claims", "ok"), [c[1:] for c in BOUND_TYPES], ids=[c[0] for c in BOUND_TYPES])
async def test_bound_claim_types(bound: dict[str, Any], claims: dict[str, Any], ok: bool) -> None:
    h = await mount({"bound_claims": bound})
    await check(h, token(**claims), ok, "error validating claims")


# -- JSON pointers: list indexes ---------------------------------------------------------------

GROUPS = ["a", "b", "c"]
POINTERS: list[tuple[str, str, Any, bool]] = [
    ("index 0", "/groups/0", "a", True),
    ("the last index", "/groups/2", "c", True),
    ("a middle index", "/groups/1", "b", True),
    ("index 1 is not index 0", "/groups/1", "a", False),
    ("one past the end", "/groups/3", "c", False),
    ("far past the end", "/groups/300", "c", False),
    ("a negative index", "/groups/-1", "c", False),
    ("a leading zero", "/groups/01", "b", False),
    ("not a number", "/groups/x", "a", False),
    ("an index into an object", "/org/0", "x", False),
    ("nested", "/org/teams/1/name", "ops", True),
    ("nested one past the end", "/org/teams/2/name", "ops", False),
    ("through a string", "/org/name/0", "e", False),
    ("escaped slash", "/a~1b", "slash", True),
    ("escaped tilde", "/a~0b", "tilde", True),
]


@pytest.mark.parametrize(("pointer", "want", "ok"), [c[1:] for c in POINTERS], ids=[c[0] for c in POINTERS])
async def test_bound_claim_pointers(pointer: str, want: Any, ok: bool) -> None:
    h = await mount({"bound_claims": {pointer: want}})
    claims = {
        "groups": GROUPS,
        "org": {"name": "eng", "teams": [{"name": "dev"}, {"name": "ops"}]},
        "a/b": "slash",
        "a~b": "tilde",
    }
    await check(h, token(**claims), ok, "error validating claims")


@pytest.mark.parametrize(
    ("pointer", "names", "alias"),
    [("/names/0", ["alice", "bob"], "alice"), ("/names/1", ["alice", "bob"], "bob"),
     ("/names/2", ["alice", "bob"], None), ("/names/0", [], None), ("/names/0", "alice", None)],
    ids=["index 0", "the last index", "one past the end", "empty list", "not a list"],
)
async def test_user_claim_pointer_indexes(pointer: str, names: Any, alias: str | None) -> None:
    h = await mount({"user_claim": pointer, "user_claim_json_pointer": True})
    jwt = token(names=names)
    resp = None
    try:
        resp = await h.call(Operation.UPDATE, "login", {"role": "r", "jwt": jwt}, remote_addr="127.0.0.1")
    except InvalidRequest as exc:
        assert alias is None
        assert exc.messages == [f'claim "{pointer}" not found in token']
    else:
        assert resp is not None and resp.auth is not None and resp.auth.alias is not None
        assert resp.auth.alias.name == alias
    assert await explain(h, jwt) is (alias is not None)


async def test_claim_mapping_and_groups_pointers_past_the_end() -> None:
    h = await mount({
        "claim_mappings": {"/groups/2": "last", "/groups/3": "past"},
        "list_claim_mappings": {"/teams/5": "none"},
        "groups_claim": "/groups",
    })
    resp = await h.call(Operation.UPDATE, "login", {"role": "r", "jwt": token(groups=GROUPS, teams=[["x"]])})
    assert resp is not None and resp.auth is not None
    assert resp.auth.metadata == {"last": "c", "role": "r"}  # a pointer past the end is absent
    assert resp.auth.group_aliases == GROUPS
    h = await mount({"groups_claim": "/groups/3"})
    assert await login(h, token(groups=GROUPS)) == 'failed to fetch groups: "/groups/3" claim not found in token'


# -- globs -------------------------------------------------------------------------------------

GLOBS: list[tuple[str, Any, bool]] = [
    ("a*b*c", "abc", True),
    ("a*b*c", "aXbYc", True),
    ("a*b*c", "abcc", True),
    ("a*b*c", "abbc", True),
    ("a*b*c", "ab", False),
    ("a*b*c", "acb", False),
    ("a*b*c", "abcX", False),
    ("a*b*c", "Xabc", False),
    ("a*b*c", "ABC", False),
    ("ab*bc", "abc", False),
    ("ab*bc", "abbc", True),
    ("a*a", "a", False),
    ("a**c", "ac", True),
    ("a*b*b", "ab", False),  # a middle part is used up once found
    ("a*b*b", "abb", True),
    ("*x*x*", "x", False),
    ("*x*x*", "xx", True),
    ("*c", "abc", True),
    ("*c", "abcd", False),
    ("a*", "a", True),
    ("a*", "ba", False),
    ("*b*", "abc", True),
    ("*b*", "ac", False),
    ("*", "anything", True),
    ("abc", "abc", True),
    ("abc", "abcd", False),
    ("1*", 12, False),
    ("a*", ["x", "ab"], True),
    ("a*", ["x", "y"], False),
]


@pytest.mark.parametrize(("pattern", "value", "ok"), GLOBS, ids=[f"{p} vs {v}" for p, v, _ in GLOBS])
async def test_glob_bound_claims(pattern: str, value: Any, ok: bool) -> None:
    h = await mount({"bound_claims_type": "glob", "bound_claims": {"ref": pattern}})
    await check(h, token(ref=value), ok, "error validating claims")


@pytest.mark.parametrize(("pattern", "value", "ok"), [g for g in GLOBS if isinstance(g[1], str)],
                         ids=[f"{p} vs {v}" for p, v, _ in GLOBS if isinstance(v, str)])
async def test_glob_subject_and_audience(pattern: str, value: str, ok: bool) -> None:
    h = await mount({"bound_claims_type": "glob", "bound_subject": pattern})
    await check(h, token(sub=value), ok, "invalid subject (sub) claim")
    h = await mount({"bound_claims_type": "glob", "bound_subject": DROP, "bound_audiences": [pattern]})
    await check(h, token(aud=value), ok, "invalid audience (aud) claim")


async def test_string_subject_and_audience_are_not_globs() -> None:
    h = await mount({"bound_subject": "a*"})
    await check(h, token(sub="ab"), False, "invalid subject (sub) claim")
    await check(h, token(sub="a*"), True)
    h = await mount({"bound_subject": DROP, "bound_audiences": ["a*"]})
    await check(h, token(aud="ab"), False, "invalid audience (aud) claim")
    await check(h, token(aud=["x", "a*"]), True)


# -- time claims: every leeway at its exact boundary -------------------------------------------

OFF = -1  # a negative leeway disables it
#: (case, role leeways (clock skew, expiration, not before), claims relative to NOW, ok, message)
TIMES: list[tuple[str, tuple[int, int, int], dict[str, Any], bool, str]] = [
    # clock skew leeway on nbf, exp and iat
    ("nbf at now + skew", (10, OFF, OFF), {"iat": DROP, "nbf": 10}, True, ""),
    ("nbf a second later", (10, OFF, OFF), {"iat": DROP, "nbf": 11}, False, "token not yet valid"),
    ("exp at now - skew", (10, OFF, OFF), {"iat": DROP, "exp": -10}, True, ""),
    ("exp a second earlier", (10, OFF, OFF), {"iat": DROP, "exp": -11}, False, "token is expired"),
    ("iat at now + skew", (10, OFF, OFF), {"nbf": 0, "iat": 10}, True, ""),
    ("iat a second later", (10, OFF, OFF), {"nbf": 0, "iat": 11}, False, "token issued in the future"),
    ("skew off: nbf now", (OFF, OFF, OFF), {"iat": DROP, "nbf": 0}, True, ""),
    ("skew off: nbf now + 1", (OFF, OFF, OFF), {"iat": DROP, "nbf": 1}, False, "token not yet valid"),
    ("skew off: exp now", (OFF, OFF, OFF), {"iat": DROP, "exp": 0}, True, ""),
    ("skew off: exp now - 1", (OFF, OFF, OFF), {"iat": DROP, "exp": -1}, False, "token is expired"),
    ("skew off: iat now + 1", (OFF, OFF, OFF), {"nbf": 0, "iat": 1}, False, "token issued in the future"),
    ("default skew: nbf now + 60", (0, OFF, OFF), {"iat": DROP, "nbf": 60}, True, ""),
    ("default skew: nbf now + 61", (0, OFF, OFF), {"iat": DROP, "nbf": 61}, False, "token not yet valid"),
    ("default skew: exp now - 60", (0, OFF, OFF), {"iat": DROP, "exp": -60}, True, ""),
    ("default skew: exp now - 61", (0, OFF, OFF), {"iat": DROP, "exp": -61}, False, "token is expired"),
    ("skew -100 is off too", (-100, OFF, OFF), {"iat": DROP, "nbf": 1}, False, "token not yet valid"),
    # expiration leeway: no exp, the token expires leeway seconds after iat/nbf
    ("iat + leeway is now", (OFF, 20, OFF), {"exp": DROP, "iat": -20}, True, ""),
    ("iat + leeway a second ago", (OFF, 20, OFF), {"exp": DROP, "iat": -21}, False, "token is expired"),
    ("nbf + leeway is now", (OFF, 20, OFF), {"exp": DROP, "iat": DROP, "nbf": -20}, True, ""),
    ("nbf + leeway a second ago", (OFF, 20, OFF), {"exp": DROP, "iat": DROP, "nbf": -21}, False, "token is expired"),
    ("the later of iat and nbf counts", (OFF, 20, OFF), {"exp": DROP, "iat": -100, "nbf": -20}, True, ""),
    ("the later of nbf and iat counts", (OFF, 20, OFF), {"exp": DROP, "iat": -20, "nbf": -100}, True, ""),
    ("both too old", (OFF, 20, OFF), {"exp": DROP, "iat": -21, "nbf": -100}, False, "token is expired"),
    ("leeway and skew add up", (10, 20, OFF), {"exp": DROP, "iat": -30}, True, ""),
    ("leeway and skew a second short", (10, 20, OFF), {"exp": DROP, "iat": -31}, False, "token is expired"),
    ("default expiration leeway", (OFF, 0, OFF), {"exp": DROP, "iat": -150}, True, ""),
    ("default expiration leeway + 1", (OFF, 0, OFF), {"exp": DROP, "iat": -151}, False, "token is expired"),
    ("expiration leeway off", (OFF, OFF, OFF), {"exp": DROP, "iat": 0}, True, ""),
    ("expiration leeway off, a second old", (OFF, OFF, OFF), {"exp": DROP, "iat": -1}, False, "token is expired"),
    # not-before leeway: no nbf and no iat, the token is valid from leeway seconds before exp
    ("exp - leeway is now", (OFF, OFF, 20), {"iat": DROP, "exp": 20}, True, ""),
    ("exp - leeway is a second away", (OFF, OFF, 20), {"iat": DROP, "exp": 21}, False, "token not yet valid"),
    ("not-before leeway and skew add up", (10, OFF, 20), {"iat": DROP, "exp": 30}, True, ""),
    ("not-before leeway and skew a second short", (10, OFF, 20), {"iat": DROP, "exp": 31}, False,
     "token not yet valid"),
    ("default not-before leeway", (OFF, OFF, 0), {"iat": DROP, "exp": 150}, True, ""),
    ("default not-before leeway + 1", (OFF, OFF, 0), {"iat": DROP, "exp": 151}, False, "token not yet valid"),
    ("not-before leeway off: exp now", (OFF, OFF, OFF), {"iat": DROP, "exp": 0}, True, ""),
    ("not-before leeway off: exp now + 1", (OFF, OFF, OFF), {"iat": DROP, "exp": 1}, False, "token not yet valid"),
    ("iat stands in for nbf", (OFF, OFF, 20), {"iat": 0, "exp": 100}, True, ""),
    # one claim is enough, none is not
    ("only iat", (OFF, 0, OFF), {"exp": DROP}, True, ""),
    ("only nbf", (OFF, 0, OFF), {"exp": DROP, "iat": DROP, "nbf": 0}, True, ""),
    ("only exp", (OFF, OFF, 0), {"iat": DROP, "exp": 100}, True, ""),
    ("no time claim", (0, 0, 0), {"iat": DROP, "exp": DROP}, False, "no issued at (iat), not before (nbf), or"),
]


@pytest.mark.parametrize(("leeways", "claims", "ok", "message"), [c[1:] for c in TIMES], ids=[c[0] for c in TIMES])
async def test_time_leeway_boundaries(leeways: tuple[int, int, int], claims: dict[str, Any], ok: bool,
                                      message: str) -> None:
    skew, expiration, not_before = leeways
    h = await mount({"clock_skew_leeway": skew, "expiration_leeway": expiration, "not_before_leeway": not_before})
    relative = {k: v if v is DROP else NOW + v for k, v in claims.items()}
    await check(h, token(**relative), ok, message)


async def test_the_clock_is_truncated_to_whole_seconds() -> None:
    h = await mount({"clock_skew_leeway": OFF}, now=NOW + 0.999)
    await check(h, token(iat=DROP, exp=NOW), True)
    await check(h, token(iat=DROP, nbf=NOW + 1), False, "token not yet valid")


NUMERIC_DATES: list[tuple[str, dict[str, Any], bool, str]] = [
    ("nbf 0", {"nbf": 0}, True, ""),
    ("iat 0", {"iat": 0, "nbf": NOW}, True, ""),
    ("nbf -1", {"nbf": -1}, False, 'claim "nbf" is out of range'),
    ("iat -1", {"iat": -1}, False, 'claim "iat" is out of range'),
    ("exp 0", {"exp": 0}, False, "token is expired"),
    ("exp -1", {"exp": -1}, False, 'claim "exp" is out of range'),
    ("the largest exp", {"exp": MAX_DATE}, True, ""),
    ("the largest exp as a float", {"exp": float(MAX_DATE)}, True, ""),
    ("the first refused exp", {"exp": MAX_DATE + 1}, False, 'claim "exp" is out of range'),
    ("just past the largest exp", {"exp": MAX_DATE + 0.5}, False, 'claim "exp" is out of range'),
    ("the largest nbf", {"nbf": MAX_DATE, "exp": MAX_DATE}, False, "token not yet valid"),
    ("the first refused nbf", {"nbf": MAX_DATE + 1}, False, 'claim "nbf" is out of range'),
    ("exp a float just after now", {"exp": NOW + 0.5}, True, ""),
    ("exp a float just before now", {"exp": NOW - 0.5}, False, "token is expired"),
    ("exp a bool", {"exp": True}, False, 'claim "exp" must be a JSON number'),
]


@pytest.mark.parametrize(("claims", "ok", "message"), [c[1:] for c in NUMERIC_DATES], ids=[c[0] for c in NUMERIC_DATES])
async def test_numeric_date_range(claims: dict[str, Any], ok: bool, message: str) -> None:
    h = await mount({"clock_skew_leeway": OFF, "expiration_leeway": OFF, "not_before_leeway": OFF})
    await check(h, token(**claims), ok, message)


MAX_AGE: list[tuple[str, int, dict[str, Any], bool, str]] = [
    ("issued a second ago", OFF, {"iat": NOW - 1}, True, ""),
    ("issued two seconds ago", OFF, {"iat": NOW - 2}, False, "token is too old"),
    ("issued now", OFF, {"iat": NOW}, True, ""),
    ("no iat", OFF, {"iat": DROP, "nbf": NOW}, False, "max_token_age requires an issued at (iat) claim"),
    ("default skew: 61 seconds ago", 0, {"iat": NOW - 61}, True, ""),
    ("default skew: 62 seconds ago", 0, {"iat": NOW - 62}, False, "token is too old"),
    ("skew 5: 6 seconds ago", 5, {"iat": NOW - 6}, True, ""),
    ("skew 5: 7 seconds ago", 5, {"iat": NOW - 7}, False, "token is too old"),
]


@pytest.mark.parametrize(("skew", "claims", "ok", "message"), [c[1:] for c in MAX_AGE], ids=[c[0] for c in MAX_AGE])
async def test_max_token_age_of_one_second(skew: int, claims: dict[str, Any], ok: bool, message: str) -> None:
    h = await mount({"max_token_age": 1, "clock_skew_leeway": skew, "expiration_leeway": OFF,
                     "not_before_leeway": OFF})
    await check(h, token(**claims), ok, message)


#: (case, role, claims, the whole message): what a refused time check says, word for word.
TIME_MESSAGES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("not yet valid", {"clock_skew_leeway": 10}, {"iat": DROP, "nbf": NOW + 11},
     "error validating token: invalid not before (nbf) claim: token not yet valid "
     f"(valid from {NOW + 11}, now {NOW}, clock skew leeway 10s)"),
    ("expired", {"clock_skew_leeway": 10}, {"iat": DROP, "exp": NOW - 11},
     "error validating token: invalid expiration time (exp) claim: token is expired "
     f"(valid until {NOW - 11}, now {NOW}, clock skew leeway 10s)"),
    ("issued in the future", {"clock_skew_leeway": OFF}, {"nbf": NOW, "iat": NOW + 1},
     "error validating token: invalid issued at (iat) claim: token issued in the future "
     f"(iat {NOW + 1}, now {NOW}, clock skew leeway 0s)"),
    ("not a number", {}, {"exp": "1"}, 'error validating token: claim "exp" must be a JSON number, got "1"'),
    ("a bool", {}, {"iat": True}, 'error validating token: claim "iat" must be a JSON number, got true'),
    ("out of range", {}, {"nbf": -1}, 'error validating token: claim "nbf" is out of range'),
    ("no time claim", {}, {"iat": DROP, "exp": DROP},
     "error validating token: no issued at (iat), not before (nbf), or expiration time (exp) claims in token"),
    ("too old", {"max_token_age": 1, "clock_skew_leeway": 5}, {"iat": NOW - 7},
     "error validating token: token is too old: issued 7s ago, role max_token_age is 1s (clock skew leeway 5s)"),
    ("max_token_age without iat", {"max_token_age": 1}, {"iat": DROP, "nbf": NOW},
     "error validating token: the role's max_token_age requires an issued at (iat) claim"),
]


@pytest.mark.parametrize(("role", "claims", "message"), [c[1:] for c in TIME_MESSAGES], ids=[c[0] for c in TIME_MESSAGES])
async def test_time_refusals_word_for_word(role: dict[str, Any], claims: dict[str, Any], message: str) -> None:
    h = await mount(role)
    assert await login(h, token(**claims)) == message


async def test_no_max_token_age_means_any_age() -> None:
    h = await mount({"clock_skew_leeway": OFF})
    await check(h, token(iat=0, nbf=DROP, exp=NOW + 10), True)


# -- algorithms ----------------------------------------------------------------------------------

ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


def _key_for(alg: str) -> Any:
    if alg[:2] in ("RS", "PS"):
        return rsa_key(alg=alg, slot=7)
    if alg == "EdDSA":
        return ed25519_key()
    return ec_key(crv={"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg])


@pytest.mark.parametrize("alg", ALGS)
async def test_every_asymmetric_algorithm_is_accepted_by_default(alg: str) -> None:
    """Without jwt_supported_algs, login accepts each RS*, PS*, ES* and EdDSA token."""
    key = _key_for(alg)
    h = Harness(clock=Clock(float(NOW)))
    await h.write("config", {"jwt_validation_pubkeys": [key.pem]})
    await h.write("role/r", {"role_type": "jwt", "user_claim": "sub", "bound_subject": "alice"})
    jwt = make_token({"sub": "alice", "iat": NOW, "exp": NOW + 300}, key=key, alg=alg)
    assert await login(h, jwt) is None
    await h.write("config", {"jwt_validation_pubkeys": [key.pem], "jwt_supported_algs": [alg]})
    assert await login(h, jwt) is None


# -- bound CIDRs -------------------------------------------------------------------------------

CIDRS: list[tuple[str, str, str | None, bool]] = [
    ("host bits set: inside", "127.0.0.1/8", "127.200.0.1", True),
    ("host bits set: outside", "127.0.0.1/8", "128.0.0.1", False),
    ("a bare address", "10.0.0.5", "10.0.0.5", True),
    ("a bare address: its neighbour", "10.0.0.5", "10.0.0.6", False),
    ("not an IP", "10.0.0.0/8", "not-an-ip", False),
    ("an IP with a port", "10.0.0.0/8", "10.0.0.1:8200", False),
    ("an empty peer", "10.0.0.0/8", "", False),
    ("no connection", "10.0.0.0/8", None, False),
    ("an IPv4-mapped peer", "10.0.0.0/8", "::ffff:10.0.0.1", True),
    ("a mapped CIDR", "::ffff:10.0.0.0/104", "10.9.9.9", True),
    ("the mapped /96 is all of IPv4", "::ffff:0:0/96", "192.0.2.1", True),
    ("an IPv6 peer with a zone", "fe80::/10", "fe80::1%eth0", True),
]


@pytest.mark.parametrize(("cidr", "peer", "ok"), [c[1:] for c in CIDRS], ids=[c[0] for c in CIDRS])
async def test_bound_cidrs(cidr: str, peer: str | None, ok: bool) -> None:
    h = await mount({"token_bound_cidrs": [cidr]})
    jwt = token()
    error = await login(h, jwt, remote_addr=peer)
    assert error == (None if ok else "permission denied")
    if peer:
        resp = await h.call(Operation.UPDATE, "role/r/explain", {"jwt": jwt, "remote_addr": peer})
        assert resp is not None and resp.data is not None and resp.data["would_succeed"] is ok


async def test_bound_cidr_keeps_its_spelling_on_the_token() -> None:
    h = await mount({"token_bound_cidrs": ["127.0.0.1/8", "::ffff:10.0.0.0/104"]})
    resp = await h.call(Operation.UPDATE, "login", {"role": "r", "jwt": token()}, remote_addr="127.0.0.2")
    assert resp is not None and resp.auth is not None
    assert resp.auth.bound_cidrs == ["127.0.0.1/8", "::ffff:10.0.0.0/104"]


#: token_strictly_bind_ip (OpenBao's): (the login's peer, the token's bound CIDRs, or the refusal).
STRICT: list[tuple[str, str | None, list[str] | str]] = [
    ("IPv4", "127.0.0.2", ["127.0.0.2"]),
    ("IPv6, shown canonical", "2001:DB8:0:0::1", ["2001:db8::1"]),
    ("IPv4-mapped, shown as IPv4", "::ffff:10.0.0.1", ["10.0.0.1"]),
    ("IPv6 with a zone, the zone dropped", "fe80::1%eth0", ["fe80::1"]),
    ("no connection", None, "token_strictly_bind_ip is set on the role, but the login's source address is not known"),
    ("not an IP", "not-an-ip", "token_strictly_bind_ip is set on the role, but the login's source address is not known"),
]


@pytest.mark.parametrize(("peer", "want"), [c[1:] for c in STRICT], ids=[c[0] for c in STRICT])
async def test_strictly_bound_tokens(peer: str | None, want: list[str] | str) -> None:
    h = await mount({"token_strictly_bind_ip": True})
    try:
        resp = await h.call(Operation.UPDATE, "login", {"role": "r", "jwt": token()}, remote_addr=peer)
    except InvalidRequest as exc:
        assert exc.messages == [want]
        return
    assert resp is not None and resp.auth is not None
    assert resp.auth.bound_cidrs == want


# -- a malformed jwt is never echoed -----------------------------------------------------------

SECRET = "S3cr3tT0k3nV4lu3"
_ALG = b64url('{"alg":"ES256"}')
_NO_ALG = b64url(json.dumps({"kid": "k", "x": SECRET}))
MALFORMED: list[tuple[str, str]] = [
    ("one part", SECRET),
    ("two parts", f"{SECRET}.{SECRET}"),
    ("four parts", f"{SECRET}.{SECRET}.{SECRET}.{SECRET}"),
    ("five parts (JWE)", ".".join([SECRET] * 5)),
    ("empty parts", f"..{SECRET}"),
    ("not base64url", f"{SECRET}!.{SECRET}.{SECRET}"),
    ("header not JSON", f"{b64url(SECRET)}.{b64url('{}')}.{SECRET}"),
    ("payload not JSON", f"{_ALG}.{b64url(SECRET)}.{SECRET}"),
    ("payload a JSON string", f"{_ALG}.{b64url(chr(34) + SECRET + chr(34))}.{SECRET}"),
    ("header without alg", f"{_NO_ALG}.{b64url('{}')}.{SECRET}"),
    ("bad signature", token(jti=SECRET)[:-4] + "AAAA"),
    ("non-ASCII", f"{SECRET}\u00e9.{SECRET}.{SECRET}"),
    ("inner whitespace", f"{SECRET} {SECRET}.{SECRET}.{SECRET}"),
    ("a newline", f"{SECRET}\n.{SECRET}.{SECRET}"),
    ("too long", f"{SECRET}." + "A" * 20000 + f".{SECRET}"),
]


@pytest.mark.parametrize("jwt", [j for _, j in MALFORMED], ids=[i for i, _ in MALFORMED])
async def test_malformed_jwt_is_never_echoed(jwt: str) -> None:
    h = await mount()
    with structlog.testing.capture_logs() as logs:
        error = await login(h, jwt)
        resp = await h.call(Operation.UPDATE, "role/r/explain", {"jwt": jwt})
    assert error is not None and error.startswith("error validating token:"), error
    for text in (error, repr(logs)):
        assert SECRET not in text and jwt not in text
    assert any(entry["event"] == "login_failed" for entry in logs)
    # explain (privileged) may show the claims of a token that parses, never the token itself.
    assert resp is not None and resp.data is not None and resp.data["would_succeed"] is False
    assert jwt not in json.dumps(resp.data)
