"""The OIDC browser flow at plugin level: auth_url, callback (GET/POST), state, ID token checks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import pytest

from plugin.errors import InvalidRequest, PermissionDenied, UnsupportedOperation
from plugin.framework import Operation
from plugin.oidc_flow import check_at_hash, check_id_token_claims
from plugin.oidc_state import USED_PREFIX, FlowState
from plugin.path_oidc import parse_mount, valid_redirect
from tests.plugin.keyfactory import ec_key, make_token
from tests.plugin.oidc_fakes import (
    BOB,
    CLI_REDIRECT,
    ISSUER,
    REDIRECT,
    Harness,
    at_hash,
    query,
)


@pytest.fixture
async def h() -> Harness:
    harness = Harness()
    await harness.configure()
    await harness.role()
    return harness


# ---------------------------------------------------------------------------
# auth_url


async def test_auth_url_parameters(h: Harness) -> None:
    url = await h.auth_url(role="test", client_nonce="cn1")
    assert url.startswith(ISSUER + "/authorize?client_id=abc&")
    q = query(url)
    assert q["redirect_uri"] == REDIRECT
    assert q["response_type"] == "code"
    assert q["scope"] == "openid"
    assert q["code_challenge_method"] == "S256"
    assert len(q["code_challenge"]) == 43
    assert q["state"].startswith("am1.")  # the sealed state itself: nothing is stored
    assert q["nonce"].startswith("n_") and len(q["nonce"]) == 22
    assert "max_age" not in q and "response_mode" not in q
    assert h.storage.dump().keys() == {"config", "role/test"}
    state = FlowState.open(h.system.sealer, q["state"], h.clock.now)
    assert state is not None
    assert state.nonce == q["nonce"]
    assert state.client_nonce_matches("cn1") and not state.client_nonce_matches("cn2")
    assert state.expires_at == h.clock.now + 600
    assert (state.role, state.redirect_uri) == ("test", REDIRECT)


async def test_auth_url_default_role_scopes_and_max_age(h: Harness) -> None:
    await h.role(oidc_scopes=["email", "openid", "groups"], max_age="2m")
    q = query(await h.auth_url())
    assert q["scope"] == "openid email groups"
    assert q["max_age"] == "120"


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("https://VAULT.example.com/ui/vault/auth/oidc/oidc/callback", True),
        ("HTTPS://vault.example.com/ui/vault/auth/oidc/oidc/callback", True),
        ("https://vault.example.com/UI/vault/auth/oidc/oidc/callback", False),
        ("http://localhost:9999/oidc/callback", True),
        ("http://127.0.0.1:8250/oidc/callback", False),
        ("https://evil.example/cb", False),
    ],
    ids=["host-case-insensitive", "scheme-case-insensitive", "path-case-exact", "loopback-port-ignored",
         "other-loopback-host", "foreign"],
)
async def test_auth_url_redirect_validation(h: Harness, uri: str, ok: bool) -> None:
    if ok:
        assert query(await h.auth_url(redirect_uri=uri))["redirect_uri"] == uri
    else:
        with pytest.raises(InvalidRequest) as exc:
            await h.auth_url(redirect_uri=uri)
        assert f'redirect_uri "{uri}" is not allowed for role "test"' in exc.value.messages[0]


@pytest.mark.parametrize(
    ("setup", "data", "message"),
    [
        ("noconfig", {}, "could not load configuration"),
        ("jwtconfig", {}, "OIDC login is not configured for this mount"),
        ("nodefault", {}, "missing role"),
        ("ok", {"redirect_uri": ""}, "missing redirect_uri"),
        ("ok", {"role": "nope"}, 'role "nope" could not be found'),
    ],
    ids=["no-config", "not-oidc-config", "missing-role", "missing-redirect", "unknown-role"],
)
async def test_auth_url_errors(setup: str, data: dict[str, Any], message: str) -> None:
    h = Harness()
    if setup == "jwtconfig":
        key = ec_key()
        await h.call(Operation.UPDATE, "config", {"jwt_validation_pubkeys": [key.pem]})
    elif setup == "nodefault":
        await h.configure(default_role="")
    elif setup == "ok":
        await h.configure()
        await h.role()
    with pytest.raises(InvalidRequest) as exc:
        await h.auth_url(**data)
    assert exc.value.messages == [message]


async def test_auth_url_implicit_flow_and_form_post() -> None:
    h = Harness()
    await h.configure(oidc_response_mode="form_post", oidc_response_types=["id_token"])
    await h.role()
    q = query(await h.auth_url())
    assert q["response_type"] == "id_token"
    assert q["response_mode"] == "form_post"
    assert "code_challenge" not in q
    # form_post: the UI redirect goes straight to the API callback
    assert q["redirect_uri"] == "https://vault.example.com/v1/auth/oidc/oidc/callback"


@pytest.mark.parametrize(
    ("in_state", "allowed", "incoming", "state_suffix", "redirect"),
    [
        (False, "https://example.com?namespace=test", "https://example.com?namespace=test", "", "https://example.com?namespace=test"),
        (True, "https://example.com", "https://example.com?namespace=test", ",ns=test", "https://example.com"),
        (True, "https://example.com", "https://example.com?namespace=org4321/dev", ",ns=org4321/dev", "https://example.com"),
        (True, "https://example.com", "https://example.com", "", "https://example.com"),
    ],
    ids=["off-kept", "on-stripped", "on-nested", "on-absent"],
)
async def test_namespace_in_state(in_state: bool, allowed: str, incoming: str, state_suffix: str, redirect: str) -> None:
    h = Harness()
    await h.configure(namespace_in_state=in_state)
    await h.role(allowed_redirect_uris=[allowed])
    q = query(await h.auth_url(redirect_uri=incoming))
    _sealed, comma, rest = q["state"].partition(",")
    assert comma + rest == state_suffix
    assert q["redirect_uri"] == redirect


# ---------------------------------------------------------------------------
# callback: success


async def test_callback_success(h: Harness) -> None:
    h.idp.userinfo = {"size": "medium", "color": "red"}
    resp = await h.login(**BOB)
    auth = resp.auth
    assert auth.alias.name == "bob@example.com"
    assert auth.metadata == {"role": "test", "color": "green", "size": "medium"}
    assert sorted(auth.group_aliases) == ["a", "b"]
    assert auth.internal_data.get("role") == "test"
    assert auth.num_uses == 10
    assert auth.ttl == 180 and auth.max_ttl == 300
    assert len(await h.storage.list(USED_PREFIX)) == 1  # the state, redeemed


async def test_callback_with_hvac_style_nonce_parameter(h: Harness) -> None:
    """hvac sends ``nonce`` (not ``client_nonce``): ignored with Vault's warning."""
    resp = await h.login(cb={"nonce": "whatever"}, **BOB)
    assert resp.auth.alias.name == "bob@example.com"
    assert any("nonce" in w for w in resp.warnings)


async def test_callback_token_request_uses_basic_auth_and_pkce(h: Harness) -> None:
    await h.login(**BOB)
    method, url, extra = next(c for c in h.idp.calls if c[1].endswith("/token"))
    assert method == "POST"
    assert extra["headers"]["Authorization"].startswith("Basic ")
    assert len(extra["form"]["code_verifier"]) == 43
    assert "client_secret" not in extra["form"]


async def test_state_works_across_nodes() -> None:
    """auth_url on one node, callback on another: the state travels with the flow, sealed
    with the keyring the nodes share; its used-record is in the shared storage."""
    a = Harness()
    await a.configure()
    await a.role()
    b = Harness(storage=a.storage, idp=a.idp)
    b.clock = a.clock
    b.system.sealer = a.system.sealer  # nodes share the keyring
    url = await a.auth_url()
    code = a.idp.authorize(url, **BOB)
    resp = await b.callback(state=query(url)["state"], code=code)
    assert resp.auth.alias.name == "bob@example.com"


# ---------------------------------------------------------------------------
# callback: state


async def test_state_is_single_use(h: Harness) -> None:
    url = await h.auth_url()
    state = query(url)["state"]
    code = h.idp.authorize(url, **BOB)
    await h.callback(state=state, code=code)
    with pytest.raises(InvalidRequest) as exc:
        await h.callback(state=state, code=code)
    assert exc.value.messages == ["Vault login failed. Expired or missing OAuth state."]


async def test_state_concurrent_callbacks_exactly_one_wins(h: Harness) -> None:
    """Even when the IdP would accept the code five times, the state is redeemed once."""
    h.idp.reusable_codes = True
    url = await h.auth_url()
    state = query(url)["state"]
    code = h.idp.authorize(url, **BOB)
    results = await asyncio.gather(*(h.callback(state=state, code=code) for _ in range(5)), return_exceptions=True)
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, InvalidRequest)]
    assert len(wins) == 1 and len(losses) == 4
    assert all("Expired or missing OAuth state" in e.messages[0] for e in losses)


@pytest.mark.parametrize(
    "state",
    ["", "not_a_state", "st_../../config", "st_AAAAAAAAAAAAAAAAAAAA", "am1.1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
     "am1.99.", "am1.x.y", ",ns=a"],
    ids=["missing", "unknown", "path-traversal", "old-format", "forged", "unknown-term", "malformed", "suffix-only"],
)
async def test_bad_state(h: Harness, state: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await h.callback(state=state, code="x")
    assert exc.value.messages == ["Vault login failed. Expired or missing OAuth state."]


async def test_state_expires_after_ten_minutes(h: Harness) -> None:
    url = await h.auth_url()
    code = h.idp.authorize(url, **BOB)
    h.clock.now += 601
    with pytest.raises(InvalidRequest, match="Expired or missing OAuth state"):
        await h.callback(state=query(url)["state"], code=code)


async def test_used_records_of_expired_states_are_swept(h: Harness) -> None:
    """Each redemption deletes a few records of states expired (plus a grace) before it."""
    for _ in range(3):
        await h.login(**BOB)
    assert len(await h.storage.list(USED_PREFIX)) == 3
    h.clock.now += 600 + 300 + 1
    await h.login(**BOB)
    assert len(await h.storage.list(USED_PREFIX)) == 2  # two old ones gone, one new
    await h.login(**BOB)
    assert len(await h.storage.list(USED_PREFIX)) == 2  # the last old one gone, one new


@pytest.mark.parametrize(
    ("registered", "sent", "ok"),
    [("", "", True), ("abc123", "abc123", True), ("abc123", "abc123xyz", False), ("abc123", "", False), ("", "abc123", True)],
    ids=["none-none", "match", "mismatch", "missing", "unexpected-ignored"],
)
async def test_client_nonce(h: Harness, registered: str, sent: str, ok: bool) -> None:
    auth = {"client_nonce": registered} if registered else {}
    cb = {"client_nonce": sent} if sent else {}
    if ok:
        assert (await h.login(auth=auth, cb=cb, **BOB)).auth is not None
    else:
        with pytest.raises(InvalidRequest) as exc:
            await h.login(auth=auth, cb=cb, **BOB)
        assert exc.value.messages == ["invalid client_nonce"]


# ---------------------------------------------------------------------------
# callback: failures


async def test_missing_code(h: Harness) -> None:
    url = await h.auth_url()
    with pytest.raises(InvalidRequest) as exc:
        await h.callback(state=query(url)["state"])
    assert exc.value.messages == ["Vault login failed. No code or id_token received."]


async def test_role_deleted_between_steps(h: Harness) -> None:
    url = await h.auth_url()
    await h.call(Operation.DELETE, "role/test")
    with pytest.raises(InvalidRequest) as exc:
        await h.callback(state=query(url)["state"], code="x")
    assert exc.value.messages == ["Vault login failed. Role could not be found"]


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        ("wrong_code", "cannot fetch token: HTTP 400 (invalid_grant)"),
        ("pkce", "cannot fetch token: HTTP 400 (invalid_grant)"),
        ("down", "connection refused"),
        ("nonce", "invalid id_token nonce"),
        ("aud", "invalid authorized party (azp)"),
        ("iss", "invalid issuer (iss) claim"),
        ("expired", "token is expired"),
        ("es256", "unexpected algorithm \"ES256\", allowed: [\"RS256\"]"),
        ("at_hash", "at_hash"),
    ],
)
async def test_code_exchange_failures(h: Harness, mutate: str, fragment: str) -> None:
    url = await h.auth_url()
    state = query(url)["state"]
    code = h.idp.authorize(url, **BOB)
    if mutate == "wrong_code":
        code = "wrong_code"
    elif mutate == "pkce":
        h.idp.grants[code].params["code_challenge"] = "x" * 43
    elif mutate == "down":
        h.idp.down = True
        h.backend.oidc_discovery.clear()  # the IdP is down for discovery too
    elif mutate == "nonce":
        h.idp.id_token_overrides = {"nonce": "bad nonce"}
    elif mutate == "aud":
        h.idp.id_token_overrides = {"aud": ["not_gonna_match"]}
    elif mutate == "iss":
        h.idp.id_token_overrides = {"iss": "https://other.test"}
    elif mutate == "expired":
        h.idp.id_token_overrides = {"exp": int(h.clock.now) - 1}
    elif mutate == "es256":
        h.idp.key = ec_key(kid="idp-1")
    elif mutate == "at_hash":
        h.idp.id_token_overrides = {"at_hash": at_hash("another-token")}
    with pytest.raises(InvalidRequest) as exc:
        await h.callback(state=state, code=code)
    msg = exc.value.messages[0]
    assert msg.startswith('Vault login failed. Error exchanging oidc code: "')
    assert fragment in msg
    assert "<b>" not in msg  # the IdP's error_description is never reflected


async def test_bound_claim_mismatch(h: Harness) -> None:
    await h.role(bound_claims={"sk": "42"})
    with pytest.raises(InvalidRequest, match="error validating claims"):
        await h.login(sk="43", **BOB)
    assert (await h.login(sk="42", **BOB)).auth is not None


async def test_bound_subject(h: Harness) -> None:
    """The JWT login's subject check (a 400 naming it; Vault's callback answers a 500 here)."""
    await h.role(bound_subject="alice")
    with pytest.raises(InvalidRequest) as info:
        await h.login(sub="bob", **BOB)
    assert info.value.messages == ['error validating token: invalid subject (sub) claim: token has "bob"']
    assert info.value.check == "subject"


async def test_user_claim_missing(h: Harness) -> None:
    with pytest.raises(InvalidRequest, match='claim "email" not found in token'):
        await h.login(groups=["a"])


async def test_bound_cidrs(h: Harness) -> None:
    await h.role(token_bound_cidrs=["127.0.0.42/32"])
    h.remote = "127.0.0.99"
    with pytest.raises(PermissionDenied):
        await h.login(**BOB)
    h.remote = "127.0.0.42"
    resp = await h.login(**BOB)
    assert resp.auth.bound_cidrs == ["127.0.0.42/32"] or resp.auth.bound_cidrs == ["127.0.0.42"]


async def test_userinfo_merge_and_sub_mismatch(h: Harness) -> None:
    await h.role(claim_mappings={"temperature": "temperature"})
    h.idp.userinfo = {"temperature": "76"}
    resp = await h.login(**BOB)
    assert resp.auth.metadata["temperature"] == "76"
    h.idp.userinfo = {"sub": "mallory", "temperature": "99"}
    resp = await h.login(**BOB)
    assert "temperature" not in resp.auth.metadata
    assert any("userinfo sub does not match" in w for w in resp.warnings)


async def test_userinfo_nested_too_deeply_is_ignored_with_a_warning(h: Harness) -> None:
    """Valid JSON 66 levels deep: refused by the explicit nesting limit (whatever the
    interpreter's recursion limit), so the login goes on without the userinfo claims."""
    await h.role(claim_mappings={"temperature": "temperature"})
    deep: Any = 1
    for _ in range(65):
        deep = [deep]
    h.idp.userinfo = {"temperature": "76", "deep": deep}
    resp = await h.login(**BOB)
    assert "temperature" not in resp.auth.metadata
    assert "userinfo response is not JSON; ignored" in resp.warnings


# ---------------------------------------------------------------------------
# form_post


async def test_form_post_not_configured_is_405(h: Harness) -> None:
    with pytest.raises(UnsupportedOperation):
        await h.call(Operation.UPDATE, "oidc/callback", {"state": "st_x", "code": "c"})


API_REDIRECT = "https://vault.example.com/v1/auth/oidc/oidc/callback"


async def form_post_harness(**config: Any) -> Harness:
    h = Harness()
    await h.configure(oidc_response_mode="form_post", **config)
    await h.role(allowed_redirect_uris=[API_REDIRECT, CLI_REDIRECT, "https://example.com"])
    return h


async def post(h: Harness, **form: Any) -> Any:
    return await h.call(Operation.UPDATE, "oidc/callback", form)


async def test_form_post_code_then_get_no_code() -> None:
    h = await form_post_harness()
    url = await h.auth_url(redirect_uri=API_REDIRECT)
    state = query(url)["state"]
    code = h.idp.authorize(url, **BOB)
    page = await post(h, state=state, code=code)
    assert page.status == 200 and page.content_type.startswith("text/html")
    assert b'"path": "oidc"' in page.raw_body and b'"code": "no_code"' in page.raw_body
    script = page.raw_body.split(b"<script>")[1].split(b"</script>")[0]
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    csp = f"default-src 'none'; script-src 'sha256-{digest}'; frame-ancestors 'none'"
    assert page.headers["Content-Security-Policy"] == csp and page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    resp = await h.callback(state=state, code="no_code")
    assert resp.auth.alias.name == "bob@example.com"
    with pytest.raises(InvalidRequest, match="Expired or missing OAuth state"):
        await h.callback(state=state, code="no_code")  # the verified result is taken once


async def test_form_post_then_get_with_the_code_like_the_vault_cli() -> None:
    """The Vault CLI POSTs the form, then GETs with the same state and the real code."""
    h = await form_post_harness()
    url = await h.auth_url(redirect_uri=CLI_REDIRECT)
    state = query(url)["state"]
    code = h.idp.authorize(url, **BOB)
    page = await post(h, state=state, code=code)
    assert page.status == 400 and b"Invalid redirect path." in page.raw_body  # no /v1/auth/ in it
    resp = await h.callback(state=state, code=code)
    assert resp.auth.alias.name == "bob@example.com"


async def test_form_post_exchange_failure_page_writes_nothing() -> None:
    h = await form_post_harness()
    url = await h.auth_url(redirect_uri=API_REDIRECT)
    state = query(url)["state"]
    before = h.storage.dump()
    page = await post(h, state=state, code="forged")
    assert page.status == 400
    assert b"Vault login failed." in page.raw_body and b"Error exchanging oidc code" in page.raw_body
    assert b"&lt;b&gt;" not in page.raw_body and b"<b>" not in page.raw_body  # the IdP's text is not reflected
    assert h.storage.dump() == before
    with pytest.raises(InvalidRequest, match="No code or id_token received"):
        await h.callback(state=state, code="no_code")
    code = h.idp.authorize(url, **BOB)  # the state was not used up: the real code still works
    assert (await post(h, state=state, code=code)).status == 200


async def test_form_post_state_only_writes_nothing_and_extends_nothing() -> None:
    """Issue 15: a form_post carrying only ``state`` pushed the state's expiry 10 minutes on."""
    h = await form_post_harness()
    url = await h.auth_url(redirect_uri=API_REDIRECT)
    state = query(url)["state"]
    before = h.storage.dump()
    for _ in range(3):
        h.clock.now += 500
        await post(h, state=state)
    assert h.storage.dump() == before
    page = await post(h, state=state, code=h.idp.authorize(url, **BOB))
    assert page.status == 400 and b"Expired or missing OAuth state." in page.raw_body


async def test_form_post_twice_is_refused() -> None:
    h = await form_post_harness()
    url = await h.auth_url(redirect_uri=API_REDIRECT)
    state = query(url)["state"]
    code = h.idp.authorize(url, **BOB)
    assert (await post(h, state=state, code=code)).status == 200
    page = await post(h, state=state, code=code)
    assert page.status == 400 and b"Expired or missing OAuth state." in page.raw_body


async def test_form_post_unknown_state_and_invalid_path_pages() -> None:
    h = await form_post_harness()
    page = await post(h, state="<script>alert(1)</script>", code="c")
    assert page.status == 400 and b"Expired or missing OAuth state." in page.raw_body
    assert b"<script>" not in page.raw_body
    csp = page.headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'none'; style-src 'sha256-") and csp.endswith("; frame-ancestors 'none'")
    assert "script-src" not in csp
    url = await h.auth_url(redirect_uri=CLI_REDIRECT)
    page = await post(h, state=query(url)["state"], code=h.idp.authorize(url, **BOB))
    assert page.status == 400 and b"Invalid redirect path." in page.raw_body


async def test_form_post_page_escapes_state_suffix() -> None:
    h = await form_post_harness(namespace_in_state=True)
    url = await h.auth_url(redirect_uri=API_REDIRECT)
    state = query(url)["state"] + ",ns=</script><script>alert(1)</script>"
    page = await post(h, state=state, code=h.idp.authorize(url, **BOB))
    assert page.status == 200
    assert b"</script><script>" not in page.raw_body
    assert b"\\u003c/script\\u003e" in page.raw_body


async def test_implicit_form_post_id_token_is_verified_and_not_stored() -> None:
    h = await form_post_harness(oidc_response_types=["id_token"])
    await h.role(bound_subject="bob", allowed_redirect_uris=["https://example.com"])
    url = await h.auth_url(redirect_uri="https://example.com")
    state = query(url)["state"]
    grant_code = h.idp.authorize(url, **BOB)
    id_token = h.idp.id_token(h.idp.grants[grant_code])
    page = await post(h, state=state, id_token=id_token)
    assert page.status == 400 and b"Invalid redirect path." in page.raw_body
    stored = h.storage.dump()
    assert id_token not in repr(stored) and id_token.split(".")[2] not in repr(stored)
    resp = await h.callback(state=state)
    assert resp.auth.alias.name == "bob@example.com"


async def test_implicit_form_post_bad_id_token_page() -> None:
    h = await form_post_harness(oidc_response_types=["id_token"])
    url = await h.auth_url(redirect_uri="https://example.com")
    state = query(url)["state"]
    before = h.storage.dump()
    forged = make_token({"sub": "x", "nonce": "<img src=x>"}, key=ec_key())
    page = await post(h, state=state, id_token=forged)
    assert page.status == 400 and b"Token verification failed." in page.raw_body
    assert h.storage.dump() == before
    with pytest.raises(InvalidRequest, match="No code or id_token received"):
        await h.callback(state=state)


async def test_error_description_fails_the_login_without_echo(h: Harness) -> None:
    url = await h.auth_url()
    with pytest.raises(InvalidRequest) as exc:
        await h.callback(state=query(url)["state"], error_description="<b>call 555-0100</b>")
    assert exc.value.messages == ["Vault login failed. The identity provider returned an error."]


# ---------------------------------------------------------------------------
# Pure helpers


@pytest.mark.parametrize(
    ("uri", "allowed", "ok"),
    [
        ("https://example.com", ["https://example.com"], True),
        ("https://example.com:5000", ["a", "b", "https://example.com:5000"], True),
        ("https://example.com/a/b/c", ["a", "https://example.com/a/b/c"], True),
        ("https://localhost:9000", ["a", "https://localhost:5000"], True),
        ("https://127.0.0.1:9000", ["a", "https://127.0.0.1:5000"], True),
        ("https://127.0.0.2:9000", ["a", "https://127.0.0.2:5000"], True),
        ("https://[::1]:9000", ["a", "https://[::1]:5000"], True),
        ("https://[::1]:9000/x/y?r=42", ["a", "https://[::1]:5000/x/y?r=42"], True),
        ("https://EXAMPLE.com:5000", ["a", "https://example.com:5000"], True),
        ("https://example.com", [], False),
        ("http://example.com", ["a", "https://example.com"], False),
        ("https://example.com:9000", ["a", "https://example.com:5000"], False),
        ("https://[::2]:9000", ["a", "https://[::2]:5000"], False),
        ("https://localhost:5000", ["a", "https://127.0.0.1:5000"], False),
        ("https://localhost:5000", ["a", "http://localhost:5000"], False),
        ("https://[::1]:5000/x/y?r=42", ["a", "https://[::1]:5000/x/y?r=43"], False),
        ("https://[::1:5000/x", ["https://[::1:5000/x"], False),
        # Issue 15 section 4: scheme and host compare case-insensitively, the rest exactly.
        ("HTTPS://Vault.Example.COM/v1/cb", ["https://vault.example.com/v1/cb"], True),
        ("https://vault.example.com/v1/cb", ["HTTPS://VAULT.EXAMPLE.COM/v1/cb"], True),
        ("https://vault.example.com/V1/cb", ["https://vault.example.com/v1/cb"], False),
        ("https://vault.example.com/v1/CB", ["https://vault.example.com/v1/cb"], False),
        ("https://vault.example.com/v1/cb?Tenant=a", ["https://vault.example.com/v1/cb?tenant=a"], False),
        ("https://vault.example.com/v1/cb?tenant=A", ["https://vault.example.com/v1/cb?tenant=a"], False),
        ("https://vault.example.com/v1/cb#X", ["https://vault.example.com/v1/cb#x"], False),
        ("https://vault.example.com/v1/cb?", ["https://vault.example.com/v1/cb"], False),
        ("https://vault.example.com:443/v1/cb", ["https://vault.example.com/v1/cb"], False),
        ("https://Bob@vault.example.com/v1/cb", ["https://bob@vault.example.com/v1/cb"], False),
        ("https://bob@VAULT.example.com/v1/cb", ["https://bob@vault.example.com/v1/cb"], True),
        ("https://[2001:DB8::1]:8200/cb", ["https://[2001:db8::1]:8200/cb"], True),
        ("https://[2001:db8::1]:8200/CB", ["https://[2001:db8::1]:8200/cb"], False),
        ("https://vault.example.com/v1/cb ", ["https://vault.example.com/v1/cb "], False),
        ("https://vault.example.com/v1/\tcb", ["https://vault.example.com/v1/\tcb"], False),
        ("https://vault.example.com/v1/cb", ["https://vault.example.com/v1/\tcb"], False),
        ("HTTP://localhost:9000/cb", ["http://localhost:5000/cb"], True),
        ("http://localhost:9000/CB", ["http://localhost:5000/cb"], False),
    ],
    ids=lambda v: str(v) if isinstance(v, bool) else None,
)
def test_valid_redirect(uri: str, allowed: list[str], ok: bool) -> None:
    assert valid_redirect(uri, allowed) is ok


@pytest.mark.parametrize(
    ("uri", "mount"),
    [
        ("https://example.com/v1/auth/oidc", "oidc"),
        ("https://example.com/v1/auth/oidc/foo", "oidc"),
        ("https://example.com/v1/auth/oidc/foo/a/b/c", "oidc"),
        ("http://localhost:8250/oidc/callback", ""),
    ],
    ids=["mount-only", "mount-and-path", "deep", "none"],
)
def test_parse_mount(uri: str, mount: str) -> None:
    assert parse_mount(uri) == mount


NOW = 1_700_000_000.0


def _claims(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISSUER, "sub": "bob", "aud": "abc", "exp": NOW + 60, "iat": NOW, "nonce": "n1"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("claims", "audiences", "max_age", "error"),
    [
        (_claims(), [], 0, None),
        (_claims(exp=None), [], 0, "missing expiration time"),
        (_claims(exp=NOW - 1), [], 0, "token is expired"),
        (_claims(nbf=NOW + 299), [], 0, None),
        (_claims(nbf=NOW + 301), [], 0, "token not yet valid"),
        (_claims(iat=NOW + 61), [], 0, "issued in the future"),
        (_claims(nonce="n2"), [], 0, "invalid nonce"),
        (_claims(nonce=None), [], 0, "invalid nonce"),
        (_claims(sub=""), [], 0, "invalid subject"),
        (_claims(aud=[]), [], 0, "invalid audience"),
        (_claims(aud="vault"), ["other"], 0, "does not match any expected audience"),
        (_claims(aud=["abc", "vault"], azp="abc"), ["vault"], 0, None),
        (_claims(aud=["abc", "vault"]), [], 0, "invalid authorized party"),
        (_claims(aud=["x", "vault"], azp="abc"), [], 0, "is not among the audiences"),
        (_claims(azp="other"), [], 0, "invalid authorized party"),
        (_claims(aud="other", azp="abc"), [], 0, None),
        (_claims(iss=ISSUER + "/"), [], 0, "invalid issuer"),
        (_claims(auth_time=NOW - 100), [], 60, None),
        (_claims(auth_time=NOW - 121), [], 60, "older than max_age"),
        (_claims(), [], 60, "missing auth_time"),
        (_claims(exp="soon"), [], 0, "not a number"),
    ],
    ids=[
        "ok", "no-exp", "expired", "nbf-leeway", "nbf-future", "iat-future", "nonce", "no-nonce",
        "no-sub", "no-aud", "bound-aud", "multi-aud-azp", "multi-aud-no-azp", "multi-aud-no-client",
        "azp-other", "single-foreign-aud-azp", "iss-slash", "auth-time-ok", "auth-time-old",
        "auth-time-missing", "exp-string",
    ],
)
def test_check_id_token_claims(claims: dict[str, Any], audiences: list[str], max_age: int, error: str | None) -> None:
    def run() -> None:
        check_id_token_claims(
            claims, now=NOW, issuer=ISSUER, client_id="abc", nonce="n1", audiences=audiences, max_age=max_age
        )

    if error is None:
        run()
    else:
        with pytest.raises(InvalidRequest) as exc:
            run()
        assert error in exc.value.messages[0]


def test_check_at_hash() -> None:
    check_at_hash("RS256", at_hash("tok"), "tok")
    with pytest.raises(InvalidRequest, match="at_hash"):
        check_at_hash("RS256", at_hash("tok"), "other")



async def test_jwt_login_on_an_oidc_flow_mount(h: Harness) -> None:
    """docs/vault-differences.md row 1: a discovery + client secret mount also verifies plain JWT logins."""
    await h.role("machine", role_type="jwt", user_claim="sub", bound_audiences=["vault"], groups_claim="", claim_mappings={})
    token = make_token({"iss": ISSUER, "sub": "svc", "aud": "vault", "iat": int(h.clock.now), "exp": int(h.clock.now) + 60}, key=h.idp.key)
    resp = await h.call(Operation.UPDATE, "login", {"role": "machine", "jwt": token})
    assert resp.auth.alias.name == "svc"
    assert resp.auth.metadata == {"role": "machine"}
