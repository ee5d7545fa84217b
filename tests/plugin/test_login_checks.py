"""The login checks (``path_login.CHECKS``): one ordered list of named validators that JWT
login, explain and the OIDC callback all run; each check's name is its reason code.

A refused login tells an anonymous caller which check failed and what the token has, never
what the role or config is bound to (issue 15, section 4): those values are in explain, in
the server log's ``login_failed`` line, and in the answer only with ``verbose_login_errors``.
The expected values below are distinctive strings ("secret-...-x") so their absence is a
real check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from plugin.errors import InvalidRequest, PermissionDenied, PluginError
from plugin.framework import Operation
from plugin.path_login import CHECKS, OIDC_CLAIM_CHECKS, OIDC_REQUEST_CHECKS
from tests.plugin import oidc_fakes
from tests.plugin.fakes import Harness
from tests.plugin.keyfactory import KeyPair, ec_key, make_token

KEY = ec_key()
OTHER = ec_key()
REMOTE = "127.0.0.1"

CONFIG: dict[str, Any] = {"jwt_validation_pubkeys": [KEY.pem]}
ROLE: dict[str, Any] = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"]}


def claims_at(now: float, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"sub": "bot", "aud": "vault", "iat": int(now), "exp": int(now) + 300,
                           "ref": "main", "groups": ["ci"], "org": "acme"}
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@dataclass
class Case:
    """A login refused by ``check``: the caller sees exactly ``message``; ``secrets`` (what the
    role or config expects) appear only in explain, the log and a verbose answer."""

    check: str
    message: str
    role: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    key: KeyPair | bytes | str | None = KEY
    jwt: str | None = None
    error: type[PluginError] = InvalidRequest


NOW = 0  # claim times are relative to the harness clock (see _token)
CASES: dict[str, Case] = {
    "role_type": Case(
        "role_type", "role with oidc role_type is not allowed",
        role={"role_type": "oidc", "allowed_redirect_uris": ["https://x"]},
    ),
    "bound_cidrs": Case(
        "bound_cidrs", "permission denied", role={"token_bound_cidrs": ["10.99.77.0/24"]},
        secrets=("10.99.77.0/24",), error=PermissionDenied,
    ),
    "parse": Case("parse", "error validating token: token must have 3 dot-separated parts, found 1", jwt="not-a-jwt"),
    "algorithm": Case(
        "algorithm",
        'error validating token: invalid algorithm (alg) header parameter: token signed with unexpected algorithm '
        '"ES256", allowed: ["ES384"]',
        config={"jwt_supported_algs": ["ES384"]},
    ),
    "signature": Case(
        "signature",
        "error validating token: error verifying token signature: no known key successfully validated the token "
        "signature",
        key=OTHER,
    ),
    "issuer": Case(
        "issuer", 'error validating token: invalid issuer (iss) claim: token has "https://public-ci.example"',
        config={"bound_issuer": "https://secret-issuer-x.example"}, claims={"iss": "https://public-ci.example"},
        secrets=("https://secret-issuer-x.example",),
    ),
    "subject": Case(
        "subject", 'error validating token: invalid subject (sub) claim: token has "bot"',
        role={"bound_subject": "secret-subject-x"}, secrets=("secret-subject-x",),
    ),
    "subject_glob": Case(
        "subject", 'error validating token: invalid subject (sub) claim: token has "bot"',
        role={"bound_subject": "repo:secret-org-x/*", "bound_claims_type": "glob"}, secrets=("repo:secret-org-x/*",),
    ),
    "audience": Case(
        "audience",
        "error validating token: invalid audience (aud) claim: audience claim does not match any expected audience: "
        'token has ["vault"]',
        role={"bound_audiences": ["secret-aud-x", "secret-aud-y"]}, secrets=("secret-aud-x", "secret-aud-y"),
    ),
    "audience_unbound": Case(
        "audience", "audience claim found in JWT but no audiences bound to the role",
        role={"bound_audiences": [], "bound_subject": "bot"},
    ),
    "time": Case(
        "time", "error validating token: invalid expiration time (exp) claim: token is expired",
        claims={"iat": -7200, "exp": -3600},
    ),
    "max_token_age": Case(
        "max_token_age", "error validating token: token is too old: issued 600s ago, role max_token_age is 60s",
        role={"max_token_age": 60}, claims={"iat": -600},
    ),
    "user_claim": Case("user_claim", 'claim "email" not found in token', role={"user_claim": "email"}),
    "claim_mappings": Case(
        "claim_mappings", "error converting claim 'groups' to string",
        role={"claim_mappings": {"groups": "groups"}},
    ),
    "groups": Case(
        "groups", 'failed to fetch groups: "teams" claim not found in token', role={"groups_claim": "teams"},
    ),
    "bound_claims": Case(
        "bound_claims", 'error validating claims: claim "ref" is "main"',
        role={"bound_claims": {"ref": ["secret-branch-x", "secret-branch-y"]}},
        secrets=("secret-branch-x", "secret-branch-y"),
    ),
    "bound_claims_glob": Case(
        "bound_claims", 'error validating claims: claim "ref" is "main"',
        role={"bound_claims": {"ref": "release/secret-*-x"}, "bound_claims_type": "glob"},
        secrets=("release/secret-*-x",),
    ),
    "bound_claims_second": Case(
        "bound_claims", 'error validating claims: claim "org" is "acme"',
        role={"bound_claims": {"ref": "main", "org": "secret-org-x"}}, secrets=("secret-org-x",),
    ),
    "token_policies": Case(
        "token_policies", 'error templating token_policies: claim "project" not found in token',
        role={"token_policies": ["p-{{ .project }}"], "token_policies_template_claims": True},
    ),
}


def test_every_check_has_a_case() -> None:
    assert {c.check for c in CASES.values()} == {c.name for c in CHECKS}


def test_the_oidc_checks_are_the_login_checks() -> None:
    names = [c.name for c in CHECKS]
    for subset in (OIDC_REQUEST_CHECKS, OIDC_CLAIM_CHECKS):
        assert all(check in CHECKS for check in subset)  # the same validators, not copies
        assert [c.name for c in subset] == sorted((c.name for c in subset), key=names.index)  # in login order


async def _harness(case: Case) -> Harness:
    h = Harness()
    await h.write("config", {**CONFIG, **case.config})
    await h.write("role/r", {**ROLE, **case.role})
    return h


def _token(h: Harness, case: Case) -> str:
    if case.jwt is not None:
        return case.jwt
    over = {k: (int(h.clock.now) + v if k in ("iat", "exp") else v) for k, v in case.claims.items()}
    return make_token(claims_at(h.clock.now, **over), key=case.key)


async def _refusal(h: Harness, case: Case) -> PluginError:
    with pytest.raises(PluginError) as info:
        await h.call(Operation.UPDATE, "login", {"role": "r", "jwt": _token(h, case)}, remote_addr=REMOTE)
    return info.value


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_anonymous_login_names_the_check_not_the_expected_values(case: Case) -> None:
    h = await _harness(case)
    with structlog.testing.capture_logs() as logs:
        exc = await _refusal(h, case)
    assert type(exc) is case.error and exc.check == case.check
    [message] = exc.messages
    assert message.startswith(case.message)
    assert "expects" not in message
    for secret in case.secrets:
        assert secret not in message
    # The server log carries the reason code and the full account.
    [entry] = [e for e in logs if e["event"] == "login_failed"]
    assert entry["check"] == case.check and entry["role"] == "r" and entry["remote_addr"] == REMOTE
    assert entry["reason"] == exc.detail
    for secret in case.secrets:
        assert secret in entry["reason"]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_explain_shows_the_expected_values(case: Case) -> None:
    h = await _harness(case)
    resp = await h.write("role/r/explain", {"jwt": _token(h, case), "remote_addr": REMOTE})
    assert resp is not None and resp.data is not None
    assert [c["check"] for c in resp.data["checks"]] == [c.name for c in CHECKS]
    [outcome] = [c for c in resp.data["checks"] if c["check"] == case.check and not c["ok"]]
    assert outcome["detail"].startswith(case.message)
    for secret in case.secrets:
        assert secret in outcome["detail"]
    assert resp.data["would_succeed"] is False


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_verbose_login_errors_show_the_expected_values(case: Case) -> None:
    h = await _harness(case)
    h.system.verbose_login_errors = True
    exc = await _refusal(h, case)
    assert exc.check == case.check
    assert exc.messages == [exc.detail]
    for secret in case.secrets:
        assert secret in exc.messages[0]


def test_detail_is_message_plus_expected() -> None:
    exc = InvalidRequest("error validating claims: claim \"ref\" is \"main\"", expected=', role expects one of ["x"]')
    assert exc.messages == ['error validating claims: claim "ref" is "main"']
    assert exc.detail == 'error validating claims: claim "ref" is "main", role expects one of ["x"]'
    assert PermissionDenied().detail == "permission denied" and PermissionDenied().check == ""


async def test_first_failure_wins_and_explain_keeps_going() -> None:
    case = Case("subject", "", role={"bound_subject": "secret-subject-x", "bound_claims": {"ref": "secret-branch-x"}},
                claims={"exp": -3600, "iat": -7200})
    h = await _harness(case)
    exc = await _refusal(h, case)
    assert exc.check == "subject"  # before audience, time and bound claims
    resp = await h.write("role/r/explain", {"jwt": _token(h, case)})
    assert resp is not None and resp.data is not None
    failed = [c["check"] for c in resp.data["checks"] if not c["ok"]]
    assert failed == ["subject", "time", "bound_claims"]


# ---------------------------------------------------------------------------
# The OIDC callback runs the same validators: same reason code, same message


@dataclass
class OidcCase:
    check: str
    role: dict[str, Any]
    claims: dict[str, Any]
    secret: str = ""


OIDC_CASES: dict[str, OidcCase] = {
    "bound_claims": OidcCase("bound_claims", {"bound_claims": {"team": "secret-team-x"}}, {"team": "other"}, "secret-team-x"),
    "subject": OidcCase("subject", {"bound_subject": "secret-subject-x"}, {}, "secret-subject-x"),
    "user_claim": OidcCase("user_claim", {}, {"email": None}),
    "claim_mappings": OidcCase("claim_mappings", {}, {"COLOR": ["green"]}),
    "groups": OidcCase("groups", {}, {"groups": {"a": 1}}),
    "bound_cidrs": OidcCase("bound_cidrs", {"token_bound_cidrs": ["10.99.77.0/24"]}, {}, "10.99.77.0/24"),
}


@pytest.mark.parametrize("case", OIDC_CASES.values(), ids=OIDC_CASES.keys())
async def test_oidc_callback_refuses_like_jwt_login(case: OidcCase) -> None:
    h = oidc_fakes.Harness()
    await h.configure()
    common = {"bound_audiences": [oidc_fakes.CLIENT_ID], **case.role}
    await h.role("web", **common)
    await h.role("machine", role_type="jwt", **common)
    claims = {k: v for k, v in {**oidc_fakes.BOB, **case.claims}.items() if v is not None}

    with structlog.testing.capture_logs() as logs, pytest.raises(PluginError) as oidc:
        await h.login(auth={"role": "web"}, **claims)
    now = int(h.clock.now)
    jwt = make_token({"iss": oidc_fakes.ISSUER, "sub": "bob", "aud": oidc_fakes.CLIENT_ID, "iat": now, "exp": now + 60,
                      **claims}, key=h.idp.key)
    with pytest.raises(PluginError) as login:
        await h.call(Operation.UPDATE, "login", {"role": "machine", "jwt": jwt})

    assert oidc.value.check == login.value.check == case.check
    assert type(oidc.value) is type(login.value)
    assert oidc.value.messages == login.value.messages
    [entry] = [e for e in logs if e["event"] == "oidc_callback_failed"]
    assert entry["check"] == case.check
    if case.secret:
        assert case.secret not in oidc.value.messages[0]
        assert case.secret in entry["reason"]
