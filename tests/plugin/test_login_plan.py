"""A login runs only the checks its role and config need (``path_login.login_plan``).

A check whose ``needed`` is false for the role and config would only return ``Skipped``;
leaving it out of a login must change nothing a caller can see. Held here two ways: every
check a plan leaves out is one explain (which runs every check) reports as skipped, for
tokens that pass and tokens that fail; and a login's outcome (issued, or refused by which
check with which message) is explain's first failure.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from plugin.errors import PluginError
from plugin.framework import Operation, Request
from plugin.path_config import JWTConfig
from plugin.path_login import _MAX_PLANS, _PLANS, CHECKS, OIDC_CLAIM_CHECKS, login_plan
from plugin.path_role import Role
from tests.plugin.fakes import Harness
from tests.plugin.keyfactory import ec_key, make_token

KEY = ec_key()
OTHER = ec_key()

#: Each optional feature a check's ``needed`` reads: the role (or config) fields that turn it on.
FEATURES: dict[str, tuple[str, dict[str, Any]]] = {
    "bound_cidrs": ("role", {"token_bound_cidrs": ["127.0.0.0/8"]}),
    "issuer": ("config", {"bound_issuer": "https://idp"}),
    "subject": ("role", {"bound_subject": "ci-bot"}),
    "max_token_age": ("role", {"max_token_age": 600}),
    "distributed_claims": ("role", {"resolve_distributed_claims": True}),
    "bound_claims": ("role", {"bound_claims": {"env": "prod"}}),
    "token_policies": ("role", {"token_policies": ["team-{{ .env }}"], "token_policies_template_claims": True}),
}
BASE_ROLE: dict[str, Any] = {"role_type": "jwt", "user_claim": "sub", "bound_audiences": "vault"}

#: Every feature alone, none, and all together.
COMBOS = [(), *((name,) for name in FEATURES), tuple(FEATURES)]

#: Tokens: one that passes every feature, and one per way of failing.
TOKENS: dict[str, dict[str, Any]] = {
    "ok": {},
    "wrong_sub": {"sub": "someone"},
    "wrong_iss": {"iss": "https://other"},
    "wrong_env": {"env": "dev"},
    "old": {"iat": -3600, "exp": 300},
    "expired": {"iat": -7200, "exp": -3600},
    "wrong_aud": {"aud": "other"},
    "bad_key": {},
    "distributed": {"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "https://x/claims"}}},
}


def _token(h: Harness, name: str) -> str:
    now = int(h.clock.now)
    claims: dict[str, Any] = {"sub": "ci-bot", "aud": "vault", "iss": "https://idp", "iat": now, "exp": now + 300,
                              "env": "prod"}
    for key, value in TOKENS[name].items():
        claims[key] = now + value if key in ("iat", "exp") else value
    return make_token(claims, key=OTHER if name == "bad_key" else KEY)


async def _setup(combo: tuple[str, ...]) -> Harness:
    h = Harness()
    config: dict[str, Any] = {"jwt_validation_pubkeys": [KEY.pem]}
    role = dict(BASE_ROLE)
    for name in combo:
        where, fields = FEATURES[name]
        (config if where == "config" else role).update(fields)
    await h.write("config", config)
    await h.write("role/r", role)
    return h


async def _objects(h: Harness) -> tuple[Role, JWTConfig]:
    role = await h.backend.role(h.storage, "r")
    config = await h.backend.config(Request(Operation.READ, "config", storage=h.storage, system=h.system))
    assert role is not None and config is not None
    return role, config


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "+".join(c) or "none")
async def test_a_login_runs_what_explain_does_not_skip(combo: tuple[str, ...]) -> None:
    h = await _setup(combo)
    role, config = await _objects(h)
    plan = login_plan(CHECKS, role, config)
    left_out = {c.name for c in CHECKS} - {c.name for c in plan}
    assert left_out == set(FEATURES) - set(combo)  # each feature's check runs exactly when it is on
    for name in TOKENS:
        jwt = _token(h, name)
        answer = await h.write("role/r/explain", {"jwt": jwt, "remote_addr": "127.0.0.1"})
        assert answer is not None and answer.data is not None
        data = answer.data
        outcomes = {c["check"]: c for c in data["checks"]}
        for check in left_out:
            assert outcomes[check]["ok"] and outcomes[check].get("skipped"), (name, check)
        failed = [c for c in data["checks"] if not c["ok"]]
        try:
            resp = await h.login({"role": "r", "jwt": jwt})
        except PluginError as exc:
            assert failed, (name, exc.check)
            assert exc.check == failed[0]["check"], name
            assert exc.detail == failed[0]["detail"], name
        else:
            assert not failed and data["would_succeed"], name
            env = TOKENS[name].get("env", "prod")
            assert resp.auth is not None and resp.auth.policies == ([f"team-{env}"] if "token_policies" in combo else [])


async def test_a_rewritten_role_gets_a_new_plan() -> None:
    h = await _setup(())
    role, config = await _objects(h)
    assert "subject" not in {c.name for c in login_plan(CHECKS, role, config)}
    await h.write("role/r", {**BASE_ROLE, "bound_subject": "someone-else"})
    new_role, _ = await _objects(h)
    assert new_role is not role
    assert "subject" in {c.name for c in login_plan(CHECKS, new_role, config)}
    with pytest.raises(PluginError) as exc:
        await h.login({"role": "r", "jwt": _token(h, "ok")})
    assert exc.value.check == "subject"


def test_plans_are_per_list_of_checks_and_bounded() -> None:
    role, config = Role(role_type="jwt", user_claim="sub", bound_subject="x"), JWTConfig()
    assert [c.name for c in login_plan(OIDC_CLAIM_CHECKS, role, config)] == [
        "subject", "user_claim", "claim_mappings", "groups"]
    assert "subject" in [c.name for c in login_plan(CHECKS, role, config)]
    roles = [Role(role_type="jwt", user_claim="sub") for _ in range(_MAX_PLANS + 5)]
    for one, checks in itertools.product(roles, (CHECKS,)):
        login_plan(checks, one, config)
    assert 0 < len(_PLANS) <= _MAX_PLANS
