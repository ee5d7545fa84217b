"""A mount's tuned token_type decides the type of tokens its JWT logins issue, over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from server.app import create_app
from server.http.listverb import make_test_server
from server.settings import Settings, StorageSettings
from tests.plugin.keyfactory import default_claims, make_token, rsa_key
from tests.server.httpkit import Client

ROOT = "root-token-for-token-type-tests"
H = {"X-Vault-Token": ROOT}
KEY = rsa_key(kid="tt")


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    settings = Settings(storage=StorageSettings(type="memory", path=""), dev=True, dev_root_token_id=ROOT)
    return await aiohttp_client(make_test_server(create_app(settings)))


async def ok(client: Client, method: str, path: str, body: dict[str, Any] | None = None,
             token: str | None = ROOT) -> dict[str, Any]:
    resp = await client.request(method, "/v1/" + path, json=body, headers={"X-Vault-Token": token} if token else {})
    assert resp.status in (200, 204), (path, resp.status, await resp.text())
    return await resp.json() if resp.status == 200 else {}


async def jwt_mount(client: Client, mount_token_type: str, role_token_type: str) -> None:
    await ok(client, "POST", "sys/auth/jwt", {"type": "jwt"})
    await ok(client, "POST", "sys/auth/jwt/tune", {"token_type": mount_token_type})
    tuned = await ok(client, "GET", "sys/auth/jwt/tune")
    assert tuned["data"]["token_type"] == mount_token_type
    await ok(client, "POST", "auth/jwt/config", {"jwt_validation_pubkeys": [KEY.pem]})
    await ok(client, "POST", "auth/jwt/role/r", {
        "role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
        "token_policies": ["p"], "token_type": role_token_type,
    })


@pytest.mark.parametrize(
    ("mount_type", "role_type", "issued"),
    [
        ("default-batch", "default", "batch"),
        ("default-batch", "service", "service"),
        ("default-service", "default", "service"),
        ("default-service", "batch", "batch"),
        ("service", "default", "service"),
        ("service", "batch", "service"),
        ("batch", "default", "batch"),
        ("batch", "service", "batch"),
    ],
    ids=[
        "default-batch mount, default role: batch",
        "default-batch mount, service role: service",
        "default-service mount, default role: service",
        "default-service mount, batch role: batch",
        "service mount forces service over default",
        "service mount forces service over batch",
        "batch mount forces batch over default",
        "batch mount forces batch over service",
    ],
)
async def test_login_issues_the_mount_s_token_type(
    client: Client, mount_type: str, role_type: str, issued: str
) -> None:
    await jwt_mount(client, mount_type, role_type)
    reply = await ok(client, "POST", "auth/jwt/login",
                     {"role": "r", "jwt": make_token(default_claims(), key=KEY)}, token=None)
    auth = reply["auth"]
    assert auth["token_type"] == issued
    assert auth["client_token"].startswith("hvb.") is (issued == "batch")
    assert auth["renewable"] is (issued == "service")
    looked = await ok(client, "GET", "auth/token/lookup-self", token=auth["client_token"])
    assert looked["data"]["type"] == issued
    assert looked["data"]["path"] == "auth/jwt/login"
    assert "p" in looked["data"]["policies"]


async def test_a_tune_between_logins_applies_to_the_next_login(client: Client) -> None:
    """The token settings of a mount are cached per mount entry: a tune must still be seen."""
    await jwt_mount(client, "default-service", "default")
    jwt = make_token(default_claims(), key=KEY)
    first = (await ok(client, "POST", "auth/jwt/login", {"role": "r", "jwt": jwt}, token=None))["auth"]
    assert first["token_type"] == "service" and first["lease_duration"] == 2764800
    await ok(client, "POST", "sys/auth/jwt/tune", {"token_type": "batch", "default_lease_ttl": "1h"})
    second = (await ok(client, "POST", "auth/jwt/login", {"role": "r", "jwt": jwt}, token=None))["auth"]
    assert second["token_type"] == "batch" and second["lease_duration"] == 3600
    await ok(client, "POST", "sys/auth/jwt/tune", {"token_type": "default-service", "default_lease_ttl": "system"})
    third = (await ok(client, "POST", "auth/jwt/login", {"role": "r", "jwt": jwt}, token=None))["auth"]
    assert third["token_type"] == "service" and third["lease_duration"] == 2764800
