"""role/<name>/explain (docs/vault-differences.md row 13): every login check reported, nothing issued."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.errors import InvalidRequest
from plugin.path_login import CHECKS
from tests.plugin.fakes import Harness
from tests.plugin.keyfactory import KeyPair, ec_key, make_token

KEY = ec_key()
OTHER = ec_key()


@pytest.fixture
async def h() -> Harness:
    h = Harness()
    await h.write("config", {"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": "https://idp"})
    await h.write("role/ci", {
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": "vault", "groups_claim": "groups",
        "claim_mappings": {"repo": "repo"},
        "bound_claims": {"ref": ["release/*", "main"], "env": "prod", "team": "infra"}, "bound_claims_type": "glob",
    })
    return h


def token(h: Harness, key: KeyPair | bytes | str | None = KEY, **over: Any) -> str:
    claims: dict[str, Any] = {"sub": "ci-bot", "aud": "vault", "iss": "https://idp", "iat": int(h.clock.now),
                              "exp": int(h.clock.now) + 300, "ref": "release/1.2", "env": "prod", "team": "infra",
                              "repo": "org/app", "groups": ["ci"]}
    for k, v in over.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return make_token(claims, key=key)


async def explain(h: Harness, jwt: str, role: str = "ci", **extra: Any) -> dict[str, Any]:
    resp = await h.write(f"role/{role}/explain", {"jwt": jwt, **extra})
    assert resp is not None and resp.auth is None and resp.data is not None
    return resp.data


def by_name(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for check in data["checks"]:
        out.setdefault(check["check"], []).append(check)
    return out


async def test_success(h: Harness) -> None:
    data = await explain(h, token(h))
    assert data["would_succeed"] is True
    assert all(c["ok"] for c in data["checks"])
    # One outcome per validator, in the validators' order: the list is the single source.
    assert [c["check"] for c in data["checks"]] == [c.name for c in CHECKS]
    skipped = {c["check"] for c in data["checks"] if c.get("skipped")}
    # the role binds neither; the token names no distributed claims
    assert skipped == {"bound_cidrs", "subject", "max_token_age", "token_policies", "distributed_claims"}
    assert data["claims"]["sub"] == "ci-bot"
    assert data["identity"] == {"alias_name": "ci-bot", "metadata": {"repo": "org/app", "role": "ci"}, "groups": ["ci"]}


async def test_reports_every_bound_claim(h: Harness) -> None:
    data = await explain(h, token(h, ref="main2", env="dev"))
    assert data["would_succeed"] is False
    [bound] = by_name(data)["bound_claims"]
    assert bound["ok"] is False
    assert bound["detail"] == (
        'error validating claims: claim "ref" is "main2", role expects one of ["release/*", "main"]; '
        'error validating claims: claim "env" is "dev", role expects one of ["prod"]'
    )


async def test_continues_past_signature_failure(h: Harness) -> None:
    data = await explain(h, token(h, key=OTHER, aud="other", exp=int(h.clock.now) - 3600, iat=int(h.clock.now) - 7200))
    checks = by_name(data)
    assert data["would_succeed"] is False
    assert checks["signature"][0]["ok"] is False
    assert checks["audience"][0]["ok"] is False and "role expects one of" in checks["audience"][0]["detail"]
    assert checks["time"][0]["ok"] is False and "token is expired" in checks["time"][0]["detail"]
    assert all(c["ok"] for c in checks["bound_claims"])
    assert data["claims"]["aud"] == "other"


async def test_identity_failures_reported(h: Harness) -> None:
    data = await explain(h, token(h, sub=None, groups=[1]))
    checks = by_name(data)
    assert checks["user_claim"][0]["ok"] is False and checks["groups"][0]["ok"] is False
    assert "identity" not in data


async def test_unparseable_token(h: Harness) -> None:
    data = await explain(h, "not-a-jwt")
    assert data["would_succeed"] is False and data["claims"] is None
    assert by_name(data)["parse"][0]["detail"].startswith("error validating token:")
    after = data["checks"][[c["check"] for c in data["checks"]].index("parse") + 1:]
    assert [c["check"] for c in after] == [c.name for c in CHECKS][-len(after):]
    assert all(c["ok"] and c.get("skipped") for c in after)
    assert by_name(data)["time"][0]["detail"] == "not evaluated: the token could not be parsed"


async def test_oidc_role_reported(h: Harness) -> None:
    await h.write("role/web", {"user_claim": "sub", "allowed_redirect_uris": "https://x", "bound_audiences": "vault"})
    data = await explain(h, token(h), role="web")
    assert data["would_succeed"] is False
    assert by_name(data)["role_type"][0] == {"check": "role_type", "ok": False, "detail": "role with oidc role_type is not allowed"}


@pytest.mark.parametrize(
    ("extra", "ok", "skipped"),
    [({}, True, True), ({"remote_addr": "10.0.0.5"}, True, False), ({"remote_addr": "192.168.1.1"}, False, False)],
    ids=["skipped", "inside", "outside"],
)
async def test_bound_cidrs(h: Harness, extra: dict[str, Any], ok: bool, skipped: bool) -> None:
    await h.write("role/ci", {"role_type": "jwt", "bound_claims_type": "glob", "token_bound_cidrs": "10.0.0.0/8"})
    data = await explain(h, token(h), **extra)
    cidr = by_name(data)["bound_cidrs"][0]
    assert cidr["ok"] is ok and cidr.get("skipped", False) is skipped
    assert data["would_succeed"] is ok


@pytest.mark.parametrize(
    ("role", "data", "message"),
    [("ci", {}, "missing token"), ("nope", {"jwt": "x"}, 'role "nope" could not be found')],
    ids=["no-jwt", "unknown-role"],
)
async def test_request_errors(h: Harness, role: str, data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        await h.write(f"role/{role}/explain", data)
    assert info.value.messages == [message]


async def test_issues_nothing_and_needs_token(h: Harness) -> None:
    assert not h.backend.is_unauthenticated("role/ci/explain")
    before = dict(h.storage._data)
    await explain(h, token(h))
    assert h.storage._data == before


async def test_unknown_kid_is_named_in_explain_and_in_the_login_error() -> None:
    """Issue 12: the kid, the kids the cached set holds and when it was fetched."""
    from tests.plugin.keyfactory import FakeFetcher, jwks

    certs = "https://idp.example.com/certs"
    known = ec_key(kid="key-2026")
    h = Harness(fetcher=FakeFetcher({certs: jwks(known)}))
    await h.write("config", {"jwks_url": certs})
    await h.write("role/ci", {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "vault"})
    stranger = token(h, key=ec_key(kid="key-2027"), iss=None)
    data = await explain(h, stranger)
    [signature] = by_name(data)["signature"]
    assert not signature["ok"]
    assert "no key with kid key-2027: the key set from https://idp.example.com/certs holds kids [key-2026]" in (
        signature["detail"])
    with pytest.raises(InvalidRequest) as exc:
        await h.login({"role": "ci", "jwt": stranger})
    assert exc.value.messages == [signature["detail"]]


def outcomes(data: dict[str, Any]) -> list[tuple[str, bool, str, bool]]:
    """Every outcome as (check, ok, detail, skipped), in order."""
    return [(c["check"], c["ok"], c["detail"], c.get("skipped", False)) for c in data["checks"]]


async def test_every_outcome_of_a_passing_login_in_full(h: Harness) -> None:
    """What explain says of each check, word for word (the role binds no subject, CIDR or age)."""
    now = int(h.clock.now)
    data = await explain(h, token(h))
    assert data["would_succeed"] is True and data["role"] == "ci"
    assert outcomes(data) == [
        ("role_type", True, "jwt", False),
        ("bound_cidrs", True, "the role has no token_bound_cidrs", True),
        ("parse", True, "alg ES256", False),
        ("algorithm", True, "ES256 is allowed", False),
        ("signature", True, "verified", False),
        ("issuer", True, "matches bound_issuer", False),
        ("subject", True, "the role has no bound_subject", True),
        ("audience", True, "matches bound_audiences", False),
        ("time", True, f"valid from {now} until {now + 300}, now {now}", False),
        ("max_token_age", True, "the role has no max_token_age", True),
        ("distributed_claims", True, "the token names no distributed or aggregated claims", True),
        ("user_claim", True, 'alias name "ci-bot"', False),
        ("claim_mappings", True, "1 metadata keys", False),
        ("groups", True, "1 groups", False),
        ("bound_claims", True, "3 claims match", False),
        ("token_policies", True, "the role's token_policies are not templates", True),
    ]
    assert "policies" not in data


async def test_every_outcome_of_the_other_branches_in_full() -> None:
    """The other side of each check: no bound issuer, a bound subject and CIDR, no audience,
    max_token_age, no groups claim, no bound claims, templated policies, a token with a kid."""
    h = Harness()
    now = int(h.clock.now)
    await h.write("config", {"jwt_validation_pubkeys": [KEY.pem]})
    await h.write("role/r", {
        "role_type": "jwt", "user_claim": "sub", "bound_subject": "ci-bot", "token_bound_cidrs": ["10.0.0.0/8"],
        "max_token_age": 600, "token_policies": ["p-{{ .team }}", "base"], "token_policies_template_claims": True,
    })
    jwt = make_token({"sub": "ci-bot", "iat": now - 7, "team": "infra"}, key=KEY, kid="k-1")
    data = await explain(h, jwt, role="r", remote_addr="10.1.2.3")
    assert data["would_succeed"] is True and data["role"] == "r"
    assert outcomes(data) == [
        ("role_type", True, "jwt", False),
        ("bound_cidrs", True, "the address is in token_bound_cidrs", False),
        ("parse", True, "alg ES256, kid k-1", False),
        ("algorithm", True, "ES256 is allowed", False),
        ("signature", True, "verified", False),
        ("issuer", True, "the config has no bound_issuer", True),
        ("subject", True, "matches bound_subject", False),
        ("audience", True, "no audience, none bound", False),
        ("time", True, f"valid from {now - 7} until {now - 7 + 150}, now {now}", False),
        ("max_token_age", True, "issued 7s ago", False),
        ("distributed_claims", True, "the token names no distributed or aggregated claims", True),
        ("user_claim", True, 'alias name "ci-bot"', False),
        ("claim_mappings", True, "0 metadata keys", False),
        ("groups", True, "the role has no groups_claim", True),
        ("bound_claims", True, "the role has no bound_claims", True),
        ("token_policies", True, 'policies ["base", "p-infra"]', False),
    ]
    assert data["policies"] == ["base", "p-infra"]
    assert data["identity"] == {"alias_name": "ci-bot", "metadata": {"role": "r"}, "groups": []}
    # Without remote_addr the CIDR check is not evaluated; outside the CIDRs it fails, saying where.
    data = await explain(h, jwt, role="r")
    assert outcomes(data)[1] == ("bound_cidrs", True, "not evaluated: no remote_addr given", True)
    data = await explain(h, jwt, role="r", remote_addr="192.0.2.1")
    assert outcomes(data)[1] == ("bound_cidrs", False, 'permission denied: 192.0.2.1 is not in ["10.0.0.0/8"]', False)
    assert data["would_succeed"] is False


async def test_refusals_in_full(h: Harness) -> None:
    """The detail of a failed check: the message, then what the role or config expects."""
    await h.write("config", {"jwt_validation_pubkeys": [KEY.pem], "bound_issuer": "https://idp",
                             "jwt_supported_algs": ["RS256"]})
    data = await explain(h, token(h, iss="https://other", ref="x", env="dev", team="ops", sub=7))
    checks = {c[0]: c for c in outcomes(data)}
    assert checks["parse"] == ("parse", False, 'error validating token: claim "sub" must be a string, got 7', False)
    assert checks["signature"] == ("signature", True, "not evaluated: the algorithm is not allowed", True)
    assert checks["issuer"] == (
        "issuer", False,
        'error validating token: invalid issuer (iss) claim: token has "https://other", expected "https://idp"', False,
    )
    # Every failed bound claim is in the detail, one after another.
    assert checks["bound_claims"] == ("bound_claims", False, (
        'error validating claims: claim "ref" is "x", role expects one of ["release/*", "main"]; '
        'error validating claims: claim "env" is "dev", role expects one of ["prod"]; '
        'error validating claims: claim "team" is "ops", role expects one of ["infra"]'
    ), False)


@pytest.mark.parametrize(
    "over",
    [{"sub": None}, {"groups": [1]}, {"repo": ["a", ["b"]]}],
    ids=["only the user claim fails", "only the groups fail", "only a claim mapping fails"],
)
async def test_no_identity_when_one_identity_check_fails(h: Harness, over: dict[str, Any]) -> None:
    data = await explain(h, token(h, **over))
    assert [c["check"] for c in data["checks"] if not c["ok"]] == [
        {"sub": "user_claim", "groups": "groups", "repo": "claim_mappings"}[next(iter(over))]
    ]
    assert "identity" not in data
