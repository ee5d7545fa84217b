"""The role's ``callback_mode`` device and direct, ``oidc/poll`` and ``oauth2_metadata`` at plugin
level, against the fake IdP (tests/plugin/oidc_fakes.py); OpenBao's API (issue 12)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import structlog

from plugin.errors import InvalidRequest, PermissionDenied, PluginError, UpstreamError
from plugin.framework import NoEvents, Operation, Response
from plugin.oidc_state import FlowState
from tests.plugin.oidc_fakes import BOB, REDIRECT, Harness, query

DIRECT = "https://authmount.example.com/v1/auth/oidc/oidc/callback"
NONCE = "cli-nonce-1"


async def harness(**role: Any) -> Harness:
    h = Harness()
    await h.configure()
    await h.role(allowed_redirect_uris=[REDIRECT, DIRECT], **role)
    return h


def page_text(resp: Response) -> str:
    assert resp.raw_body is not None and (resp.content_type or "").startswith("text/html")
    return resp.raw_body.decode()


# ---------------------------------------------------------------------------
# Role fields


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("callback_mode", "browser", "invalid 'callback_mode': browser"),
        ("callback_mode", "DEVICE", "invalid 'callback_mode': DEVICE"),
        ("poll_interval", -1, "invalid 'poll_interval': -1 (0 to 300 seconds)"),
        ("poll_interval", 301, "invalid 'poll_interval': 301 (0 to 300 seconds)"),
        ("oauth2_metadata", ["id_token", "password"], "Unrecognized oauth2 metadata name password"),
        ("oidc_claims_precedence", "both", "invalid 'oidc_claims_precedence': both ('userinfo' or 'id_token')"),
    ],
    ids=["unknown mode", "modes are lower case", "negative interval", "interval too long", "unknown token",
         "unknown precedence"],
)
async def test_role_field_refusals(field: str, value: Any, error: str) -> None:
    h = await harness()
    with pytest.raises(InvalidRequest) as exc:
        await h.role(**{field: value})
    assert exc.value.messages == [error]


async def test_role_fields_round_trip_and_merge() -> None:
    h = await harness(callback_mode="device", poll_interval=3, oidc_disable_confirmation=True,
                      oauth2_metadata="access_token,id_token,access_token", oidc_claims_precedence="id_token",
                      resolve_distributed_claims=True)
    data = (await h.call(Operation.READ, "role/test")).data
    assert (data["callback_mode"], data["poll_interval"], data["oidc_disable_confirmation"]) == ("device", 3, True)
    assert data["oauth2_metadata"] == ["access_token", "id_token"]  # once each
    assert data["oidc_claims_precedence"] == "id_token" and data["resolve_distributed_claims"] is True
    await h.call(Operation.UPDATE, "role/test", {"role_type": "oidc", "token_ttl": "1m"})
    again = (await h.call(Operation.READ, "role/test")).data
    assert {k: again[k] for k in data if k != "token_ttl"} == {k: data[k] for k in data if k != "token_ttl"}


async def test_oauth2_metadata_keys_are_reserved_for_mappings() -> None:
    h = await harness()
    with pytest.raises(InvalidRequest, match='metadata key "oauth2_access_token" is reserved by oauth2_metadata'):
        await h.role(oauth2_metadata=["access_token"], claim_mappings={"at": "oauth2_access_token"})


# ---------------------------------------------------------------------------
# callback_mode device


async def test_device_auth_url_answers_openbaos_shape_and_stores_nothing() -> None:
    h = await harness(callback_mode="device")
    before = h.storage.dump()
    data = await h.start(client_nonce=NONCE)
    assert set(data) == {"auth_url", "state", "poll_interval"}
    assert data["auth_url"].startswith("https://idp.test/device?user_code=")
    assert data["poll_interval"] == "7"  # the IdP's interval, as a string (OpenBao's CLI reads a string)
    assert h.storage.dump() == before  # the device_code travels sealed in the state
    [device_code] = h.idp.devices
    assert device_code not in data["state"]
    state = FlowState.open(h.system.sealer, data["state"], h.clock.now)
    assert state is not None and (state.mode, state.device_code) == ("device", device_code)
    [(_, url, sent)] = [c for c in h.idp.calls if c[1].endswith("/device")]
    assert sent["form"] == {"scope": "openid"} and sent["headers"]["Authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    ("overrides", "role", "expected"),
    [
        ({}, {"poll_interval": 2}, {"poll_interval": "2"}),
        ({"interval": None}, {}, {"poll_interval": "5"}),
        ({"verification_uri_complete": None},
         {}, {"auth_url": "https://idp.test/device", "user_code": "<from the IdP>"}),
        ({"verification_uri_complete": None, "verification_uri": None, "verification_url": "https://g.test/device"},
         {}, {"auth_url": "https://g.test/device", "user_code": "<from the IdP>"}),
    ],
    ids=["role interval wins", "default interval", "code to type", "google's verification_url"],
)
async def test_device_auth_url_variants(overrides: dict[str, Any], role: dict[str, Any], expected: dict[str, str]) -> None:
    h = await harness(callback_mode="device", **role)
    h.idp.device_overrides = overrides
    data = await h.start(client_nonce=NONCE)
    [device] = h.idp.devices.values()
    for key, value in expected.items():
        assert data[key] == (device.user_code if value == "<from the IdP>" else value)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"device_code": "d" * 1025}, "device authorization response: device_code is not a string of at most 1024 bytes"),
        ({"device_code": None}, "device authorization response has no device_code"),
        ({"device_code": 42}, "device authorization response: device_code is not a string of at most 1024 bytes"),
        ({"verification_uri_complete": "javascript:alert(1)"},
         "device authorization response: verification_uri_complete is not an http(s) URL"),
        ({"verification_uri_complete": None, "verification_uri": None}, "device authorization response has no verification_uri"),
        ({"user_code": "u" * 129}, "device authorization response: user_code is not a string of at most 128 bytes"),
    ],
    ids=["huge device_code", "no device_code", "device_code not text", "script URL", "no URL", "huge user_code"],
)
async def test_device_authorization_hostile_answers(overrides: dict[str, Any], error: str) -> None:
    h = await harness(callback_mode="device")
    h.idp.device_overrides = overrides
    with pytest.raises(UpstreamError) as exc:
        await h.start(client_nonce=NONCE)
    assert exc.value.messages == [error]


async def test_device_needs_a_client_nonce_and_an_idp_that_has_the_grant() -> None:
    h = await harness(callback_mode="device")
    with pytest.raises(InvalidRequest, match="^missing client_nonce$"):
        await h.start()
    h.idp.device_endpoint = False
    h.backend.oidc_discovery.clear()
    with pytest.raises(InvalidRequest, match="no device_authorization_endpoint: callback_mode=device needs an IdP"):
        await h.start(client_nonce=NONCE)


async def test_device_poll_pending_then_the_login_once() -> None:
    h = await harness(callback_mode="device", oauth2_metadata=["id_token", "access_token", "refresh_token"])
    data = await h.start(client_nonce=NONCE)
    [device] = h.idp.devices.values()
    with pytest.raises(InvalidRequest) as exc:
        await h.poll(state=data["state"], client_nonce=NONCE)
    assert exc.value.messages == ["authorization_pending"]  # exactly: the CLI matches the end of the error
    h.idp.deny(device.user_code, "slow_down")
    with pytest.raises(InvalidRequest) as exc:
        await h.poll(state=data["state"], client_nonce=NONCE)
    assert exc.value.messages == ["slow_down"]
    h.idp.approve(device.user_code, **BOB)
    resp = await h.poll(state=data["state"], client_nonce=NONCE)
    assert resp.auth.alias.name == "bob@example.com" and resp.auth.group_aliases == ["a", "b"]
    tokens = resp.auth.response_metadata
    assert set(tokens) == {"oauth2_id_token", "oauth2_access_token", "oauth2_refresh_token"}
    assert tokens["oauth2_refresh_token"].startswith("rt_") and tokens["oauth2_access_token"].startswith("at_")
    assert not any(k.startswith("oauth2_") for k in resp.auth.metadata)  # not stored with the token
    with pytest.raises(InvalidRequest, match="Expired or missing OAuth state"):
        await h.poll(state=data["state"], client_nonce=NONCE)
    posts = [c for c in h.idp.calls if c[1].endswith("/token")]
    assert len(posts) == 3  # a used state never reaches the IdP again
    assert posts[-1][2]["form"]["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"


async def test_device_denied_is_refused_without_the_idps_text() -> None:
    h = await harness(callback_mode="device")
    data = await h.start(client_nonce=NONCE)
    [device] = h.idp.devices.values()
    h.idp.deny(device.user_code)
    with structlog.testing.capture_logs() as logs, pytest.raises(InvalidRequest) as exc:
        await h.poll(state=data["state"], client_nonce=NONCE)
    assert exc.value.messages == ["Vault login failed. authorization failed: access_denied"]
    assert [e["event"] for e in logs] == ["oidc_poll_failed"]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"state": "am1.forged", "client_nonce": NONCE}, "Vault login failed. Expired or missing OAuth state."),
        ({"client_nonce": NONCE}, "Vault login failed. Expired or missing OAuth state."),
        ({"state": "<good>", "client_nonce": "other"}, "invalid client_nonce"),
        ({"state": "<good>"}, "invalid client_nonce"),
        ({"state": "s" * 4097, "client_nonce": NONCE}, "state is too long: the limit is 4096 bytes"),
        ({"state": "<good>", "client_nonce": "n" * 257}, "client_nonce is too long: the limit is 256 bytes"),
        ({"state": "<good>", "client_nonce": "\ud800"}, "client_nonce is not valid UTF-8 text"),
    ],
    ids=["forged state", "no state", "wrong nonce", "no nonce", "huge state", "huge nonce", "lone surrogate"],
)
async def test_poll_refusals(data: dict[str, Any], error: str) -> None:
    h = await harness(callback_mode="device")
    started = await h.start(client_nonce=NONCE)
    sent = {k: (started["state"] if v == "<good>" else v) for k, v in data.items()}
    with pytest.raises(InvalidRequest) as exc:
        await h.poll(**sent)
    assert exc.value.messages == [error]
    assert not [c for c in h.idp.calls if c[1].endswith("/token")]  # refused before the IdP is asked


async def test_poll_of_a_client_mode_state_is_refused() -> None:
    h = await harness()
    state = query(await h.auth_url(client_nonce=NONCE))["state"]
    with pytest.raises(InvalidRequest, match="This login is not polled"):
        await h.poll(state=state, client_nonce=NONCE)


async def test_a_device_state_has_no_callback() -> None:
    h = await harness(callback_mode="device")
    started = await h.start(client_nonce=NONCE)
    with pytest.raises(InvalidRequest, match="This login has no callback: poll oidc/poll"):
        await h.callback(state=started["state"], code="c", client_nonce=NONCE)


async def test_poll_checks_bound_cidrs_against_the_poller() -> None:
    h = await harness(callback_mode="device", token_bound_cidrs=["10.0.0.0/8"])
    started = await h.start(client_nonce=NONCE)
    with pytest.raises(PermissionDenied):
        await h.poll(state=started["state"], client_nonce=NONCE)
    h.remote = "10.1.2.3"
    with pytest.raises(InvalidRequest, match="^authorization_pending$"):
        await h.poll(state=started["state"], client_nonce=NONCE)


# ---------------------------------------------------------------------------
# callback_mode direct


async def direct_start(h: Harness) -> tuple[dict[str, Any], str]:
    """auth_url of a direct login and the code the IdP gives the user's browser."""
    data = await h.start(redirect_uri=DIRECT, client_nonce=NONCE)
    return data, h.idp.authorize(data["auth_url"], **BOB)


async def test_direct_auth_url_answers_state_and_interval() -> None:
    h = await harness(callback_mode="direct", poll_interval=2)
    data = await h.start(redirect_uri=DIRECT, client_nonce=NONCE)
    assert data["state"] == query(data["auth_url"])["state"] and data["poll_interval"] == "2"
    state = FlowState.open(h.system.sealer, data["state"], h.clock.now)
    assert state is not None and (state.mode, state.requester) == ("direct", "127.0.0.1")
    with pytest.raises(InvalidRequest, match="^missing client_nonce$"):
        await h.start(redirect_uri=DIRECT)
    client = await harness()
    assert set(await client.start(client_nonce=NONCE)) == {"auth_url"}  # client mode: as before


async def test_direct_confirmation_then_the_poll() -> None:
    h = await harness(callback_mode="direct", oauth2_metadata=["access_token"])
    data, code = await direct_start(h)
    before = h.storage.dump()
    page = await h.callback(state=data["state"], code=code)
    text = page_text(page)
    assert page.status == 200 and "Sign-in confirmation required" in text
    assert "<b>127.0.0.1</b>" in text and "<b>test</b>" in text
    assert f'name="code" value="{code}"' in text and 'name="confirmation" value="1"' in text
    assert h.storage.dump() == before and not [c for c in h.idp.calls if c[1].endswith("/token")]
    with pytest.raises(InvalidRequest, match="^authorization_pending$"):
        await h.poll(state=data["state"], client_nonce=NONCE)
    done = await h.callback(state=data["state"], code=code, confirmation="1")
    assert done.status == 200 and "Authentication Succeeded" in page_text(done)
    [access] = h.idp.access
    assert access not in json.dumps(h.storage.dump())  # the access token is sealed in the record
    with pytest.raises(InvalidRequest, match="^invalid client_nonce$"):
        await h.poll(state=data["state"], client_nonce="guess")
    resp = await h.poll(state=data["state"], client_nonce=NONCE)
    assert resp.auth.alias.name == "bob@example.com"
    assert resp.auth.response_metadata["oauth2_access_token"].startswith("at_")
    with pytest.raises(InvalidRequest, match="Expired or missing OAuth state"):
        await h.poll(state=data["state"], client_nonce=NONCE)
    again = await h.callback(state=data["state"], code=code, confirmation="1")
    assert again.status == 400 and "Expired or missing OAuth state." in page_text(again)


async def test_direct_without_confirmation() -> None:
    h = await harness(callback_mode="direct", oidc_disable_confirmation=True)
    data, code = await direct_start(h)
    assert "Authentication Succeeded" in page_text(await h.callback(state=data["state"], code=code))
    assert (await h.poll(state=data["state"], client_nonce=NONCE)).auth.alias.name == "bob@example.com"


async def test_a_strictly_bound_direct_login_binds_the_pollers_address() -> None:
    """token_strictly_bind_ip: the token goes to the poller, so it is bound to the poller's
    address, not to the browser's that finished the login (OpenBao binds the browser's)."""
    h = await harness(callback_mode="direct", oidc_disable_confirmation=True, token_strictly_bind_ip=True)
    data, code = await direct_start(h)
    h.remote = "192.0.2.7"  # the user's browser, on another machine
    assert "Authentication Succeeded" in page_text(await h.callback(state=data["state"], code=code))
    h.remote = "127.0.0.1"  # the terminal that started the login
    assert (await h.poll(state=data["state"], client_nonce=NONCE)).auth.bound_cidrs == ["127.0.0.1"]


async def test_a_strictly_bound_client_mode_login_binds_the_callers_address() -> None:
    h = await harness(token_strictly_bind_ip=True)
    h.remote = "198.51.100.4"
    resp = await h.login(**BOB)
    assert resp.auth.bound_cidrs == ["198.51.100.4"]


HOSTILE = [
    "<script>alert(document.cookie)</script>",
    '"><img src=x onerror=alert(1)>',
    "</p><form action=https://evil.test><input name=code></form>",
    "&lt;already-escaped&gt; & <b>bold</b>",
    "javascript:alert(1)",
]


@pytest.mark.parametrize("text", HOSTILE)
async def test_direct_error_text_is_shown_escaped(text: str) -> None:
    """OpenBao CVE-2026-33758: an IdP's error_description reflected unescaped."""
    h = await harness(callback_mode="direct")
    data, _ = await direct_start(h)
    before = h.storage.dump()
    page = await h.callback(state=data["state"], error="access_denied", error_description=text)
    body = page_text(page)
    assert page.status == 400
    assert f"The identity provider returned an error: access_denied: {_escaped(text)}." in body
    assert text not in body or text == _escaped(text)
    assert "<script" not in body and "<img" not in body and "<form action=https" not in body
    assert h.storage.dump() == before  # an anonymous error writes nothing: the poll keeps waiting
    with pytest.raises(InvalidRequest, match="^authorization_pending$"):
        await h.poll(state=data["state"], client_nonce=NONCE)


def _escaped(text: str) -> str:
    import html

    return html.escape(text)


@pytest.mark.parametrize("code", ['"><script>alert(1)</script>', "a&b<c>'d"])
async def test_confirmation_page_escapes_the_code(code: str) -> None:
    h = await harness(callback_mode="direct")
    data, _ = await direct_start(h)
    body = page_text(await h.callback(state=data["state"], code=code))
    assert f'value="{_escaped(code)}"' in body and "<script>" not in body


async def test_direct_code_the_idp_refuses_writes_nothing() -> None:
    h = await harness(callback_mode="direct", oidc_disable_confirmation=True)
    data, _ = await direct_start(h)
    before = h.storage.dump()
    page = await h.callback(state=data["state"], code="forged")
    assert page.status == 400 and "Error exchanging oidc code" in page_text(page)
    assert "&lt;b&gt;" not in page_text(page)  # the IdP's own error text is not shown either
    assert h.storage.dump() == before
    with pytest.raises(InvalidRequest, match="^authorization_pending$"):
        await h.poll(state=data["state"], client_nonce=NONCE)


async def test_direct_refused_login_reaches_the_poller_with_its_check() -> None:
    """After a real code exchange the outcome is recorded either way: the CLI does not wait
    ten minutes for a login that failed."""
    h = await harness(callback_mode="direct", oidc_disable_confirmation=True, bound_claims={"team": "secret-team-x"})
    data, code = await direct_start(h)
    page = await h.callback(state=data["state"], code=code)
    assert page.status == 400 and "error validating claims: claim &quot;team&quot;" in page_text(page)
    assert "secret-team-x" not in page_text(page)
    with pytest.raises(PluginError) as exc:
        await h.poll(state=data["state"], client_nonce=NONCE)
    assert exc.value.check == "bound_claims" and exc.value.messages[0].startswith("Vault login failed. error validating claims")
    with pytest.raises(InvalidRequest, match="Expired or missing OAuth state"):
        await h.poll(state=data["state"], client_nonce=NONCE)


async def test_direct_form_post() -> None:
    h = Harness()
    await h.configure(oidc_response_mode="form_post")
    await h.role(allowed_redirect_uris=[DIRECT], callback_mode="direct", oidc_disable_confirmation=True)
    data, code = await direct_start(h)
    page = await h.call(Operation.UPDATE, "oidc/callback", {"state": data["state"], "code": code})
    assert "Authentication Succeeded" in page_text(page)
    assert (await h.poll(state=data["state"], client_nonce=NONCE)).auth.alias.name == "bob@example.com"


# ---------------------------------------------------------------------------
# oauth2_metadata in the client mode and form_post


async def test_client_mode_oauth2_metadata() -> None:
    h = await harness(oauth2_metadata=["id_token", "refresh_token"])
    resp = await h.login(**BOB)
    meta = resp.auth.response_metadata
    assert set(meta) == {"oauth2_id_token", "oauth2_refresh_token"} and meta["oauth2_id_token"].count(".") == 2
    plain = await harness()
    assert (await plain.login(**BOB)).auth.response_metadata == {}


async def test_form_post_keeps_the_tokens_sealed_until_the_get() -> None:
    h = Harness()
    await h.configure(oidc_response_mode="form_post")
    api = "https://vault.example.com/v1/auth/oidc/oidc/callback"
    await h.role(allowed_redirect_uris=[api], oauth2_metadata=["access_token"])
    url = await h.auth_url(redirect_uri=api)
    state = query(url)["state"]
    await h.call(Operation.UPDATE, "oidc/callback", {"state": state, "code": h.idp.authorize(url, **BOB)})
    [access] = h.idp.access
    assert access not in json.dumps(h.storage.dump())
    resp = await h.callback(state=state, code="no_code")
    assert resp.auth.response_metadata == {"oauth2_access_token": access}


# ---------------------------------------------------------------------------
# What a refusal records (audit log, login metrics) and the flow's stages (Events)


class FlowEvents(NoEvents):
    """``Events`` that keep the OIDC flow stages a mount reports."""

    __slots__ = ("stages",)

    def __init__(self) -> None:
        self.stages: list[str] = []

    def oidc_flow(self, stage: str) -> None:
        self.stages.append(stage)


async def counted(**role: Any) -> tuple[Harness, FlowEvents]:
    h = await harness(**role)
    events = FlowEvents()
    h.system = dataclasses.replace(h.system, events=events)
    return h, events


async def test_device_poll_stages_and_refusal_record() -> None:
    """Pending polls are no stage and no refusal; a refused poll names the role (the IdP's
    answer carried no token: no iss/sub); a login completes once."""
    h, events = await counted(callback_mode="device")
    data = await h.start(client_nonce=NONCE)
    [device] = h.idp.devices.values()
    with pytest.raises(InvalidRequest) as pending:
        await h.poll(state=data["state"], client_nonce=NONCE)
    assert pending.value.login is None  # not refused: the audit log and the metrics see no failed login
    h.idp.deny(device.user_code)
    with pytest.raises(InvalidRequest) as denied:
        await h.poll(state=data["state"], client_nonce=NONCE)
    assert denied.value.login == {"role": "test"}
    again = await h.start(client_nonce=NONCE)
    [_, second] = h.idp.devices.values()
    h.idp.approve(second.user_code, **BOB)
    assert (await h.poll(state=again["state"], client_nonce=NONCE)).auth is not None
    with pytest.raises(InvalidRequest) as used:
        await h.poll(state=again["state"], client_nonce=NONCE)
    assert used.value.login == {"role": "test"}
    assert events.stages == ["started", "failed", "started", "completed", "expired"]


@pytest.mark.parametrize(
    ("callback", "stage", "login"),
    [
        ({"error": "access_denied", "error_description": "<b>no</b>"}, "failed", {"role": "test"}),
        ({"code": "forged", "confirmation": "1"}, "failed", {"role": "test"}),  # the IdP refuses the code
        ({}, "failed", {"role": "test"}),  # no code
    ],
    ids=["idp error", "code refused", "no code"],
)
async def test_direct_page_refusals_carry_their_record(callback: dict[str, Any], stage: str, login: dict[str, str]) -> None:
    """A direct login that ends on the callback page: the page carries the refusal
    (``Response.refused``, which the HTTP edge audits and counts), the flow failed there."""
    h, events = await counted(callback_mode="direct")
    data, _ = await direct_start(h)
    page = await h.callback(state=data["state"], **callback)
    assert page.status == 400 and page.refused is not None
    assert page.refused.login == login and page.refused.check == ""
    assert events.stages == ["started", stage]


async def test_direct_refusal_after_the_exchange_is_recorded_by_the_poll() -> None:
    """A check the verified login fails: logged by the page, recorded (reason code, role, the
    token's iss and sub) and counted once, by the poll that receives it."""
    h, events = await counted(callback_mode="direct", oidc_disable_confirmation=True,
                              bound_claims={"team": "secret-team-x"})
    data, code = await direct_start(h)
    page = await h.callback(state=data["state"], code=code)
    assert page.status == 400 and page.refused is None
    assert events.stages == ["started"]
    [record] = [v for k, v in h.storage.dump().items() if k.startswith("oidc/used/")]
    assert record["check"] == "bound_claims" and (record["iss"], record["sub"]) == ("https://idp.test", "bob")
    assert "secret-team-x" not in json.dumps(record)  # what the role expects stays out
    with pytest.raises(PluginError) as exc:
        await h.poll(state=data["state"], client_nonce=NONCE)
    assert exc.value.check == "bound_claims"
    assert exc.value.login == {"role": "test", "iss": "https://idp.test", "sub": "bob"}
    assert events.stages == ["started", "failed"]


async def test_client_callback_refusals_carry_their_record() -> None:
    h, events = await counted(bound_claims={"team": "x"})
    with pytest.raises(PluginError) as refused:
        await h.login(**BOB)
    assert refused.value.check == "bound_claims"
    assert refused.value.login == {"role": "test", "iss": "https://idp.test", "sub": "bob"}
    with pytest.raises(InvalidRequest) as forged:
        await h.callback(state="am1.forged", code="c")
    assert forged.value.login == {}  # no role is known: none is named
    assert events.stages == ["started", "failed", "expired"]
    await h.role(bound_claims={})
    assert (await h.login(**BOB)).auth is not None
    assert events.stages[-2:] == ["started", "completed"]


async def test_form_post_refusal_page_carries_its_record() -> None:
    h = Harness()
    await h.configure(oidc_response_mode="form_post")
    await h.role()
    events = FlowEvents()
    h.system = dataclasses.replace(h.system, events=events)
    url = await h.auth_url()
    page = await h.call(Operation.UPDATE, "oidc/callback", {"state": query(url)["state"], "code": "forged"})
    assert page.status == 400 and page.refused is not None and page.refused.login == {"role": "test"}
    forged = await h.call(Operation.UPDATE, "oidc/callback", {"state": "am1.forged", "code": "c"})
    assert forged.status == 400 and forged.refused is not None and forged.refused.login == {}
    assert events.stages == ["started", "failed", "expired"]
