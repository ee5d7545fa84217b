"""What a refused login tells an anonymous caller over HTTP, and the setting that shows more.

By default the answer names the failed check and what the token has, never the role's
expected values; ``login_errors_show_expected`` (development only) adds them.
"""

from __future__ import annotations

import time

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.http.listverb import make_test_server
from server.settings import Settings, SettingsError, StorageSettings, settings_from_mapping
from tests.plugin.keyfactory import make_token, rsa_key
from tests.server.httpkit import Client

ROOT = "root-token-for-login-error-tests"
H = {"X-Vault-Token": ROOT}
KEY = rsa_key(kid="le")
SECRET_SUBJECT = "repo:secret-org-x/deploy:ref:refs/heads/secret-branch-x"


async def jwt_server(aiohttp_client: AiohttpClient, show_expected: bool = False) -> Client:
    """A server with a jwt mount: KEY's tokens, role ``r`` bound to SECRET_SUBJECT."""
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT,
                        login_errors_show_expected=show_expected)
    client: Client = await aiohttp_client(make_test_server(create_app(settings)))
    for path, body in (
        ("sys/auth/jwt", {"type": "jwt"}),
        ("auth/jwt/config", {"jwt_validation_pubkeys": [KEY.pem]}),
        ("auth/jwt/role/r", {"role_type": "jwt", "user_claim": "sub", "bound_subject": SECRET_SUBJECT}),
    ):
        resp = await client.post("/v1/" + path, json=body, headers=H)
        assert resp.status in (200, 204), await resp.text()
    return client


async def refused_login(aiohttp_client: AiohttpClient, show_expected: bool) -> tuple[int, list[str]]:
    client = await jwt_server(aiohttp_client, show_expected)
    jwt = make_token({"sub": "repo:attacker/x", "exp": 4102444800}, key=KEY)
    resp = await client.post("/v1/auth/jwt/login", json={"role": "r", "jwt": jwt})
    return resp.status, (await resp.json())["errors"]


@pytest.mark.parametrize("show_expected", [False, True], ids=["default", "login_errors_show_expected"])
async def test_expected_values_only_with_the_setting(aiohttp_client: AiohttpClient, show_expected: bool) -> None:
    status, errors = await refused_login(aiohttp_client, show_expected)
    message = 'error validating token: invalid subject (sub) claim: token has "repo:attacker/x"'
    assert status == 400
    if show_expected:
        assert errors == [f'{message}, role expects "{SECRET_SUBJECT}"']
    else:
        assert errors == [message]


def test_setting_is_a_boolean() -> None:
    assert settings_from_mapping({}).login_errors_show_expected is False
    assert settings_from_mapping({"login_errors_show_expected": True}).login_errors_show_expected is True
    with pytest.raises(SettingsError, match="login_errors_show_expected: must be true or false"):
        settings_from_mapping({"login_errors_show_expected": "yes"})


async def test_a_jwt_login_can_be_wrapped(aiohttp_client: AiohttpClient) -> None:
    """``X-Vault-Wrap-TTL`` on a JWT login answers a wrapping token; unwrapping gives the login."""
    client = await jwt_server(aiohttp_client)
    now = int(time.time())
    jwt = make_token({"sub": SECRET_SUBJECT, "iat": now, "exp": now + 300}, key=KEY)
    resp = await client.post("/v1/auth/jwt/login", json={"role": "r", "jwt": jwt}, headers={"X-Vault-Wrap-TTL": "60"})
    assert resp.status == 200, await resp.text()
    out = await resp.json()
    assert out["auth"] is None
    info = out["wrap_info"]
    assert info["creation_path"] == "auth/jwt/login" and info["ttl"] == 60
    resp = await client.post("/v1/sys/wrapping/unwrap", headers={"X-Vault-Token": info["token"]})
    assert resp.status == 200, await resp.text()
    auth = (await resp.json())["auth"]
    assert auth["metadata"] == {"role": "r"} and auth["client_token"]
