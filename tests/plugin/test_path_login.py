"""JWT login and renewal.

Scenarios: docs/reference/test-scenarios.md section 4; hostile input: docs/reference/security.md
2.5/2.6/2.10; deliberate differences from Vault: docs/vault-differences.md rows 1-4, 8, 11, 12.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from plugin.errors import InvalidRequest, PermissionDenied
from plugin.framework import Auth, Operation
from tests.plugin.fakes import Clock, Harness
from tests.plugin.keyfactory import FakeFetcher, ec_key, jwks, make_token, rsa_key

ISSUER = "https://team-vault.auth0.com/"
SUB = "r3qXcK2bix9eFECzsU3Sbmh0K16fatW6@clients"
AUD = "https://vault.plugin.auth.jwt.test"
CERTS = "https://idp.example.com/certs"
KEY = ec_key()
BAD_KEY = ec_key()


async def setup(kind: str = "static", *, role: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                clock: Clock | None = None) -> Harness:
    """Vault's setupBackend: a static-key (with bound_issuer) or JWKS config and role plugin-test."""
    h = Harness(fetcher=FakeFetcher({CERTS: jwks(KEY)}), clock=clock)
    if config is None:
        config = ({"bound_issuer": ISSUER, "jwt_validation_pubkeys": [KEY.pem]} if kind == "static" else {"jwks_url": CERTS})
    await h.write("config", config)
    data = {
        "role_type": "jwt", "bound_subject": SUB, "user_claim": "https://vault/user", "groups_claim": "https://vault/groups",
        "policies": "test", "period": "3s", "ttl": "1s", "num_uses": 12, "max_ttl": "5s",
        "claim_mappings": {"first_name": "name", "/org/primary": "primary_org"},
        "bound_audiences": [AUD, "another_audience"], "bound_claims": {"color": "green", "pnum": 123},
    }
    data.update(role or {})
    data = {k: v for k, v in data.items() if v is not None}
    await h.write("role/plugin-test", data)
    return h


def claims(h: Harness, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sub": SUB, "iss": ISSUER, "nbf": int(h.clock.now) - 5, "aud": [AUD],
        "https://vault/user": "jeff", "https://vault/groups": ["foo", "bar"], "first_name": "jeff2",
        "org": {"primary": "engineering"}, "color": "green", "pnum": 123,
    }
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


async def fails(h: Harness, token: str, *, role: str = "plugin-test", remote_addr: str | None = "127.0.0.1") -> str:
    with pytest.raises(InvalidRequest) as info:
        await h.login({"role": role, "jwt": token}, remote_addr=remote_addr)
    return info.value.messages[0]


KINDS = ["static", "jwks"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cidrs", [None, "127.0.0.42"], ids=["no-cidrs", "cidrs"])
async def test_valid_login(kind: str, cidrs: str | None) -> None:
    h = await setup(kind, role={"bound_cidrs": cidrs})
    resp = await h.login({"role": "plugin-test", "jwt": make_token(claims(h), key=KEY)}, remote_addr="127.0.0.42")
    auth = resp.auth
    assert isinstance(auth, Auth)
    assert auth.policies == ["test"] and auth.period == 3 and auth.ttl == 1 and auth.max_ttl == 5 and auth.num_uses == 12
    assert auth.alias is not None and auth.alias.name == "jeff" and auth.display_name == "jeff"
    assert auth.group_aliases == ["foo", "bar"]
    want_meta = {"name": "jeff2", "primary_org": "engineering", "role": "plugin-test"}
    assert auth.metadata == want_meta and auth.alias.metadata == want_meta
    assert auth.internal_data == {"role": "plugin-test"}
    assert auth.bound_cidrs == ([cidrs] if cidrs else [])


LOGIN_ERRORS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("oidc-role", {"role_type": "oidc", "allowed_redirect_uris": "http://127.0.0.1"}, {}, "role with oidc role_type is not allowed"),
    ("invalid-bound-claim", {}, {"color": None, "pnum": None}, 'error validating claims: claim "color" is missing'),
    ("wrong-bound-claim", {}, {"color": "red"}, 'error validating claims: claim "color" is "red"'),
    ("bad-audience", {}, {"aud": ["https://fault.plugin.auth.jwt.test"]},
     "error validating token: invalid audience (aud) claim: audience claim does not match any expected audience"),
    ("bad-subject", {}, {"sub": "p3qXcK2bix9eFECzsU3Sbmh0K16fatW6@clients"}, "error validating token: invalid subject (sub) claim"),
    ("missing-user-claim", {}, {"https://vault/user": None}, 'claim "https://vault/user" not found in token'),
    ("identity-before-bound-claims", {}, {"https://vault/user": None, "color": "red"}, 'claim "https://vault/user" not found'),
    ("aud-one-unbound", {"bound_audiences": None, "bound_subject": SUB}, {"aud": ["a"]}, "audience claim found in JWT but no audiences bound to the role"),
    ("aud-three-unbound", {"bound_audiences": None}, {"aud": ["a", "b", "c"]}, "audience claim found in JWT but no audiences bound to the role"),
    ("no-time-claims", {}, {"nbf": None}, "error validating token: no issued at (iat), not before (nbf), or expiration time (exp) claims in token"),
    ("groups-not-strings", {}, {"https://vault/groups": [1]}, "value 1 in groups claim could not be parsed as string"),
    ("groups-missing", {}, {"https://vault/groups": None}, 'failed to fetch groups: "https://vault/groups" claim not found in token'),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("role", "over", "message"), [c[1:] for c in LOGIN_ERRORS], ids=[c[0] for c in LOGIN_ERRORS])
async def test_login_errors(kind: str, role: dict[str, Any], over: dict[str, Any], message: str) -> None:
    h = await setup(kind, role=role)
    assert (await fails(h, make_token(claims(h, **over), key=KEY))).startswith(message)


@pytest.mark.parametrize("kind", KINDS)
async def test_bad_signature(kind: str) -> None:
    h = await setup(kind)
    msg = await fails(h, make_token(claims(h), key=BAD_KEY))
    assert msg.startswith("error validating token: error verifying token signature")


async def test_bad_issuer() -> None:
    h = await setup("static")
    msg = await fails(h, make_token(claims(h, iss="https://team-fault.auth0.com/"), key=KEY))
    # What the config is bound to is for explain and the server log (vault-differences row 2).
    assert msg == 'error validating token: invalid issuer (iss) claim: token has "https://team-fault.auth0.com/"'


@pytest.mark.parametrize(
    ("iss", "message"),
    [("https://team-vault.auth0.com", "invalid issuer (iss) claim"), ("HTTPS://TEAM-VAULT.AUTH0.COM/", "invalid issuer (iss) claim"),
     ("team-vault", "invalid issuer (iss) claim"), (None, "invalid issuer (iss) claim: token has null"),
     (5, 'claim "iss" must be a string')],
    ids=["no-trailing-slash", "case", "substring", "absent", "number"],
)
async def test_issuer_exact(iss: Any, message: str) -> None:
    h = await setup("static")
    assert message in await fails(h, make_token(claims(h, iss=iss), key=KEY))


async def test_bound_cidrs_checked_before_token() -> None:
    h = await setup("static", role={"bound_cidrs": "127.0.0.42"})
    for token in (make_token(claims(h), key=KEY), "garbage"):
        with pytest.raises(PermissionDenied):
            await h.login({"role": "plugin-test", "jwt": token}, remote_addr="127.0.0.99")
    with pytest.raises(PermissionDenied):
        await h.login({"role": "plugin-test", "jwt": make_token(claims(h), key=KEY)}, remote_addr=None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"role": "plugin-test-bad", "jwt": "x"}, 'role "plugin-test-bad" could not be found'),
        ({"jwt": "x"}, "missing role"),
        ({"role": "plugin-test"}, "missing token"),
        ({"role": "PLUGIN-TEST", "jwt": "a.b"}, "error validating token: token must have 3 dot-separated parts"),
        ({"role": "../plugin-test", "jwt": "x"}, 'role "../plugin-test" could not be found'),
        ({"role": "plugin-test/x", "jwt": "x"}, 'role "plugin-test/x" could not be found'),
    ],
    ids=["unknown-role", "no-role-no-default", "no-token", "role-lowercased", "traversal", "slash"],
)
async def test_request_errors(data: dict[str, Any], message: str) -> None:
    h = await setup("static")
    with pytest.raises(InvalidRequest) as info:
        await h.login(data)
    assert info.value.messages[0].startswith(message)


async def test_no_config() -> None:
    h = Harness()
    with pytest.raises(InvalidRequest, match="^could not load configuration$"):
        await h.login({"role": "x", "jwt": "y"})


async def test_default_role() -> None:
    h = await setup(config={"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISSUER, "default_role": "plugin-test"})
    resp = await h.login({"jwt": make_token(claims(h), key=KEY)})
    assert resp.auth is not None and resp.auth.metadata["role"] == "plugin-test"


# -- TestLoginBoundAudiences ---------------------------------------------------------------
AUDIENCE_CASES = [
    ("string-aud-unbound", None, "https://vault.plugin.auth.jwt.test", "audience claim found in JWT but no audiences bound to the role"),
    ("list-aud-unbound", None, [AUD], "audience claim found in JWT but no audiences bound to the role"),
    ("list-aud-bound", [AUD, "another_audience"], [AUD], None),
    ("string-aud-mismatch", [AUD, "another_audience"], "https://foo.com",
     "error validating token: invalid audience (aud) claim: audience claim does not match any expected audience"),
    ("string-aud-bound", [AUD, "another_audience"], AUD, None),
    ("no-aud-unbound", None, None, None),
    ("empty-string-aud-unbound", None, "", None),
    ("no-aud-bound", [AUD], None, "error validating token: invalid audience (aud) claim"),
    ("empty-list-aud-bound", [AUD], [], "error validating token: invalid audience (aud) claim"),
    ("prefix", [AUD], AUD + "x", "error validating token: invalid audience (aud) claim"),
    ("number-aud", [AUD], [1], "error validating token: invalid audience (aud) claim: must be a string or a list of strings"),
    ("number-aud-unbound", None, 5, "error validating token: invalid audience (aud) claim: must be a string"),
]


@pytest.mark.parametrize(("bound", "aud", "message"), [c[1:] for c in AUDIENCE_CASES], ids=[c[0] for c in AUDIENCE_CASES])
async def test_bound_audiences(bound: list[str] | None, aud: Any, message: str | None) -> None:
    h = await setup("static", role={"bound_audiences": bound, "bound_claims": None, "bound_subject": "subject"})
    tok = claims(h, sub="subject", aud=aud)  # aud=None drops the claim
    token = make_token(tok, key=KEY)
    if message is None:
        assert (await h.login({"role": "plugin-test", "jwt": token})).auth is not None
    else:
        assert (await fails(h, token)).startswith(message)


# -- Leeways (injected clock) ---------------------------------------------------------------
EXPIRY = [
    ("iat", -205, 0, 0, True), ("iat", -215, 0, 0, False), ("iat", -150, 10, 0, True), ("iat", -165, 10, 0, False),
    ("iat", -145, -1, 0, True), ("iat", -155, -1, 0, False), ("nbf", -205, 0, 0, True), ("nbf", -215, 0, 0, False),
    ("nbf", -145, 10, 0, True), ("nbf", -165, 10, 0, False), ("nbf", -145, -1, 0, True), ("nbf", -155, -1, 0, False),
    ("iat", -65, 0, 10, True), ("iat", -75, 0, 10, False), ("iat", -5, 10, 10, True), ("iat", -25, 10, 10, False),
    ("iat", -5, 10, -1, True), ("iat", -15, 10, -1, False), ("nbf", -65, 0, 10, True), ("nbf", -75, 0, 10, False),
    ("nbf", -5, 10, 10, True), ("nbf", -25, 10, 10, False), ("nbf", -5, 10, -1, True), ("nbf", -5, 10, -100, True),
    ("nbf", -15, 10, -1, False), ("nbf", -15, 10, -100, False),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("claim", "offset", "cs", "el", "ok"), EXPIRY, ids=[f"{c}{o}-cs{s}-el{e}" for c, o, s, e, _ in EXPIRY])
async def test_expiry_leeways(kind: str, claim: str, offset: int, cs: int, el: int, ok: bool) -> None:
    clock = Clock(1_700_000_000.0)
    h = await setup(kind, role={"clock_skew_leeway": cs, "expiration_leeway": el, "not_before_leeway": 0}, clock=clock)
    tok = claims(h, nbf=None)
    tok[claim] = int(clock.now) + offset
    token = make_token(tok, key=KEY)
    if ok:
        assert (await h.login({"role": "plugin-test", "jwt": token})).auth is not None
    else:
        assert "invalid expiration time (exp) claim: token is expired" in await fails(h, token)


NOT_BEFORE = [
    (55, 0, 0, -1, True), (65, 0, 0, -1, False), (5, None, 10, -1, True), (15, None, 10, -1, False),
    (0, None, -1, 5, True), (6, None, -1, 5, False), (None, 205, 0, 0, True), (None, 215, 0, 0, False),
    (None, 150, 10, 0, True), (None, 165, 10, 0, False), (None, 145, -1, 0, True), (None, 152, -1, 0, False),
    (None, 65, 0, 10, True), (None, 75, 0, 10, False), (None, 15, 10, 10, True), (None, 25, 10, 10, False),
    (None, 3, -1, 5, True), (None, 3, -100, 5, True), (None, 7, -1, 5, False), (None, 7, -100, 5, False),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("iat", "exp", "cs", "nl", "ok"), NOT_BEFORE, ids=[f"iat{i}-exp{e}-cs{c}-nl{n}" for i, e, c, n, _ in NOT_BEFORE])
async def test_not_before_leeways(kind: str, iat: int | None, exp: int | None, cs: int, nl: int, ok: bool) -> None:
    clock = Clock(1_700_000_000.0)
    h = await setup(kind, role={"clock_skew_leeway": cs, "not_before_leeway": nl, "expiration_leeway": 0}, clock=clock)
    tok = claims(h, nbf=None)
    now = int(clock.now)
    if iat is not None:
        tok["iat"] = now + iat
    if exp is not None:
        tok["exp"] = now + exp
    token = make_token(tok, key=KEY)
    if ok:
        assert (await h.login({"role": "plugin-test", "jwt": token})).auth is not None
    else:
        msg = await fails(h, token)
        assert "token not yet valid" in msg or "token issued in the future" in msg


TIME_TYPES = [
    ("exp-string", {"exp": "9999999999"}, 'claim "exp" must be a JSON number'),
    ("exp-padded-string", {"exp": " 1 "}, 'claim "exp" must be a JSON number'),
    ("exp-bool", {"exp": True}, 'claim "exp" must be a JSON number'),
    ("exp-null", {"exp": None}, 'claim "exp" must be a JSON number'),
    ("exp-list", {"exp": []}, 'claim "exp" must be a JSON number'),
    ("exp-object", {"exp": {}}, 'claim "exp" must be a JSON number'),
    ("iat-string", {"iat": "1"}, 'claim "iat" must be a JSON number'),
    ("exp-huge", {"exp": 1e20}, 'claim "exp" is out of range'),
    ("exp-2-64", {"exp": 2**64}, 'claim "exp" is out of range'),
    ("nbf-negative", {"nbf": -5}, 'claim "nbf" is out of range'),
    ("sub-number", {"sub": 5}, 'claim "sub" must be a string, got 5'),
    ("sub-null", {"sub": None}, 'claim "sub" must be a string, got null'),
    ("sub-list", {"sub": [SUB]}, 'claim "sub" must be a string'),
    ("iss-object", {"iss": {"a": 1}}, 'claim "iss" must be a string'),
    ("jti-bool", {"jti": True}, 'claim "jti" must be a string'),
]


@pytest.mark.parametrize(("over", "message"), [c[1:] for c in TIME_TYPES], ids=[c[0] for c in TIME_TYPES])
async def test_time_claim_types(over: dict[str, Any], message: str) -> None:
    h = await setup("static")
    tok = claims(h)
    tok.update(over)  # update, not claims(**over): a None value must stay in the token
    assert message in await fails(h, make_token(tok, key=KEY))


async def test_time_claim_not_finite_rejected() -> None:
    h = await setup("static")
    for literal in (b"NaN", b"Infinity", b"1e400"):
        raw = b'{"sub": "%s", "aud": "%s", "https://vault/user": "jeff", "exp": %s}' % (SUB.encode(), AUD.encode(), literal)
        msg = await fails(h, make_token(raw, key=KEY))
        assert msg.startswith("error validating token:"), msg


async def test_float_times_truncated() -> None:
    clock = Clock(1_700_000_000.0)
    h = await setup("static", clock=clock)
    tok = claims(h, nbf=None, exp=clock.now + 100.9, iat=clock.now - 0.5)
    assert (await h.login({"role": "plugin-test", "jwt": make_token(tok, key=KEY)})).auth is not None


# -- max_token_age (docs/vault-differences.md row 8) ---------------------------------------
@pytest.mark.parametrize(
    ("iat", "ok", "message"),
    [(-100, True, ""), (-300 - 60, True, ""), (-300 - 61, False, "token is too old"), (None, False, "requires an issued at (iat) claim")],
    ids=["fresh", "at-limit-with-skew", "too-old", "no-iat"],
)
async def test_max_token_age(iat: int | None, ok: bool, message: str) -> None:
    clock = Clock(1_700_000_000.0)
    h = await setup("static", role={"max_token_age": "5m"}, clock=clock)
    tok = claims(h, exp=int(clock.now) + 600)
    if iat is not None:
        tok["iat"] = int(clock.now) + iat
    token = make_token(tok, key=KEY)
    if ok:
        assert (await h.login({"role": "plugin-test", "jwt": token})).auth is not None
    else:
        assert message in await fails(h, token)


# -- TestLogin_JWTSupportedAlgs -----------------------------------------------------------
@pytest.mark.parametrize(
    ("algs", "ok"),
    [(None, True), (["ES256"], True), (["RS256", "ES256", "EdDSA"], True), (["RS256"], False), (["RS256", "ES512", "EdDSA"], False)],
    ids=["unset", "es256", "three", "rs256-only", "others"],
)
async def test_supported_algs(algs: list[str] | None, ok: bool) -> None:
    config: dict[str, Any] = {"jwt_validation_pubkeys": [KEY.pem]}
    if algs:
        config["jwt_supported_algs"] = algs
    h = await setup(config=config, role={"user_claim": "email", "bound_claims": None, "claim_mappings": None, "groups_claim": ""})
    token = make_token({"email": "vault@hashicorp.com", "sub": SUB, "aud": AUD, "nbf": int(h.clock.now) - 5}, key=KEY)
    if ok:
        assert (await h.login({"role": "plugin-test", "jwt": token}, remote_addr=None)).auth is not None
    else:
        assert "invalid algorithm (alg) header parameter: token signed with unexpected algorithm" in await fails(h, token)


async def test_rsa_key_with_default_algs() -> None:
    key = rsa_key()
    h = await setup(config={"jwt_validation_pubkeys": [key.pem]})
    assert (await h.login({"role": "plugin-test", "jwt": make_token(claims(h), key=key)})).auth is not None
    hs = make_token(claims(h), key=key.pem.encode(), alg="HS256")  # key confusion: public key as HMAC secret
    assert "unexpected algorithm" in await fails(h, hs)
    assert (await fails(h, make_token(claims(h), alg="none"))).startswith("error validating token: ")
    assert "unexpected algorithm" in await fails(h, make_token(claims(h), alg="none", signature=b"x"))


# -- groups (TestLogin_NestedGroups, string groups) ----------------------------------------
async def test_nested_groups_pointer() -> None:
    h = await setup(config={"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": ISSUER, "jwt_supported_algs": "ES256"},
                    role={"groups_claim": "/https/~1~1vault~1groups/testing"})
    tok = claims(h, **{"https://vault/groups": None})
    tok["https"] = {"//vault/groups": {"testing": ["foo", "bar"]}}
    resp = await h.login({"role": "plugin-test", "jwt": make_token(tok, key=KEY)})
    assert resp.auth is not None and resp.auth.group_aliases == ["foo", "bar"]


async def test_string_group_claim() -> None:
    h = await setup(role={"groups_claim": "https://vault/groups/string"})
    tok = claims(h, **{"https://vault/groups/string": "just_a_string"})
    resp = await h.login({"role": "plugin-test", "jwt": make_token(tok, key=KEY)})
    assert resp.auth is not None and resp.auth.group_aliases == ["just_a_string"]


async def test_claim_mappings_stringify_and_list_mappings() -> None:
    """docs/vault-differences.md row 3 + Consul list_claim_mappings (seed 003)."""
    h = await setup(role={"claim_mappings": {"level": "level", "admin": "admin"}, "list_claim_mappings": {"http://example.com/groups": "groups"}})
    tok = claims(h, level=7, admin=False, **{"http://example.com/groups": ["dev", "ops", 3]})
    resp = await h.login({"role": "plugin-test", "jwt": make_token(tok, key=KEY)})
    assert resp.auth is not None
    assert resp.auth.metadata == {"level": "7", "admin": "false", "groups": "dev,ops,3", "role": "plugin-test"}


async def test_bound_claims_numbers_type_strict() -> None:
    h = await setup()
    msg = await fails(h, make_token(claims(h, pnum="123"), key=KEY))
    assert msg == 'error validating claims: claim "pnum" is "123"'
    assert (await h.login({"role": "plugin-test", "jwt": make_token(claims(h, pnum=123.0), key=KEY)})).auth is not None


async def test_root_policy_refused_in_any_spelling() -> None:
    for spelling in (" root", "Root", "ROOT", "root "):
        h = await setup(role={"token_policies": ["dev", spelling]})
        assert await fails(h, make_token(claims(h), key=KEY)) == "auth methods cannot create root tokens"


# -- key sources: docs/vault-differences.md rows 1 and 12, SPIFFE glob (seed 001) ----------
async def test_discovery_with_client_secret_allows_jwt_login() -> None:
    """docs/vault-differences.md row 1: Vault says 'unsupported config type'; we verify against the discovery JWKS."""
    issuer = "https://idp.example.com"
    fetcher = FakeFetcher({issuer + "/.well-known/openid-configuration": {"issuer": issuer, "jwks_uri": CERTS}, CERTS: jwks(KEY)})
    h = Harness(fetcher=fetcher)
    await h.write("config", {"oidc_discovery_url": issuer, "oidc_client_id": "abc", "oidc_client_secret": "def"})
    await h.write("role/r", {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "vault"})
    token = make_token({"sub": "alice", "aud": "vault", "iss": issuer, "exp": int(h.clock.now) + 60}, key=KEY)
    resp = await h.login({"role": "r", "jwt": token})
    assert resp.auth is not None and resp.auth.alias is not None and resp.auth.alias.name == "alice"


async def test_spiffe_glob_login() -> None:
    """A SPIRE JWT-SVID via OIDC discovery with glob bound_subject (seed 001, docs/vault-differences.md row 11)."""
    issuer = "https://spire.example.org"
    fetcher = FakeFetcher({issuer + "/.well-known/openid-configuration": {"issuer": issuer, "jwks_uri": issuer + "/keys"},
                           issuer + "/keys": jwks(KEY.with_kid("spire-1"))})
    h = Harness(fetcher=fetcher)
    await h.write("config", {"oidc_discovery_url": issuer, "bound_issuer": issuer})
    await h.write("role/spire", {"role_type": "jwt", "user_claim": "sub", "bound_claims_type": "glob",
                                 "bound_subject": "spiffe://example.org/ns/*/sa/*", "bound_audiences": ["authmount", "vault-*"]})
    now = int(h.clock.now)
    key = KEY.with_kid("spire-1")

    def svid(sub: str, aud: Any) -> str:
        return make_token({"sub": sub, "aud": aud, "iss": issuer, "iat": now, "exp": now + 300}, key=key)

    resp = await h.login({"role": "spire", "jwt": svid("spiffe://example.org/ns/prod/sa/api", ["authmount"])})
    assert resp.auth is not None and resp.auth.alias is not None
    assert resp.auth.alias.name == "spiffe://example.org/ns/prod/sa/api"
    assert (await h.login({"role": "spire", "jwt": svid("spiffe://example.org/ns/dev/sa/web", "vault-eu")})).auth is not None
    assert "invalid subject (sub) claim" in await fails(h, svid("spiffe://evil.org/ns/prod/sa/api", "authmount"), role="spire")
    assert "invalid subject (sub) claim" in await fails(h, svid("spiffe://example.org/ns/prod/api", "authmount"), role="spire")
    assert "invalid audience (aud) claim" in await fails(h, svid("spiffe://example.org/ns/prod/sa/api", "other"), role="spire")


@pytest.mark.parametrize(
    ("algs", "alg", "ok"),
    [(None, "HS256", True), (None, "HS384", False), (["HS384", "HS512"], "HS512", True), (["HS384"], "HS256", False)],
    ids=["default-hs256", "default-refuses-hs384", "hs512-allowed", "hs256-not-allowed"],
)
async def test_hmac_login(algs: list[str] | None, alg: str, ok: bool) -> None:
    """docs/vault-differences.md row 12 / Connectum: HMAC secret key source."""
    secret = "k" * 32
    config: dict[str, Any] = {"jwt_validation_hmac_secrets": ["x" * 40, secret]}
    if algs:
        config["jwt_supported_algs"] = algs
    h = await setup(config=config)
    token = make_token(claims(h, iss=None), key=secret, alg=alg)
    if ok:
        assert (await h.login({"role": "plugin-test", "jwt": token})).auth is not None
        wrong = make_token(claims(h, iss=None), key="w" * 32, alg=alg)
        assert "error verifying token signature" in await fails(h, wrong)
    else:
        assert "unexpected algorithm" in await fails(h, token)


async def test_hmac_source_refuses_asymmetric_tokens() -> None:
    h = await setup(config={"jwt_validation_hmac_secrets": ["k" * 32]})
    assert "unexpected algorithm" in await fails(h, make_token(claims(h), key=KEY))


async def test_key_source_cached_and_rebuilt_on_config_write() -> None:
    h = await setup("jwks")
    for _ in range(3):
        await h.login({"role": "plugin-test", "jwt": make_token(claims(h), key=KEY)})
    assert h.fetcher.count(CERTS) == 1  # fetched by the config write's check, then cached
    other = ec_key()
    h.fetcher.routes[CERTS] = jwks(other)
    await h.write("config", {"jwks_url": CERTS})
    await h.login({"role": "plugin-test", "jwt": make_token(claims(h), key=other)})


async def test_jwks_concurrent_logins() -> None:
    """TestLogin_JWKS_Concurrent (scaled down): the cached validator and key set are shared safely."""
    h = await setup("jwks", role={"clock_skew_leeway": -1})
    h.backend.invalidate("config")  # start cold: the first logins race to build the key source
    tokens = [make_token(claims(h, first_name=f"u{i}"), key=KEY) for i in range(40)]
    results = await asyncio.gather(*(h.login({"role": "plugin-test", "jwt": t}) for t in tokens))
    assert [r.auth.metadata["name"] for r in results if r.auth] == [f"u{i}" for i in range(40)]
    assert h.fetcher.count(CERTS) <= 2  # the config write's check, then at most one cold fetch


# -- logging ---------------------------------------------------------------------------------
async def test_login_failure_logged_without_token() -> None:
    h = await setup("static")
    token = make_token(claims(h, color="red"), key=KEY)
    with structlog.testing.capture_logs() as logs:
        await fails(h, token, remote_addr="10.1.2.3")
    entries = [e for e in logs if e["event"] == "login_failed"]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["role"] == "plugin-test" and entry["remote_addr"] == "10.1.2.3" and entry["mount"] == "auth/jwt/"
    assert entry["reason"].startswith("error validating claims:")
    assert token not in repr(logs) and token.split(".")[2] not in repr(logs)


# -- renewal and unauthenticated paths -------------------------------------------------------
async def test_renew() -> None:
    h = await setup("static")
    resp = await h.login({"role": "plugin-test", "jwt": make_token(claims(h), key=KEY)})
    assert resp.auth is not None
    await h.write("role/plugin-test", {"role_type": "jwt", "token_ttl": "1h", "token_max_ttl": "2h", "token_period": 0,
                                        "token_policies": "a,B"})
    from plugin.framework import Request

    renewed = await h.backend.handle_request(Request(Operation.RENEW, "login", storage=h.storage, system=h.system, auth=resp.auth))
    assert renewed is not None and renewed.auth is not None
    assert (renewed.auth.ttl, renewed.auth.max_ttl, renewed.auth.period) == (3600, 7200, 0)
    assert renewed.auth.policies == ["a", "b"]
    await h.call(Operation.DELETE, "role/plugin-test")
    with pytest.raises(InvalidRequest, match="^role plugin-test does not exist during renewal$"):
        await h.backend.handle_request(Request(Operation.RENEW, "login", storage=h.storage, system=h.system, auth=resp.auth))


def test_unauthenticated_paths_exact() -> None:
    from plugin.backend import JWTAuthBackend

    b = JWTAuthBackend()
    assert b.is_unauthenticated("login")
    assert b.is_unauthenticated("cel/login")
    for path in ("config", "role", "role/x", "role/x/explain", "login/x", "cel/role/", "cel/role/x",
                 "cel/role/x/explain", "cel/login/x"):
        assert not b.is_unauthenticated(path)
    names = {s.pattern for s in b.paths if s.unauthenticated}
    assert names <= {"login", "oidc/auth_url", "oidc/callback", "oidc/poll", "cel/login"}


@pytest.mark.parametrize(
    ("path", "route", "summary", "description"),
    [
        ("login", "/auth/jwt/login", "Authenticates to Vault using a JWT (or OIDC) token.",  # Vault's synopsis
         "Validates the JWT against the role and the mount's key source and issues a token."),
        ("role/r/explain", "/auth/jwt/role/{name}/explain",
         "Explain how a login with this role and JWT would go, without issuing a token.",
         "Runs every login check for the given JWT and returns each outcome."),
    ],
    ids=["login", "explain"],
)
def test_path_help(path: str, route: str, summary: str, description: str) -> None:
    """What ``vault path-help`` and the OpenAPI document say of the login paths."""
    from plugin.backend import JWTAuthBackend

    b = JWTAuthBackend()
    found = b.resolve(path)
    assert found is not None
    doc = b.help(found, path, "auth/jwt/")
    for documented in (b.openapi_paths("auth/jwt/")[route], doc["openapi"]["paths"][route.removeprefix("/auth/jwt")]):
        assert documented["post"]["summary"] == summary
        assert documented["post"]["description"] == description
    assert summary in doc["help"] and description in doc["help"]


def test_registered() -> None:
    from plugin.registry import factory_for

    for kind in ("jwt", "oidc"):
        factory = factory_for(kind)
        assert factory is not None and factory().type_name == kind


HOSTILE_CLAIMS: list[Any] = [None, {}, [], [[]], {"a": {"b": []}}, [None], 1e308, -(2**70), 2**80, True, "", "x" * 3000, [1, "a"], 1.5]
CLAIM_NAMES = ["sub", "iss", "aud", "exp", "nbf", "iat", "jti", "https://vault/user", "https://vault/groups", "first_name", "org",
               "color", "pnum"]


@pytest.mark.parametrize("name", CLAIM_NAMES)
async def test_hostile_claims_give_4xx(name: str) -> None:
    """Malformed claim values give a 4xx naming the failed check (login) or a report (explain), never a crash."""
    h = await setup("static")
    for value in HOSTILE_CLAIMS:
        tok = claims(h, exp=int(h.clock.now) + 60)
        tok[name] = value
        token = make_token(tok, key=KEY)
        try:
            await h.login({"role": "plugin-test", "jwt": token})
        except InvalidRequest as exc:
            assert exc.messages and exc.messages[0]
        resp = await h.write("role/plugin-test/explain", {"jwt": token})
        assert resp is not None and resp.data is not None and isinstance(resp.data["would_succeed"], bool)


async def test_jwks_pairs_login_needs_kid() -> None:
    a, b = ec_key("a1"), ec_key("b1")
    urls = ("https://a.example.com/certs", "https://b.example.com/certs")
    h = Harness(fetcher=FakeFetcher({urls[0]: jwks(a), urls[1]: jwks(b)}))
    await h.write("config", {"jwks_pairs": [{"jwks_url": urls[0]}, {"jwks_url": urls[1]}]})
    await h.write("role/r", {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "vault"})
    tok = {"sub": "svc", "aud": "vault", "exp": int(h.clock.now) + 60}
    for key in (a, b):
        assert (await h.login({"role": "r", "jwt": make_token(tok, key=key)})).auth is not None
    assert "token missing kid header parameter" in await fails(h, make_token(tok, key=b.with_kid(None)), role="r")
    assert "no key found with kid" in await fails(h, make_token(tok, key=b.with_kid("zz")), role="r")


#: (case, login data (None: a valid token with these claims changed), what the refusal records
#: for the audit log and the login metrics: the role only when it exists, ``iss`` and ``sub``
#: only when the token has them as strings).
LOGIN_FACTS: list[tuple[str, dict[str, Any] | None, dict[str, Any], dict[str, str]]] = [
    ("unknown role", {"role": "nope", "jwt": "x"}, {}, {}),
    ("no token", {"role": "plugin-test"}, {}, {"role": "plugin-test"}),
    ("not a JWT", {"role": "plugin-test", "jwt": "a.b"}, {}, {"role": "plugin-test"}),
    ("a later check fails", None, {"color": "red"}, {"role": "plugin-test", "iss": ISSUER, "sub": SUB}),
    ("only a subject", None, {"iss": None, "sub": "someone"}, {"role": "plugin-test", "sub": "someone"}),
    ("a non-string subject", None, {"sub": 7}, {"role": "plugin-test", "iss": ISSUER}),
    ("a non-string issuer", None, {"iss": ["x"]}, {"role": "plugin-test", "sub": SUB}),
]


@pytest.mark.parametrize(("data", "over", "facts"), [c[1:] for c in LOGIN_FACTS], ids=[c[0] for c in LOGIN_FACTS])
async def test_refusal_records_role_issuer_and_subject(data: dict[str, Any] | None, over: dict[str, Any],
                                                       facts: dict[str, str]) -> None:
    h = await setup("static")
    if data is None:
        tok = claims(h)
        tok.update(over)
        data = {"role": "plugin-test", "jwt": make_token({k: v for k, v in tok.items() if v is not None}, key=KEY)}
    with structlog.testing.capture_logs() as logs, pytest.raises(InvalidRequest) as info:
        await h.login(data)
    assert info.value.login == facts
    assert [e["event"] for e in logs] == ["login_failed"]


async def test_refused_without_a_known_role_records_none() -> None:
    """``refused`` records a role only when the caller names one that exists."""
    from plugin.framework import Request
    from plugin.path_login import refused

    h = Harness()
    req = Request(operation=Operation.UPDATE, path="login", system=h.system)
    exc = InvalidRequest("no")
    refused(req, exc, "login_failed", claims={"iss": "i", "sub": "s"})
    assert exc.login == {"iss": "i", "sub": "s"}


@pytest.mark.parametrize("templated", [False, True], ids=["plain policies", "templated policies"])
async def test_login_records_the_policy_templates_for_renewal(templated: bool) -> None:
    h = await setup("static", role={"policies": ["base", "team-{{ .color }}"] if templated else ["base"],
                                    "token_policies_template_claims": templated})
    resp = await h.login({"role": "plugin-test", "jwt": make_token(claims(h), key=KEY)})
    assert resp.auth is not None
    if templated:
        assert resp.auth.policies == ["base", "team-green"]
        assert resp.auth.internal_data == {"role": "plugin-test", "policy_templates": ["base", "team-{{ .color }}"]}
    else:
        assert resp.auth.policies == ["base"]
        assert resp.auth.internal_data == {"role": "plugin-test"}
