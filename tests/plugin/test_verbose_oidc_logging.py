"""Regression (issue 14): ``verbose_oidc_logging`` was documented and logged nothing. A role
with it logs the claims the OIDC callback received (ID token and userinfo) at debug level,
before the role's checks, never a raw token; other roles log nothing of them."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from plugin.errors import InvalidRequest
from tests.plugin.oidc_fakes import BOB, Harness

CLAIMS: dict[str, Any] = dict(BOB)


@pytest.fixture
async def h() -> Harness:
    harness = Harness()
    await harness.configure()
    return harness


async def test_verbose_role_logs_the_received_claims_at_debug(h: Harness) -> None:
    await h.role(verbose_oidc_logging=True)
    h.idp.userinfo = {"size": "medium"}
    with structlog.testing.capture_logs() as logs:
        resp = await h.login(**CLAIMS)
    assert resp.auth.alias.name == "bob@example.com"
    [event] = [e for e in logs if e["event"] == "oidc_provider_response"]
    assert event["log_level"] == "debug"
    assert (event["mount"], event["role"]) == ("auth/oidc/", "test")
    claims = event["claims"]
    assert claims["email"] == "bob@example.com" and claims["size"] == "medium" and claims["iss"] == h.idp.issuer
    assert "nonce" not in claims
    assert not any(isinstance(v, str) and v.count(".") == 2 and v.startswith("eyJ") for v in claims.values())


async def test_verbose_logging_shows_what_a_refused_login_received(h: Harness) -> None:
    await h.role(verbose_oidc_logging=True, bound_claims={"COLOR": "blue"})
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(InvalidRequest):
            await h.login(**CLAIMS)
    [event] = [e for e in logs if e["event"] == "oidc_provider_response"]
    assert event["claims"]["COLOR"] == "green"


async def test_other_roles_log_no_claims(h: Harness) -> None:
    await h.role()
    with structlog.testing.capture_logs() as logs:
        await h.login(**CLAIMS)
    assert [e for e in logs if e["event"] == "oidc_provider_response"] == []
